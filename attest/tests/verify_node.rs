//! End-to-end verification of node attestation bundles and release bundles: the happy path,
//! a tamper loop over every field, truncation, expiry, wrong signer, equivocation,
//! consistency, witnesses, required digests, nonces and the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use tandem_attest::attestation::AttestationBundle;
use tandem_attest::digest::Sha256Digest;
use tandem_attest::release::ReleaseSigningKey;
use tandem_attest::test_util::*;
use tandem_attest::verify::{
    KnownCheckpoint, Policy, StepStatus, VerificationCache, Verifier, VerifyContext,
};

fn cx(now: u64) -> VerifyContext<'static> {
    VerifyContext {
        now,
        known: None,
        required_digests: &[],
        nonce: None,
    }
}

fn failed_step(
    f: &Fixture,
    policy: &Policy,
    bytes: &[u8],
    c: &VerifyContext<'_>,
) -> Option<(u8, String)> {
    let _ = f;
    let v = Verifier::new(policy.clone()).verify_node(bytes, c);
    v.report
        .first_failure()
        .map(|s| (s.number, s.detail.clone()))
}

#[test]
fn happy_path_node() {
    let f = Fixture::new();
    let bytes = f.bundle.to_json();
    let v = Verifier::new(f.policy()).verify_node(&bytes, &cx(NOW));
    assert!(v.report.passed(), "{}", v.report.human());
    assert_eq!(v.report.steps.len(), 8);
    assert!(v.report.steps.iter().all(|s| s.status == StepStatus::Pass));
    let n = v.into_result().unwrap();
    assert_eq!(n.name(), "node-1");
    assert_eq!(n.root_of_trust(), "software");
    assert_eq!(n.key_configs().bytes(), key_configs().bytes());
    assert_eq!(n.release().digest(), f.release.release_digest());
    assert_eq!(n.release().log_index(), 5);
    // Earliest of key expiry (+skew) and checkpoint age limit.
    assert_eq!(n.valid_until(), KEY_EXPIRY + 60);
    // Round trip of the bundle encoding.
    assert_eq!(AttestationBundle::from_json(&bytes).unwrap(), f.bundle);
}

#[test]
fn happy_path_release() {
    let f = Fixture::new();
    let v = Verifier::new(f.policy()).verify_release(&f.release.to_json(), &cx(NOW));
    assert!(v.report.passed(), "{}", v.report.human());
    let r = v.into_result().unwrap();
    assert_eq!(
        r.signers(),
        [f.release_key.public_key().key_id().to_owned()]
    );
    assert_eq!(r.checkpoint().size, 9);
}

