//! TPM 2.0 root of trust against a real TPM simulator (swtpm, started by
//! `tandem_attest::evidence::swtpm` in socket mode on a temporary state directory and free
//! loopback ports). Skips (loudly) only when the
//! `swtpm` binary is absent; CI installs it (`.ci/run` APT_PACKAGES).

use tandem_attest::digest::Sha256Digest;
use tandem_attest::evidence::swtpm::Swtpm;
use tandem_attest::evidence::tpm_device::{self, TpmRoot, TpmThread, create_attestation_key};
use tandem_attest::evidence::{
    CertRole, Evidence, EvidenceClaims, EvidenceError, EvidenceProof, FleetCa, RootOfTrust,
};
use tss_esapi::Context;

fn start_swtpm() -> Option<Swtpm> {
    if !Swtpm::available() {
        eprintln!("\n!!!!!!!! SKIPPING TPM TEST: the `swtpm` binary is not installed !!!!!!!!");
        eprintln!(
            "!!!!!!!! install Debian's swtpm swtpm-tools tpm2-tools libtss2-dev (.ci/run does) !!!!!!!!\n"
        );
        return None;
    }
    Some(Swtpm::start().expect("swtpm starts"))
}

fn context(tpm: &Swtpm) -> Context {
    tpm_device::open(&tpm.tcti()).expect("connect to swtpm")
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
    let ca = FleetCa::generate_with_rng(&mut rand::rngs::OsRng);
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
    let other_ca = FleetCa::generate_with_rng(&mut rand::rngs::OsRng);
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

#[test]
fn tpm_thread_is_shareable_and_the_attestation_key_is_stable() {
    let Some(tpm) = start_swtpm() else { return };
    let ak = tpm_device::attestation_key_public(&tpm.tcti()).expect("attestation key");
    assert_eq!(
        tpm_device::attestation_key_public(&tpm.tcti()).expect("again"),
        ak,
        "a primary key: the same TPM gives the same key every time"
    );
    let ca = FleetCa::generate_with_rng(&mut rand::rngs::OsRng);
    let cert = ca
        .certify(
            CertRole::TpmAttestationKey,
            "node-tpm-2",
            &ak,
            0,
            u64::MAX / 2,
        )
        .expect("certify");
    let root = TpmThread::start(&tpm.tcti(), cert).expect("root");
    let release = Sha256Digest::of(b"release manifest");
    root.measure_release(&release).expect("measure");
    let mut shared: Box<dyn RootOfTrust + Send> = Box::new(root);
    let ev = std::thread::spawn(move || shared.attest(&claims(release)))
        .join()
        .expect("join")
        .expect("quote from another thread");
    ev.verify_root(&[ca.public_key()]).expect("verifies");
    ev.verify_binding().expect("binds");

    // A certificate for another key is refused when the root starts.
    let other = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let wrong = ca
        .certify(
            CertRole::TpmAttestationKey,
            "node-tpm-3",
            other.verifying_key(),
            0,
            u64::MAX / 2,
        )
        .expect("certify");
    let e = TpmThread::start(&tpm.tcti(), wrong).expect_err("wrong certificate");
    assert!(e.to_string().contains("different key"), "{e}");
    // A TCTI that reaches nothing says what to check.
    let e = TpmThread::start(
        "swtpm:host=127.0.0.1,port=1",
        ca.certify(CertRole::TpmAttestationKey, "n", &ak, 0, u64::MAX / 2)
            .expect("certify"),
    )
    .expect_err("no TPM there");
    assert!(e.to_string().contains("reachable"), "{e}");
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
