//! The checkpoint tracker (consistency, equivocation), witness policies, and tamper loops over
//! signed checkpoints and inclusion bundles made with fresh keys.
#![allow(clippy::unwrap_used)]

use rand::SeedableRng;
use rand::rngs::StdRng;
use tandem_attest::log::merkle::MemoryTree;
use tandem_attest::log::note::{self, Cosigner, NoteSigner, WitnessPolicy};
use tandem_attest::log::{Checkpoint, CheckpointTracker, InclusionBundle, LogError, Observation};

const ORIGIN: &str = "test.tandem/log";

fn signer(seed: u64) -> NoteSigner {
    NoteSigner::generate_with_rng(&mut StdRng::seed_from_u64(seed), ORIGIN)
        .unwrap()
        .0
}

fn tree(n: u32, tag: &str) -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..n {
        t.push(format!("{tag}{i}").as_bytes());
    }
    t
}

fn signed(t: &MemoryTree, size: u64, s: &NoteSigner) -> Vec<u8> {
    note::sign_checkpoint(&Checkpoint::new(ORIGIN, size, t.root(size).unwrap()), s).unwrap()
}

#[test]
fn tracker_advances_with_consistency_and_reports_equivocation() {
    let s = signer(1);
    let v = s.verifier();
    let honest = tree(40, "e");
    let open = |b: &[u8]| note::open_checkpoint(b, &v, None, None).unwrap();
    let mut tr = CheckpointTracker::new(ORIGIN);

    let c10 = open(&signed(&honest, 10, &s));
    assert_eq!(tr.proof_needed(c10.checkpoint()), None);
    assert_eq!(tr.observe(&c10, &[]).unwrap(), Observation::First);

    let c30 = open(&signed(&honest, 30, &s));
    assert_eq!(tr.proof_needed(c30.checkpoint()), Some((10, 30)));
    // No proof, or a wrong one, is refused and the tracker keeps the old checkpoint.
    assert!(matches!(
        tr.observe(&c30, &[]),
        Err(LogError::ConsistencyProof { .. })
    ));
    let wrong = honest.consistency_proof(11, 30).unwrap();
    assert!(tr.observe(&c30, &wrong).is_err());
    assert_eq!(tr.newest().unwrap().size, 10);
    let p = honest.consistency_proof(10, 30).unwrap();
    assert_eq!(
        tr.observe(&c30, &p).unwrap(),
        Observation::Advanced { from: 10 }
    );
    assert_eq!(tr.newest().unwrap().size, 30);

    // An older checkpoint is fine if it is consistent with the newest.
    let c20 = open(&signed(&honest, 20, &s));
    assert_eq!(tr.proof_needed(c20.checkpoint()), Some((20, 30)));
    let p = honest.consistency_proof(20, 30).unwrap();
    assert_eq!(tr.observe(&c20, &p).unwrap(), Observation::OlderConsistent);
    assert_eq!(tr.observe(&c30, &[]).unwrap(), Observation::Unchanged);

    // Equivocation: the same log key signs a different tree of the same size.
    let forked = tree(40, "fork");
    let f30 = open(&signed(&forked, 30, &s));
    let err = tr.observe(&f30, &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LogError::Equivocation { size: 30, .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&hex::encode(honest.root(30).unwrap())),
        "{msg}"
    );
    assert!(
        msg.contains(&hex::encode(forked.root(30).unwrap())),
        "{msg}"
    );
    // A larger fork cannot be linked by any honest proof either.
    let f35 = open(&signed(&forked, 35, &s));
    let p = forked.consistency_proof(30, 35).unwrap();
    assert!(matches!(
        tr.observe(&f35, &p),
        Err(LogError::ConsistencyProof { .. })
    ));
    assert_eq!(tr.newest().unwrap().root_hash, honest.root(30).unwrap());
}

#[test]
fn checkpoints_of_another_log_or_key_are_refused() {
    let s = signer(1);
    let other = signer(2);
    let t = tree(5, "e");
    let b = signed(&t, 5, &other);
    assert!(matches!(
        note::open_checkpoint(&b, &s.verifier(), None, None),
        Err(LogError::BadSignature(_))
    ));
    let (named, _) =
        NoteSigner::generate_with_rng(&mut StdRng::seed_from_u64(3), "other.log").unwrap();
    let c = Checkpoint::new("other.log", 5, t.root(5).unwrap());
    let b = note::sign_checkpoint(&c, &named).unwrap();
    let vc = note::open_checkpoint(&b, &named.verifier(), None, None).unwrap();
    let mut tr = CheckpointTracker::new(ORIGIN);
    assert!(matches!(
        tr.observe(&vc, &[]),
        Err(LogError::OriginMismatch { .. })
    ));
    // Signing a checkpoint whose origin differs from the key name is caller misuse.
    assert!(note::sign_checkpoint(&c, &s).is_err());
}