/// Every leaf of a JSON value, as a path of keys/indices.
fn leaves(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                path.push(Value::String(k.clone()));
                leaves(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(Value::from(i));
                leaves(x, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, p| match p {
        Value::String(k) => &mut v[k.as_str()],
        Value::Number(i) => &mut v[i.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// Mutations of one leaf that keep its type: numbers +1, strings with one character changed
/// (for base64 fields: one decoded bit flipped, re-encoded, and, when the decoded bytes are
/// JSON or a note, every nested field/line mutated too).
fn mutations(v: &Value) -> Vec<Value> {
    match v {
        Value::Number(n) => vec![Value::from(n.as_u64().unwrap().wrapping_add(1))],
        Value::Bool(b) => vec![Value::Bool(!b)],
        Value::String(s) => {
            let mut out = Vec::new();
            if let Ok(raw) = B64.decode(s)
                && !raw.is_empty()
            {
                {
                    for i in [0, raw.len() / 2, raw.len() - 1] {
                        let mut r = raw.clone();
                        r[i] ^= 0x01;
                        out.push(Value::String(B64.encode(&r)));
                    }
                    if let Ok(inner) = serde_json::from_slice::<Value>(&raw) {
                        let mut paths = Vec::new();
                        leaves(&inner, &mut Vec::new(), &mut paths);
                        for p in paths {
                            for m in mutations(get_mut(&mut inner.clone(), &p)) {
                                let mut t = inner.clone();
                                *get_mut(&mut t, &p) = m;
                                out.push(Value::String(
                                    B64.encode(serde_json::to_vec(&t).unwrap()),
                                ));
                            }
                        }
                    }
                }
            }
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                // A protobuf-JSON integer: change the last digit so it stays a valid number.
                let mut c: Vec<u8> = s.bytes().collect();
                let last = c.len() - 1;
                c[last] = b'0' + (c[last] - b'0' + 1) % 10;
                out.push(Value::String(String::from_utf8(c).unwrap()));
            }
            if s.contains('\n') {
                // A note: change each line.
                let lines: Vec<&str> = s.split('\n').collect();
                for i in 0..lines.len() {
                    if lines[i].is_empty() {
                        continue;
                    }
                    let mut l = lines.clone();
                    let changed = format!("{}x", lines[i]);
                    l[i] = &changed;
                    out.push(Value::String(l.join("\n")));
                }
            } else {
                let mut c: Vec<char> = s.chars().collect();
                if c.is_empty() {
                    out.push(Value::String("x".into()));
                } else {
                    let i = c.len() / 2;
                    c[i] = if c[i] == 'a' { 'b' } else { 'a' };
                    out.push(Value::String(c.into_iter().collect()));
                }
            }
            out
        }
        Value::Null => vec![Value::from(0)],
        _ => vec![],
    }
}

#[test]
fn tamper_every_field_of_every_structure() {
    let f = Fixture::new();
    let policy = f.policy();
    let verifier = Verifier::new(policy);
    let original = f.bundle.to_value();
    let mut paths = Vec::new();
    leaves(&original, &mut Vec::new(), &mut paths);
    assert!(
        paths.len() > 25,
        "expected many fields, got {}",
        paths.len()
    );
    let mut tried = 0;
    let mut survivors = Vec::new();
    for p in &paths {
        let label: Vec<String> = p.iter().map(|x| x.to_string()).collect();
        let label = label.join(".");
        for m in mutations(get_mut(&mut original.clone(), p)) {
            let mut t = original.clone();
            *get_mut(&mut t, p) = m;
            if t == original {
                continue;
            }
            tried += 1;
            let v = verifier.verify_node(&serde_json::to_vec(&t).unwrap(), &cx(NOW));
            if v.report.passed() {
                survivors.push(label.clone());
            }
        }
    }
    assert!(tried > 100, "only {tried} mutations");
    // `integratedTime` is informational (nothing in the log signs it; see release::bundle docs):
    // it is the one field whose change must survive, which also shows the loop detects survivors.
    assert!(
        survivors.iter().any(|l| l.ends_with("\"integratedTime\"")),
        "{survivors:?}"
    );
    survivors.retain(|l| !l.ends_with("\"integratedTime\""));
    assert!(
        survivors.is_empty(),
        "mutations that still verified: {survivors:?}"
    );
}

#[test]
fn truncation_and_byte_flips_never_pass_or_panic() {
    let f = Fixture::new();
    let verifier = Verifier::new(f.policy());
    let bytes = f.bundle.to_json();
    for cut in 0..bytes.len() {
        assert!(
            !verifier
                .verify_node(&bytes[..cut], &cx(NOW))
                .report
                .passed()
        );
    }
    // Flip every byte: parse must reject or verification must fail. (integratedTime digits
    // may change harmlessly; skip them.)
    let it = String::from_utf8_lossy(&bytes)
        .find("\"integratedTime\"")
        .unwrap();
    for i in 0..bytes.len() {
        if (it..it + 40).contains(&i) {
            continue;
        }
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(
            !verifier.verify_node(&b, &cx(NOW)).report.passed(),
            "flip at {i} verified"
        );
    }
}

#[test]
fn expired_key_and_certificate() {
    let f = Fixture::new();
    let p = f.policy();
    let b = f.bundle.to_json();
    // Within the skew allowance: fine.
    assert_eq!(failed_step(&f, &p, &b, &cx(KEY_EXPIRY + 60)), None);
    let (step, detail) = failed_step(&f, &p, &b, &cx(KEY_EXPIRY + 61)).unwrap();
    assert_eq!(step, 7);
    assert!(detail.contains("expired"), "{detail}");
    // Certificate not yet valid (issued for the future).
    let mut rng = rand_core::OsRng;
    let id = tandem_attest::evidence::software::generate_identity_key_with_rng(&mut rng);
    let cert =
        f.ca.certify(
            tandem_attest::evidence::CertRole::NodeIdentity,
            "node-2",
            id.verifying_key(),
            NOW + 1000,
            NOW + 9000,
        )
        .unwrap();
    let mut root = tandem_attest::evidence::SoftwareRoot::new(id, cert).unwrap();
    let claims = tandem_attest::evidence::EvidenceClaims {
        key_config_digest: key_configs().digest(),
        release_digest: f.release.release_digest(),
        key_expiry: KEY_EXPIRY,
        nonce: None,
    };
    use tandem_attest::evidence::RootOfTrust as _;
    let ev = root.attest(&claims).unwrap();
    let early = AttestationBundle::new(key_configs(), KEY_EXPIRY, ev, f.release.clone()).to_json();
    let (step, detail) = failed_step(&f, &p, &early, &cx(NOW)).unwrap();
    assert_eq!(step, 7, "{detail}");
    assert!(detail.contains("not valid before"), "{detail}");
    // And a certificate that expired.
    let (step, detail) = failed_step(&f, &p, &b, &cx(NOW + 86400 + 61)).unwrap();
    assert_eq!(step, 7, "{detail}");
}

#[test]
fn wrong_signer_rejected_with_a_clear_message() {
    let mut f = Fixture::new();
    let mallory = ReleaseSigningKey::generate();
    let unlogged = mallory.sign(manifest("tandem-node 0.1.0"));
    let mut leaves = f.leaves.clone();
    leaves.push(leaf_hash(&unlogged.log_entry_body()));
    let release = attach(unlogged, &f.log, &leaves, 9, &[&f.witness], NOW - 60);
    let b = f.node_bundle_for(release, None).to_json();
    let (step, detail) = failed_step(&f, &f.policy(), &b, &cx(NOW)).unwrap();
    assert_eq!(step, 3);
    assert!(detail.contains("not an allowed release signer"), "{detail}");
    // An attacker's signature with the hint of the real signer fails the signature check.
    let mut v: Value = serde_json::from_slice(&b).unwrap();
    let real = f.release_key.public_key().key_id().to_owned();
    v["releaseBundle"]["verificationMaterial"]["publicKey"]["hint"] = real.clone().into();
    v["releaseBundle"]["dsseEnvelope"]["signatures"][0]["keyid"] = real.into();
    let (step, _) =
        failed_step(&f, &f.policy(), &serde_json::to_vec(&v).unwrap(), &cx(NOW)).unwrap();
    assert!(step == 0 || step == 3, "step {step}");
}

#[test]
fn pinned_digests_policy() {
    let f = Fixture::new();
    let b = f.bundle.to_json();
    let pinned = Policy::from_json(&f.policy_json(serde_json::json!({
        "pinnedReleaseDigests": [f.release.release_digest().to_string()]
    })))
    .unwrap();
    assert_eq!(failed_step(&f, &pinned, &b, &cx(NOW)), None);
    let other = Policy::from_json(&f.policy_json(serde_json::json!({
        "pinnedReleaseDigests": [Sha256Digest::of(b"other").to_string()]
    })))
    .unwrap();
    assert_eq!(failed_step(&f, &other, &b, &cx(NOW)).unwrap().0, 3);
}

#[test]
fn policy_file_rules() {
    let f = Fixture::new();
    for bad in [
        serde_json::json!({"releaseSigners": []}),
        serde_json::json!({"fleetCaKeys": []}),
        serde_json::json!({"logKeys": []}),
        serde_json::json!({"requiredWitnesses": 2}),
        serde_json::json!({"clockSkewSecs": 100000}),
        serde_json::json!({"releaseRule": {"allOf": []}}),
        serde_json::json!({"releaseRule": {"digestIs": Sha256Digest::of(b"x").to_string()}}),
        serde_json::json!({"unknownField": 1}),
        serde_json::json!({"rootsOfTrust": ["sgx"]}),
        // Only tpm2 accepted but no launch allow-list: nothing could verify.
        serde_json::json!({"rootsOfTrust": ["tpm2"]}),
        serde_json::json!({"tpmLaunch": {"bootChain": [], "launchers": []}}),
        serde_json::json!({"tpmLaunch": {"launchers": [Sha256Digest::of(b"l")], "extra": 1}}),
    ] {
        assert!(
            Policy::from_json(&f.policy_json(bad.clone())).is_err(),
            "{bad}"
        );
    }
    // Round trip.
    let p = f.policy();
    let again = Policy::from_json(&p.to_json()).unwrap();
    assert_eq!(again.release_rule(), p.release_rule());
    let tpm_only = Policy::from_json(&f.policy_json(tpm_only_json())).unwrap();
    assert_eq!(tpm_only.roots_of_trust(), ["tpm2"]);
    let again = Policy::from_json(&tpm_only.to_json()).unwrap();
    assert_eq!(again.roots_of_trust(), ["tpm2"]);
    assert_eq!(again.tpm_launch(), tpm_only.tpm_launch());
    assert_eq!(
        again.tpm_launch().map(|l| l.launchers.clone()),
        Some(vec![Sha256Digest::of(b"tandem-launch")])
    );
}

fn tpm_only_json() -> serde_json::Value {
    serde_json::json!({
        "rootsOfTrust": ["tpm2"],
        "tpmLaunch": {
            "bootChain": [Sha256Digest::of(b"firmware")],
            "launchers": [Sha256Digest::of(b"tandem-launch")],
        },
    })
}

#[test]
fn a_policy_that_requires_a_tpm_refuses_software_evidence_at_step_1() {
    let f = Fixture::new();
    let bytes = f.bundle.to_json();
    let tpm_only = Policy::from_json(&f.policy_json(tpm_only_json())).unwrap();
    let v = Verifier::new(tpm_only).verify_node(&bytes, &cx(NOW));
    let failed = v.report.first_failure().expect("refused");
    assert_eq!(failed.number, 1, "{}", v.report.human());
    assert!(
        failed.detail.contains("software root of trust")
            && failed.detail.contains("accepts only tpm2"),
        "{}",
        failed.detail
    );
    let either = Policy::from_json(
        &f.policy_json(serde_json::json!({"rootsOfTrust": ["software", "tpm2"]})),
    )
    .unwrap();
    assert!(
        Verifier::new(either)
            .verify_node(&bytes, &cx(NOW))
            .report
            .passed()
    );
}

#[test]
fn equivocation_and_consistency() {
    let f = Fixture::new();
    let policy = f.policy();
    let b = f.bundle.to_json();
    let verifier = Verifier::new(policy.clone());

    // Same size, different root, both signed by the log: equivocation.
    let mut forked = f.leaves.clone();
    forked[0] = leaf_hash(b"rewritten history");
    let fork_cp = signed_checkpoint(&f.log, 9, &mth(&forked), &[&f.witness], NOW - 30);
    let known = KnownCheckpoint::open(&policy, &fork_cp, vec![]).unwrap();
    let v = verifier.verify_node(
        &b,
        &VerifyContext {
            known: Some(&known),
            ..cx(NOW)
        },
    );
    let s = v.report.first_failure().unwrap();
    assert_eq!(s.number, 5);
    assert!(s.detail.contains("EQUIVOCATION"), "{}", s.detail);

    // An older checkpoint (size 4) with a valid consistency proof to size 9: passes.
    let old_cp = signed_checkpoint(&f.log, 4, &mth(&f.leaves[..4]), &[&f.witness], NOW - 3000);
    let known = KnownCheckpoint::open(&policy, &old_cp, consistency_proof(4, &f.leaves)).unwrap();
    let v = verifier.verify_node(
        &b,
        &VerifyContext {
            known: Some(&known),
            ..cx(NOW)
        },
    );
    assert!(v.report.passed(), "{}", v.report.human());

    // A newer checkpoint (size 12) the bundle's (size 9) must be consistent with.
    let mut grown = f.leaves.clone();
    grown.extend((20..23u8).map(|i| leaf_hash(&[i])));
    let new_cp = signed_checkpoint(&f.log, 12, &mth(&grown), &[&f.witness], NOW - 10);
    let known = KnownCheckpoint::open(&policy, &new_cp, consistency_proof(9, &grown)).unwrap();
    assert!(
        verifier
            .verify_node(
                &b,
                &VerifyContext {
                    known: Some(&known),
                    ..cx(NOW)
                }
            )
            .report
            .passed()
    );

    // The same newer checkpoint over a forked history: the proof cannot link them.
    let mut grown_fork = forked.clone();
    grown_fork.extend((20..23u8).map(|i| leaf_hash(&[i])));
    let fork12 = signed_checkpoint(&f.log, 12, &mth(&grown_fork), &[&f.witness], NOW - 10);
    let known = KnownCheckpoint::open(&policy, &fork12, consistency_proof(9, &grown_fork)).unwrap();
    let v = verifier.verify_node(
        &b,
        &VerifyContext {
            known: Some(&known),
            ..cx(NOW)
        },
    );
    assert_eq!(v.report.first_failure().unwrap().number, 5);

    // A checkpoint signed by another key is not accepted as "known".
    let other = log_keys(ORIGIN);
    let foreign = signed_checkpoint(&other, 9, &mth(&f.leaves), &[], NOW);
    assert!(KnownCheckpoint::open(&policy, &foreign, vec![]).is_err());
}

#[test]
fn witnesses_and_checkpoint_age() {
    let mut f = Fixture::new();
    let policy = f.policy();
    // No cosignature while the policy requires one.
    let unlogged = f.release_key.sign(manifest("tandem-node 0.1.0"));
    let bare = attach(unlogged.clone(), &f.log, &f.leaves, 5, &[], NOW);
    let b = f.node_bundle_for(bare, None).to_json();
    let (step, detail) = failed_step(&f, &policy, &b, &cx(NOW)).unwrap();
    assert_eq!(step, 4);
    assert!(detail.contains("witness"), "{detail}");
    // A stranger's cosignature does not count.
    let stranger = witness("witness.example");
    let fake = attach(unlogged.clone(), &f.log, &f.leaves, 5, &[&stranger], NOW);
    let b = f.node_bundle_for(fake, None).to_json();
    assert_eq!(failed_step(&f, &policy, &b, &cx(NOW)).map(|s| s.0), Some(4));
    // Too old.
    let old = attach(
        unlogged,
        &f.log,
        &f.leaves,
        5,
        &[&f.witness],
        NOW - 86400 - 120,
    );
    let b = f.node_bundle_for(old, None).to_json();
    let (step, detail) = failed_step(&f, &policy, &b, &cx(NOW)).unwrap();
    assert_eq!(step, 7);
    assert!(detail.contains("witnessed"), "{detail}");
}

#[test]
fn required_digests() {
    let f = Fixture::new();
    let verifier = Verifier::new(f.policy());
    let b = f.bundle.to_json();
    let need = [Sha256Digest::of(ADAPTER), Sha256Digest::of(BASE)];
    assert!(
        verifier
            .verify_node(
                &b,
                &VerifyContext {
                    required_digests: &need,
                    ..cx(NOW)
                }
            )
            .report
            .passed()
    );
    let missing = [Sha256Digest::of(b"some other adapter")];
    let v = verifier.verify_node(
        &b,
        &VerifyContext {
            required_digests: &missing,
            ..cx(NOW)
        },
    );
    let s = v.report.first_failure().unwrap();
    assert_eq!(s.number, 6);
    assert!(s.detail.contains("does not contain"), "{}", s.detail);
}

#[test]
fn nonce_binding() {
    let mut f = Fixture::new();
    let release = f.release.clone();
    let b = f
        .node_bundle_for(release, Some(b"challenge-1".to_vec()))
        .to_json();
    let verifier = Verifier::new(f.policy());
    assert!(
        verifier
            .verify_node(
                &b,
                &VerifyContext {
                    nonce: Some(b"challenge-1"),
                    ..cx(NOW)
                }
            )
            .report
            .passed()
    );
    let v = verifier.verify_node(
        &b,
        &VerifyContext {
            nonce: Some(b"challenge-2"),
            ..cx(NOW)
        },
    );
    assert_eq!(v.report.first_failure().unwrap().number, 2);
    // A bundle without a nonce does not answer a challenge.
    let v = verifier.verify_node(
        &f.bundle.to_json(),
        &VerifyContext {
            nonce: Some(b"challenge-1"),
            ..cx(NOW)
        },
    );
    assert_eq!(v.report.first_failure().unwrap().number, 2);
}

#[test]
fn report_json_and_human() {
    let f = Fixture::new();
    let v = Verifier::new(f.policy()).verify_node(&f.bundle.to_json(), &cx(KEY_EXPIRY + 1000));
    let j = v.report.to_json_value();
    assert_eq!(j["passed"], false);
    assert_eq!(j["steps"].as_array().unwrap().len(), 8);
    assert_eq!(j["steps"][7]["status"], "fail");
    assert_eq!(j["steps"][1]["name"], "root of trust");
    let h = v.report.human();
    assert!(h.contains("[FAIL] 7. expiry"), "{h}");
    assert!(h.contains("NOT VERIFIED"));
    // A parse failure still lists every step.
    let v = Verifier::new(f.policy()).verify_node(b"{}", &cx(NOW));
    assert_eq!(v.report.steps.len(), 8);
    assert_eq!(v.report.steps[0].status, StepStatus::Fail);
    assert!(
        v.report.steps[1..]
            .iter()
            .all(|s| s.status == StepStatus::NotRun)
    );
}

#[test]
fn cache_hits_rechecks_and_expires() {
    let f = Fixture::new();
    let mut cache = VerificationCache::new(Verifier::new(f.policy()));
    let b = f.bundle.to_json();
    let first = cache.verify_node(&b, &cx(NOW));
    assert!(first.report.passed() && !first.report.cached);
    let hit = cache.verify_node(&b, &cx(NOW + 10));
    assert!(hit.report.passed() && hit.report.cached);
    assert_eq!(hit.node, first.node);
    // Required digests are re-checked on a hit.
    let missing = [Sha256Digest::of(b"x")];
    let v = cache.verify_node(
        &b,
        &VerifyContext {
            required_digests: &missing,
            ..cx(NOW)
        },
    );
    assert!(!v.report.passed() && v.report.cached);
    assert_eq!(v.report.first_failure().unwrap().number, 6);
    // Past valid_until: re-verified (and fails on expiry).
    let late = cache.verify_node(&b, &cx(KEY_EXPIRY + 61));
    assert!(!late.report.passed() && !late.report.cached);
    assert_eq!(late.report.first_failure().unwrap().number, 7);
    // A different bundle is a miss.
    let mut other = b.clone();
    other.push(b' ');
    assert!(!cache.verify_node(&other, &cx(NOW)).report.cached);
}

#[test]
fn unlogged_release_fails_inclusion() {
    let mut f = Fixture::new();
    let unlogged = f.release_key.sign(manifest("tandem-node 0.1.0"));
    let b = f.node_bundle_for(unlogged, None).to_json();
    let (step, detail) = failed_step(&f, &f.policy(), &b, &cx(NOW)).unwrap();
    assert_eq!(step, 4);
    assert!(detail.contains("no transparency-log entry"), "{detail}");
    // A proof for a different leaf index.
    let unlogged = f.release_key.sign(manifest("tandem-node 0.1.0"));
    let wrong = attach(unlogged, &f.log, &f.leaves, 4, &[&f.witness], NOW);
    let b = f.node_bundle_for(wrong, None).to_json();
    let (step, detail) = failed_step(&f, &f.policy(), &b, &cx(NOW)).unwrap();
    assert_eq!(step, 4);
    assert!(
        detail.contains("is not in the log at checkpoint 9"),
        "{detail}"
    );
}

#[test]
fn attach_inclusion_bundle_from_the_log_module() {
    use tandem_attest::log::merkle::MemoryTree;
    use tandem_attest::log::note::sign_checkpoint;
    use tandem_attest::log::{Checkpoint, InclusionBundle, NoteSigner};
    use tandem_attest::release::LogEntry;
    let f = Fixture::new();
    let (signer, _skey) = NoteSigner::generate_with_rng(&mut rand_core::OsRng, ORIGIN).unwrap();
    let vkey = signer.vkey().to_owned();
    let unlogged = f.release_key.sign(manifest("tandem-node 0.2.0"));
    let mut tree = MemoryTree::new();
    for i in 0..3u8 {
        tree.push(&[i]);
    }
    let idx = tree.push(&unlogged.log_entry_body());
    tree.push(b"after");
    let size = tree.size();
    let proof = tree.inclusion_proof(idx, size).unwrap();
    let note = sign_checkpoint(
        &Checkpoint::new(ORIGIN, size, tree.root(size).unwrap()),
        &signer,
    )
    .unwrap();
    let inc = InclusionBundle::new(idx, size, &proof, &note);
    let logged = unlogged.with_log_entry(LogEntry::from_inclusion(&inc, NOW).unwrap());
    let policy = Policy::from_json(&f.policy_json(serde_json::json!({
        "logKeys": [vkey], "witnessKeys": [], "requiredWitnesses": 0, "maxCheckpointAgeSecs": null
    })))
    .unwrap();
    let v = Verifier::new(policy).verify_release(&logged.to_json(), &cx(NOW));
    assert!(v.report.passed(), "{}", v.report.human());
    assert_eq!(v.into_result().unwrap().log_index(), idx);
}

/// Writes the fuzz seed corpus (`attest/fuzz/corpus/<target>/`) when
/// `TANDEM_WRITE_FUZZ_SEEDS=1`; otherwise checks the committed seeds still parse.
#[test]
fn fuzz_seed_corpus() {
    let f = Fixture::new();
    let tpm_claims = tandem_attest::evidence::EvidenceClaims {
        key_config_digest: key_configs().digest(),
        release_digest: f.release.release_digest(),
        key_expiry: KEY_EXPIRY,
        nonce: Some(b"n".to_vec()),
    };
    let mut launch_log = tandem_attest::evidence::EventLog::new();
    for (kind, d) in [
        (
            tandem_attest::evidence::EventKind::BootChain,
            &b"firmware"[..],
        ),
        (
            tandem_attest::evidence::EventKind::Launcher,
            b"tandem-launch",
        ),
        (
            tandem_attest::evidence::EventKind::NodeBinary,
            b"tandem-node",
        ),
        (tandem_attest::evidence::EventKind::NodeConfig, b"node.toml"),
    ] {
        launch_log.push(kind, Sha256Digest::of(d)).unwrap();
    }
    launch_log
        .push(
            tandem_attest::evidence::EventKind::Release,
            f.release.release_digest(),
        )
        .unwrap();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("attestation_bundle", f.bundle.to_json()),
        ("release_bundle", f.release.to_json()),
        (
            "evidence",
            serde_json::to_vec(&f.bundle.evidence().to_value()).unwrap(),
        ),
        ("manifest", manifest("tandem-node 0.1.0").canonical_json()),
        (
            "tpm_quote",
            tandem_attest::evidence::tpm::synthetic_quote_bytes(&tpm_claims, &launch_log),
        ),
        ("event_log", launch_log.encode()),
        ("policy", f.policy_json(serde_json::json!({}))),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = std::env::var("TANDEM_WRITE_FUZZ_SEEDS").is_ok_and(|v| v == "1");
    for (target, bytes) in seeds {
        let path = root.join(target).join("seed-0");
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if let Ok(committed) = std::fs::read(&path) {
            // Seeds are regenerated with fresh keys, so compare shape, not bytes: they parse.
            let ok = match target {
                "attestation_bundle" => AttestationBundle::from_json(&committed).is_ok(),
                "release_bundle" => {
                    tandem_attest::release::ReleaseBundle::from_json(&committed).is_ok()
                }
                "evidence" => tandem_attest::evidence::Evidence::from_json(&committed).is_ok(),
                "manifest" => {
                    tandem_attest::release::ReleaseManifest::from_canonical_json(&committed).is_ok()
                }
                "tpm_quote" => tandem_attest::evidence::TpmQuote::parse(committed.clone()).is_ok(),
                "event_log" => tandem_attest::evidence::EventLog::parse(&committed).is_ok(),
                _ => Policy::from_json(&committed).is_ok(),
            };
            assert!(ok, "committed seed {} no longer parses", path.display());
        }
    }
}
