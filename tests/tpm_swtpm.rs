//! TPM 2.0 root of trust against a real TPM simulator (swtpm, started by
//! `tandem_attest::evidence::swtpm` in socket mode on a temporary state directory and free
//! loopback ports). Skips (loudly) only when the `swtpm` binary is absent; CI installs it
//! (`.ci/run` APT_PACKAGES).
//!
//! The threat: root on the node. These tests play it against the real TPM: the honest launch
//! chain (boot chain, then `tandem-launch`'s measurements in PCR 13) verifies; resetting and
//! extending PCR 23 (what a node did itself before), extending the expected digests into PCR 13
//! after other code ran, forging the event log, and replaying a quote under a stale nonce are
//! each refused by the verifier, with the event or PCR that did not match.

use std::path::{Path, PathBuf};

use tandem_attest::attestation::AttestationBundle;
use tandem_attest::digest::Sha256Digest;
use tandem_attest::evidence::eventlog::{Event, EventKind, EventLog};
use tandem_attest::evidence::swtpm::Swtpm;
use tandem_attest::evidence::tpm_device::{self, TpmRoot, TpmThread, create_attestation_key};
use tandem_attest::evidence::{
    CertRole, Evidence, EvidenceClaims, EvidenceProof, FleetCertificate, RootOfTrust,
};
use tandem_attest::test_util::{Fixture, KEY_EXPIRY, NOW, key_configs};
use tandem_attest::verify::{Policy, Verifier, VerifyContext};
use tss_esapi::Context;
use tss_esapi::handles::{KeyHandle, PcrHandle};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues, PcrSlot};

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

const FIRMWARE: &[u8] = b"simulated firmware";
const KERNEL: &[u8] = b"simulated kernel + initrd";
/// The bytes the test_util release lists as its node binary and config.
const NODE_BINARY: &[u8] = b"node binary";
const NODE_CONFIG: &[u8] = b"[node]";
const LAUNCHER: &[u8] = b"tandem-launch executable";

/// One node's world: a swtpm booted through a simulated boot chain, the files of the
/// test_util release (node binary, config, release bundle), and a launcher executable.
struct World {
    tpm: Swtpm,
    f: Fixture,
    dir: tempfile::TempDir,
    plan: tandem_launch::Plan,
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

/// Extends `event` into PCR 13 and appends it to the log file at `path` (what firmware and
/// the boot loader do before `tandem-launch` runs).
fn boot_event(ctx: &mut Context, path: &Path, kind: EventKind, bytes: &[u8]) {
    let mut log = std::fs::read(path)
        .map(|b| EventLog::parse(&b).expect("log"))
        .unwrap_or_default();
    let e = *log.push(kind, Sha256Digest::of(bytes)).expect("room");
    tpm_device::extend_event(ctx, &e).expect("extend");
    std::fs::write(path, log.encode()).expect("write log");
}

fn world() -> Option<World> {
    let tpm = start_swtpm()?;
    let f = Fixture::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = tandem_launch::Plan {
        tcti: tpm.tcti(),
        event_log: dir.path().join("run/launch.evlog"),
        node: write(dir.path(), "tandem-node", NODE_BINARY),
        config: write(dir.path(), "node.toml", NODE_CONFIG),
        release: write(dir.path(), "release.json", &f.release.to_json()),
        launcher: write(dir.path(), "tandem-launch", LAUNCHER),
    };
    std::fs::create_dir_all(dir.path().join("run")).expect("mkdir");
    let mut ctx = context(&tpm);
    boot_event(&mut ctx, &plan.event_log, EventKind::BootChain, FIRMWARE);
    boot_event(&mut ctx, &plan.event_log, EventKind::BootChain, KERNEL);
    Some(World { tpm, f, dir, plan })
}

impl World {
    fn policy(&self) -> Policy {
        Policy::from_json(&self.f.policy_json(serde_json::json!({
            "rootsOfTrust": ["tpm2"],
            "tpmLaunch": {
                "bootChain": [Sha256Digest::of(FIRMWARE), Sha256Digest::of(KERNEL)],
                "launchers": [Sha256Digest::of(LAUNCHER)],
            },
        })))
        .expect("policy")
    }