#[test]
fn witness_policy_truth_table() {
    let s = signer(1);
    let t = tree(9, "e");
    let mut rng = StdRng::seed_from_u64(7);
    let w: Vec<Cosigner> = (0..3)
        .map(|i| Cosigner::generate_with_rng(&mut rng, &format!("w{i}.example")).unwrap())
        .collect();
    let base = signed(&t, 9, &s);
    // Notes cosigned by the subsets {}, {w0}, {w0,w1}, {w0,w1,w2}.
    let mut notes = vec![base.clone()];
    let mut acc = base;
    for c in &w {
        acc = c.cosign(&acc, 1_700_000_000).unwrap();
        notes.push(acc.clone());
    }
    let keys: Vec<_> = w.iter().map(Cosigner::key).collect();
    for (signed_by, note_bytes) in notes.iter().enumerate() {
        for required in 0..=3usize {
            let policy = WitnessPolicy::new(keys.clone(), required).unwrap();
            let r = note::open_checkpoint(
                note_bytes,
                &s.verifier(),
                Some(&policy),
                Some((1_700_000_100, 60)),
            );
            assert_eq!(
                r.is_ok(),
                signed_by >= required,
                "signed by {signed_by}, required {required}: {r:?}"
            );
            if let Ok(v) = r {
                assert_eq!(v.cosignatures().len(), signed_by);
            }
        }
    }
    // Empty policy: zero required of zero listed accepts; one required of zero is a config error.
    let empty = WitnessPolicy::new(Vec::new(), 0).unwrap();
    assert!(note::open_checkpoint(&notes[0], &s.verifier(), Some(&empty), None).is_ok());
    assert!(WitnessPolicy::new(Vec::new(), 1).is_err());
    // The same witness twice counts once.
    let dup = w[0].cosign(&notes[1], 1_700_000_001).unwrap();
    let need2 = WitnessPolicy::new(keys.clone(), 2).unwrap();
    assert!(matches!(
        note::open_checkpoint(&dup, &s.verifier(), Some(&need2), None),
        Err(LogError::WitnessQuorum { got: 1, need: 2 })
    ));
    // A cosignature from the future (beyond skew) is refused.
    let future = w[0].cosign(&notes[0], 1_800_000_000).unwrap();
    let need1 = WitnessPolicy::new(keys, 1).unwrap();
    assert!(
        note::open_checkpoint(
            &future,
            &s.verifier(),
            Some(&need1),
            Some((1_700_000_000, 60))
        )
        .is_err()
    );
}

#[test]
fn signed_checkpoint_tamper_loop() {
    let s = signer(1);
    let mut rng = StdRng::seed_from_u64(9);
    let w = Cosigner::generate_with_rng(&mut rng, "w.example").unwrap();
    let t = tree(12, "e");
    let b = w.cosign(&signed(&t, 12, &s), 1_700_000_000).unwrap();
    let policy = WitnessPolicy::new(vec![w.key()], 1).unwrap();
    let open = |m: &[u8]| note::open_checkpoint(m, &s.verifier(), Some(&policy), None);
    let orig = open(&b).unwrap().checkpoint().clone();
    for cut in 0..b.len() {
        assert!(open(&b[..cut]).is_err(), "cut {cut}");
    }
    for i in 0..b.len() {
        for bit in 0..8 {
            let mut m = b.clone();
            m[i] ^= 1 << bit;
            if let Ok(v) = open(&m) {
                panic!(
                    "byte {i} bit {bit} accepted: {:?} vs {orig:?}",
                    v.checkpoint()
                );
            }
        }
    }
}

#[test]
fn inclusion_bundle_tamper_loop() {
    let s = signer(1);
    let t = tree(21, "e");
    let proof = t.inclusion_proof(13, 21).unwrap();
    let bundle = InclusionBundle::new(13, 21, &proof, &signed(&t, 21, &s));
    let v = s.verifier();
    bundle.verify(b"e13", &v, None, None).unwrap();
    assert!(bundle.verify(b"e12", &v, None, None).is_err());
    let mut b = bundle.clone();
    b.index = 12;
    assert!(b.verify(b"e13", &v, None, None).is_err());
    let mut b = bundle.clone();
    b.tree_size = 22;
    assert!(b.verify(b"e13", &v, None, None).is_err());
    for i in 0..bundle.inclusion_proof.len() {
        let mut b = bundle.clone();
        b.inclusion_proof.remove(i);
        assert!(b.verify(b"e13", &v, None, None).is_err());
        let mut b = bundle.clone();
        b.inclusion_proof[i] = b.inclusion_proof[(i + 1) % bundle.inclusion_proof.len()].clone();
        assert!(b.verify(b"e13", &v, None, None).is_err());
    }
    // Every byte of the JSON encoding: flipped bytes either fail to parse, fail to verify, or
    // leave the verified meaning unchanged (e.g. JSON whitespace).
    let json = serde_json::to_vec(&bundle).unwrap();
    for i in 0..json.len() {
        for bit in [0u8, 5] {
            let mut m = json.clone();
            m[i] ^= 1 << bit;
            if let Ok(b) = serde_json::from_slice::<InclusionBundle>(&m)
                && b.verify(b"e13", &v, None, None).is_ok()
            {
                assert_eq!((b.index, b.tree_size), (13, 21), "byte {i}");
                assert_eq!(b.proof_hashes().unwrap(), proof, "byte {i}");
            }
        }
    }
    for cut in 0..json.len() {
        assert!(serde_json::from_slice::<InclusionBundle>(&json[..cut]).is_err());
    }
}
