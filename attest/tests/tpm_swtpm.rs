//! TPM 2.0 root of trust against a real TPM simulator (swtpm), started by this test in socket
//! mode on a temporary state directory and free loopback ports. Skips (loudly) only when the
//! `swtpm` binary is absent; CI installs it (`.ci/run` APT_PACKAGES).
#![cfg(feature = "tpm")]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tandem_attest::digest::Sha256Digest;
use tandem_attest::evidence::tpm_device::{TpmRoot, create_attestation_key};
use tandem_attest::evidence::{
    CertRole, Evidence, EvidenceClaims, EvidenceError, EvidenceProof, FleetCa, RootOfTrust,
};
use tss_esapi::{Context, TctiNameConf};

struct Swtpm {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two consecutive free loopback ports (the swtpm TCTI uses `port` and `port + 1`).
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let Ok(a) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = a.local_addr() else { continue };
        let p = addr.port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free loopback ports");
}

fn start_swtpm() -> Option<Swtpm> {
    let found = Command::new("swtpm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("\n!!!!!!!! SKIPPING TPM TEST: the `swtpm` binary is not installed !!!!!!!!");
        eprintln!(
            "!!!!!!!! install Debian's swtpm swtpm-tools tpm2-tools libtss2-dev (.ci/run does) !!!!!!!!\n"
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for _attempt in 0..5 {
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.path().display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn swtpm");
        let mut s = Swtpm {
            child,
            port,
            _dir: tempfile::tempdir().expect("temp dir"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = s.child.try_wait() {
                break; // port race: try another pair
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
            {
                s._dir = dir;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("swtpm did not start listening");
}

fn context(tpm: &Swtpm) -> Context {
    let tcti =
        TctiNameConf::from_str(&format!("swtpm:host=127.0.0.1,port={}", tpm.port)).expect("tcti");
    Context::new(tcti).expect("connect to swtpm")
}

fn claims(release: Sha256Digest) -> EvidenceClaims {
    EvidenceClaims {
        key_config_digest: Sha256Digest::of(b"key configs"),
        release_digest: release,
        key_expiry: 2_000_000_000,
        nonce: Some(b"fresh".to_vec()),
    }
}

#[test]
fn tpm_quote_binds_release_and_keys() {
    let Some(tpm) = start_swtpm() else { return };
    let mut ctx = context(&tpm);
    let (ak, ak_pub) = create_attestation_key(&mut ctx).expect("attestation key");
    let ca = FleetCa::generate_with_rng(&mut rand_core::OsRng);
    let cert = ca
        .certify(
            CertRole::TpmAttestationKey,
            "node-tpm-1",
            &ak_pub,
            0,
            u64::MAX / 2,
        )
        .expect("certify");
    let mut root = TpmRoot::new(ctx, ak, cert).expect("root");

    let release = Sha256Digest::of(b"release manifest");
    // Not measured yet: refuses.
    assert!(matches!(
        root.attest(&claims(release)),
        Err(EvidenceError::Device(_))
    ));

    root.measure_release(&release).expect("measure");
    let ev = root.attest(&claims(release)).expect("quote");
    assert_eq!(ev.kind(), "tpm2");
    let cas = [ca.public_key()];
    ev.verify_root(&cas)
        .expect("quote signature verifies under the certified AK");
    ev.verify_binding()
        .expect("quote binds PCR 23 and the key configs");

    // JSON round trip preserves verifiability.
    let json = serde_json::to_vec(&ev.to_value()).expect("json");
    let back = Evidence::from_json(&json).expect("parse");
    assert_eq!(back, ev);
    back.verify_root(&cas).expect("still verifies");

    // Claims for other keys do not bind (qualifying data differs).
    let mut other = claims(release);
    other.key_config_digest = Sha256Digest::of(b"other keys");
    let forged = Evidence::from_json(&retarget_claims(&json, &other)).expect("parse");
    assert!(forged.verify_binding().is_err());

    // A different release measured: the old evidence's PCR claim no longer matches a new quote.
    let release2 = Sha256Digest::of(b"another release");
    root.measure_release(&release2).expect("measure 2");
    let ev2 = root.attest(&claims(release2)).expect("quote 2");
    ev2.verify_binding().expect("binds release 2");
    let mut lie = claims(release);
    lie.release_digest = release;
    let forged = Evidence::from_json(&retarget_claims(
        &serde_json::to_vec(&ev2.to_value()).expect("json"),
        &lie,
    ))
    .expect("parse");
    assert!(
        forged.verify_binding().is_err(),
        "quote of release 2 must not pass as release 1"
    );

    // A different CA does not vouch for this AK.
    let other_ca = FleetCa::generate_with_rng(&mut rand_core::OsRng);
    assert!(ev.verify_root(&[other_ca.public_key()]).is_err());

    // Tampered quote signature.
    if let EvidenceProof::Tpm2 { .. } = ev.proof() {
        let mut v = ev.to_value();
        let sig = v["tpmQuote"]["signature"].as_str().expect("sig").to_owned();
        let mut raw = base64_decode(&sig);
        raw[10] ^= 1;
        v["tpmQuote"]["signature"] = base64_encode(&raw).into();
        let t = Evidence::from_json(&serde_json::to_vec(&v).expect("json")).expect("parse");
        assert!(t.verify_root(&cas).is_err());
    }
}

fn retarget_claims(json: &[u8], c: &EvidenceClaims) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(json).expect("json");
    v["claims"]["keyConfigDigest"] = c.key_config_digest.to_string().into();
    v["claims"]["releaseDigest"] = c.release_digest.to_string().into();
    serde_json::to_vec(&v).expect("json")
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("b64")
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