    /// The attestation key, certified by the fleet CA.
    fn ak(&self, ctx: &mut Context) -> (KeyHandle, FleetCertificate) {
        let (ak, public) = create_attestation_key(ctx).expect("attestation key");
        let cert = self
            .f
            .ca
            .certify(
                CertRole::TpmAttestationKey,
                "node-tpm",
                &public,
                NOW - 86400,
                NOW + 86400,
            )
            .expect("certify");
        (ak, cert)
    }

    fn log(&self) -> EventLog {
        EventLog::parse(&std::fs::read(&self.plan.event_log).expect("log")).expect("parse")
    }

    /// The honest node: launched by the launcher, then a TpmRoot over the log it wrote.
    fn honest_root(&self) -> TpmRoot {
        tandem_launch::launch(&self.plan).expect("launch");
        let mut ctx = context(&self.tpm);
        let (ak, cert) = self.ak(&mut ctx);
        TpmRoot::new(ctx, ak, cert, self.log(), self.f.release.release_digest()).expect("root")
    }

    fn bundle(&self, ev: Evidence) -> Vec<u8> {
        AttestationBundle::new(key_configs(), KEY_EXPIRY, ev, self.f.release.clone()).to_json()
    }

    /// Verifies `bundle` asking for `nonce`: Ok, or the failed step's number and detail.
    fn verify(&self, bundle: &[u8], nonce: &[u8]) -> Result<(), (u8, String)> {
        let cx = VerifyContext {
            now: NOW,
            nonce: Some(nonce),
            ..Default::default()
        };
        let v = Verifier::new(self.policy()).verify_node(bundle, &cx);
        match v.report.first_failure() {
            None => Ok(()),
            Some(s) => Err((s.number, s.detail.clone())),
        }
    }
}

fn claims(release: Sha256Digest, nonce: &[u8]) -> EvidenceClaims {
    EvidenceClaims {
        key_config_digest: key_configs().digest(),
        release_digest: release,
        key_expiry: KEY_EXPIRY,
        nonce: Some(nonce.to_vec()),
    }
}

/// Evidence an attacker with root assembles: a real quote of `pcrs` by the real AK, with
/// the qualifying data of `claims`, and whatever event log they choose to present.
fn forged_evidence(
    ctx: &mut Context,
    ak: KeyHandle,
    cert: &FleetCertificate,
    claims: &EvidenceClaims,
    pcrs: &[PcrSlot],
    log: EventLog,
) -> Evidence {
    let (quote, signature) =
        tpm_device::quote(ctx, ak, &claims.tpm_qualifying_data(), pcrs).expect("quote");
    Evidence::new(
        claims.clone(),
        cert.clone(),
        EvidenceProof::Tpm2 {
            quote,
            signature,
            event_log: log,
        },
    )
}

/// The launch events `tandem-launch` would append for the fixture's release.
fn launch_events(release: Sha256Digest) -> [(EventKind, Sha256Digest); 4] {
    [
        (EventKind::Launcher, Sha256Digest::of(LAUNCHER)),
        (EventKind::NodeBinary, Sha256Digest::of(NODE_BINARY)),
        (EventKind::NodeConfig, Sha256Digest::of(NODE_CONFIG)),
        (EventKind::Release, release),
    ]
}

fn extend_by_hand(ctx: &mut Context, log: &mut EventLog, kind: EventKind, d: Sha256Digest) {
    let e: Event = *log.push(kind, d).expect("room");
    tpm_device::extend_event(ctx, &e).expect("extend");
}

fn assert_refused(r: Result<(), (u8, String)>, want: &str) {
    match r {
        Ok(()) => panic!("verified, but should be refused with {want:?}"),
        Err((step, detail)) => {
            assert_eq!(step, 2, "refused at the wrong step: {detail}");
            assert!(detail.contains(want), "want {want:?} in: {detail}");
        }
    }
}

/// (a) The honest launch chain verifies, through `VerifiedNode`; PCR 13 cannot be reset from
/// software, and the launcher refuses to launch twice in one boot.
#[test]
fn honest_launch_chain_verifies() {
    let Some(w) = world() else { return };
    let mut root = w.honest_root();
    let log = root.event_log().clone();
    let kinds: Vec<&str> = log.events().iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "boot-chain",
            "boot-chain",
            "launcher",
            "node-binary",
            "node-config",
            "release"
        ]
    );
    let ev = root
        .attest(&claims(w.f.release.release_digest(), b"fresh"))
        .expect("quote");
    let bundle = w.bundle(ev.clone());
    w.verify(&bundle, b"fresh").expect("honest chain verifies");
    // JSON round trip of the evidence preserves it (event log included).
    let back =
        Evidence::from_json(&serde_json::to_vec(&ev.to_value()).expect("json")).expect("parse");
    assert_eq!(back, ev);

    // The premise: PCR 13 is not resettable from software (PC Client profile, locality 0).
    let ctx = root.context_mut();
    let e = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.pcr_reset(PcrHandle::Pcr13)
        })
        .expect_err("PCR 13 must not reset");
    eprintln!("TPM2_PCR_Reset(13): {e}");
    drop(root);

    // A second launch in the same boot is refused before anything is extended.
    let e = tandem_launch::launch(&w.plan).expect_err("second launch");
    assert!(e.to_string().contains("already records a launch"), "{e}");
    assert_eq!(w.log(), log, "the refused launch changed the log");
    // A node binary the release does not list is refused by the launcher.
    let mut other = w.plan.clone();
    other.node = write(w.dir.path(), "evil-node", b"evil");
    let e = tandem_launch::launch(&other).expect_err("unlisted binary");
    assert!(e.to_string().contains("lists no such node-binary"), "{e}");
}

/// (b) What worked before: reset PCR 23, extend the release digest, quote PCR 23. Refused,
/// whatever event log comes with it; and so is a node without a tpmLaunch policy.
#[test]
fn reset_and_extend_of_pcr_23_is_refused() {
    let Some(w) = world() else { return };
    let release = w.f.release.release_digest();
    let mut ctx = context(&w.tpm);
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.pcr_reset(PcrHandle::Pcr23)
    })
    .expect("PCR 23 resets from software: the hole");
    let mut vals = DigestValues::new();
    vals.set(
        tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256,
        Digest::try_from(release.as_bytes().to_vec()).expect("digest"),
    );
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.pcr_extend(PcrHandle::Pcr23, vals)
    })
    .expect("extend 23");
    let (ak, cert) = w.ak(&mut ctx);
    let c = claims(release, b"fresh");
    // With the honest-looking log it would need, and with an empty one.
    let mut honest_looking = w.log();
    for (k, d) in launch_events(release) {
        honest_looking.push(k, d).expect("room");
    }
    for log in [honest_looking, EventLog::new()] {
        let ev = forged_evidence(&mut ctx, ak, &cert, &c, &[PcrSlot::Slot23], log);
        assert_refused(
            w.verify(&w.bundle(ev), b"fresh"),
            "quote selects PCRs [0x000b:23] but must select exactly sha256 PCR 13",
        );
    }
    // Quoting PCR 13 and 23 together is no better.
    let ev = forged_evidence(
        &mut ctx,
        ak,
        &cert,
        &c,
        &[PcrSlot::Slot13, PcrSlot::Slot23],
        w.log(),
    );
    assert_refused(w.verify(&w.bundle(ev), b"fresh"), "must select exactly");
    // And a policy without tpmLaunch trusts no TPM launch at all.
    let ev = forged_evidence(&mut ctx, ak, &cert, &c, &[PcrSlot::Slot13], w.log());
    let no_launch =
        w.f.policy()
            .with_roots_of_trust(vec!["tpm2".into()])
            .expect("policy");
    let cx = VerifyContext {
        now: NOW,
        ..Default::default()
    };
    let v = Verifier::new(no_launch).verify_node(&w.bundle(ev), &cx);
    let s = v.report.first_failure().expect("refused");
    assert!(s.detail.contains("no tpmLaunch allow-list"), "{}", s.detail);
}

/// (c) Root extends the expected launch digests into PCR 13 after other code ran: the PCR is
/// not the policy's value, so every log the attacker can show is refused.
#[test]
fn extending_the_expected_digests_after_other_code_ran_is_refused() {
    let Some(w) = world() else { return };
    let release = w.f.release.release_digest();
    let mut ctx = context(&w.tpm);
    let (ak, cert) = w.ak(&mut ctx);
    let c = claims(release, b"fresh");

    // Other code was measured first (say an unlisted boot stage or a tool root ran) ...
    let mut truth = w.log();
    extend_by_hand(
        &mut ctx,
        &mut truth,
        EventKind::BootChain,
        Sha256Digest::of(b"root's own tool"),
    );
    // ... then root extends exactly what tandem-launch would have.
    let mut claimed = w.log();
    for (k, d) in launch_events(release) {
        extend_by_hand(&mut ctx, &mut truth, k, d);
        claimed.push(k, d).expect("room");
    }
    // The log without the other code does not replay to the quoted PCR.
    let ev = forged_evidence(&mut ctx, ak, &cert, &c, &[PcrSlot::Slot13], claimed);
    assert_refused(w.verify(&w.bundle(ev), b"fresh"), "replays PCR 13");
    // The true log replays, but names the event that is not allowed.
    let ev = forged_evidence(&mut ctx, ak, &cert, &c, &[PcrSlot::Slot13], truth);
    assert_refused(
        w.verify(&w.bundle(ev), b"fresh"),
        "event 2 (boot-chain sha256:",
    );
}

/// (c) The same after an honest launch: root launches its own code and extends the expected
/// digests again. The PCR now holds two launches.
#[test]
fn extending_again_after_an_honest_launch_is_refused() {
    let Some(w) = world() else { return };
    let release = w.f.release.release_digest();
    let honest = w.honest_root();
    let honest_log = honest.event_log().clone();
    drop(honest);
    let mut ctx = context(&w.tpm);
    let (ak, cert) = w.ak(&mut ctx);
    let mut truth = honest_log.clone();
    for (k, d) in launch_events(release) {
        extend_by_hand(&mut ctx, &mut truth, k, d);
    }
    let c = claims(release, b"fresh");
    let ev = forged_evidence(&mut ctx, ak, &cert, &c, &[PcrSlot::Slot13], honest_log);
    assert_refused(w.verify(&w.bundle(ev), b"fresh"), "replays PCR 13");
    let ev = forged_evidence(&mut ctx, ak, &cert, &c, &[PcrSlot::Slot13], truth);
    assert_refused(
        w.verify(&w.bundle(ev), b"fresh"),
        "event 6 (launcher sha256:",
    );
    // The node itself notices at start that the PCR no longer matches its log.
    let _ = ctx.flush_context(ak.into());
    drop(ctx);
    let mut ctx = context(&w.tpm);
    let (ak, cert) = w.ak(&mut ctx);
    let e = TpmRoot::new(ctx, ak, cert, w.log(), release).expect_err("stale log");
    assert!(e.to_string().contains("replays to"), "{e}");
}

/// (d) A forged event log with an honest quote: an event removed, changed, reordered or
/// added is refused.
#[test]
fn forged_event_logs_are_refused() {
    let Some(w) = world() else { return };
    let mut root = w.honest_root();
    let ev = root
        .attest(&claims(w.f.release.release_digest(), b"fresh"))
        .expect("quote");
    let honest = root.event_log().events().to_vec();
    let with = |events: &[Event]| {
        let mut v = ev.to_value();
        let mut l = EventLog::new();
        for e in events {
            l.push(e.kind, e.digest).expect("room");
        }
        use base64::Engine as _;
        v["tpmQuote"]["eventLog"] = base64::engine::general_purpose::STANDARD
            .encode(l.encode())
            .into();
        let ev = Evidence::from_json(&serde_json::to_vec(&v).expect("json")).expect("parse");
        w.verify(&w.bundle(ev), b"fresh")
    };
    with(&honest).expect("the honest log verifies");
    for i in 0..honest.len() {
        let mut removed = honest.clone();
        removed.remove(i);
        assert_refused(with(&removed), "replays PCR 13");
        let mut changed = honest.clone();
        changed[i].digest = Sha256Digest::of(b"changed");
        assert_refused(with(&changed), "replays PCR 13");
        let mut relabelled = honest.clone();
        relabelled[i].kind = if honest[i].kind == EventKind::BootChain {
            EventKind::Launcher
        } else {
            EventKind::BootChain
        };
        assert_refused(with(&relabelled), "replays PCR 13");
    }
    for i in 1..honest.len() {
        let mut reordered = honest.clone();
        reordered.swap(i - 1, i);
        assert_refused(with(&reordered), "replays PCR 13");
    }
    for i in 0..=honest.len() {
        let mut added = honest.clone();
        added.insert(
            i,
            Event {
                kind: EventKind::BootChain,
                digest: Sha256Digest::of(FIRMWARE),
            },
        );
        assert_refused(with(&added), "replays PCR 13");
    }
}

/// (e) A quote made for another nonce is refused, and the claims cannot be retargeted.
#[test]
fn a_stale_nonce_is_refused() {
    let Some(w) = world() else { return };
    let mut root = w.honest_root();
    let old = root
        .attest(&claims(w.f.release.release_digest(), b"yesterday"))
        .expect("quote");
    let bundle = w.bundle(old.clone());
    w.verify(&bundle, b"yesterday")
        .expect("fresh for its own nonce");
    assert_refused(w.verify(&bundle, b"today"), "does not carry the nonce");
    // Rewriting the claimed nonce breaks the quote's qualifying data.
    let mut v = old.to_value();
    use base64::Engine as _;
    v["claims"]["nonce"] = base64::engine::general_purpose::STANDARD
        .encode(b"today")
        .into();
    let retargeted = Evidence::from_json(&serde_json::to_vec(&v).expect("json")).expect("parse");
    assert_refused(
        w.verify(&w.bundle(retargeted), b"today"),
        "qualifying data does not bind",
    );
}

#[test]
fn tpm_thread_is_shareable_and_the_attestation_key_is_stable() {
    let Some(w) = world() else { return };
    let tcti = w.tpm.tcti();
    let ak = tpm_device::attestation_key_public(&tcti).expect("attestation key");
    assert_eq!(
        tpm_device::attestation_key_public(&tcti).expect("again"),
        ak,
        "a primary key: the same TPM gives the same key every time"
    );
    let ca = &w.f.ca;
    let cert = ca
        .certify(
            CertRole::TpmAttestationKey,
            "node-tpm-2",
            &ak,
            0,
            u64::MAX / 2,
        )
        .expect("certify");
    let release = w.f.release.release_digest();
    // Before the launch the log records no launch: the root refuses to start.
    let e = TpmThread::start(&tcti, cert.clone(), w.log(), release).expect_err("not launched");
    assert!(e.to_string().contains("tandem-launch"), "{e}");
    tandem_launch::launch(&w.plan).expect("launch");
    // Launched with another release than the node's: refused.
    let e = TpmThread::start(&tcti, cert.clone(), w.log(), Sha256Digest::of(b"other"))
        .expect_err("other release");
    assert!(
        e.to_string()
            .contains("launch the node with its own release"),
        "{e}"
    );
    let root = TpmThread::start(&tcti, cert, w.log(), release).expect("root");
    let mut shared: Box<dyn RootOfTrust + Send> = Box::new(root);
    let ev = std::thread::spawn(move || shared.attest(&claims(release, b"fresh")))
        .join()
        .expect("join")
        .expect("quote from another thread");
    w.verify(&w.bundle(ev), b"fresh").expect("verifies");

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
    let e = TpmThread::start(&tcti, wrong, w.log(), release).expect_err("wrong certificate");
    assert!(e.to_string().contains("different key"), "{e}");
    // A TCTI that reaches nothing says what to check.
    let e = TpmThread::start(
        "swtpm:host=127.0.0.1,port=1",
        ca.certify(CertRole::TpmAttestationKey, "n", &ak, 0, u64::MAX / 2)
            .expect("certify"),
        w.log(),
        release,
    )
    .expect_err("no TPM there");
    assert!(e.to_string().contains("reachable"), "{e}");
}
