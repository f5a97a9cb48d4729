//! Transparency-log test vectors from other implementations (files under `tests/vectors/`):
//! RFC 6962 / RFC 9162 Merkle hashing and proofs (transparency-dev/merkle), C2SP signed notes
//! (golang.org/x/mod sumdb/note), and a real checkpoint with C2SP tlog-cosignature witness
//! cosignatures.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use tandem_attest::log::merkle::{self, Hash, MemoryTree};
use tandem_attest::log::note::{self, CosignerKey, NoteSigner, NoteVerifier, WitnessPolicy};
use tandem_attest::log::{Checkpoint, LogError};

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Deserialize)]
struct MerkleVectors {
    leaves_hex: Vec<String>,
    roots_hex: Vec<String>,
    node_hashes_hex: Vec<Vec<String>>,
    inclusion: Vec<InclusionCase>,
    consistency: Vec<ConsistencyCase>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InclusionCase {
    file: String,
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConsistencyCase {
    file: String,
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    want_err: bool,
}

/// Decode a base64 hash; anything that is not 32 bytes is "not a hash" (the vectors include
/// such values on purpose: a verifier must reject them).
fn b64_hash(s: &str) -> Option<Hash> {
    B64.decode(s).ok()?.try_into().ok()
}

fn hex_hash(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn b64_proof(p: &Option<Vec<String>>) -> Option<Vec<Hash>> {
    p.as_deref()
        .unwrap_or_default()
        .iter()
        .map(|s| b64_hash(s))
        .collect()
}

#[test]
fn rfc6962_roots_and_node_hashes() {
    let v: MerkleVectors = load("transparency-dev-merkle-rfc6962.json");
    let mut tree = MemoryTree::new();
    assert_eq!(tree.root(0).unwrap(), hex_hash(&v.roots_hex[0]));
    for (i, leaf) in v.leaves_hex.iter().enumerate() {
        tree.push(&hex::decode(leaf).unwrap());
        assert_eq!(
            tree.root(i as u64 + 1).unwrap(),
            hex_hash(&v.roots_hex[i + 1]),
            "size {}",
            i + 1
        );
    }
    for (level, hashes) in v.node_hashes_hex.iter().enumerate() {
        for (i, h) in hashes.iter().enumerate() {
            assert_eq!(
                tree.level(level as u8)[i],
                hex_hash(h),
                "level {level} index {i}"
            );
        }
    }
}

#[test]
fn transparency_dev_inclusion_cases() {
    let v: MerkleVectors = load("transparency-dev-merkle-rfc6962.json");
    assert!(!v.inclusion.is_empty());
    for c in &v.inclusion {
        let parsed = (
            b64_hash(&c.leaf_hash),
            b64_hash(&c.root),
            b64_proof(&c.proof),
        );
        let result = match parsed {
            (Some(leaf), Some(root), Some(proof)) => {
                merkle::verify_inclusion(&leaf, c.leaf_idx, c.tree_size, &proof, &root)
            }
            _ => Err(LogError::MalformedProof("not 32-byte hashes".into())),
        };
        assert_eq!(result.is_err(), c.want_err, "{}: {result:?}", c.file);
    }
}

#[test]
fn transparency_dev_consistency_cases() {
    let v: MerkleVectors = load("transparency-dev-merkle-rfc6962.json");
    for c in &v.consistency {
        let parsed = (b64_hash(&c.root1), b64_hash(&c.root2), b64_proof(&c.proof));
        let result = match parsed {
            (Some(r1), Some(r2), Some(proof)) => {
                merkle::verify_consistency(c.size1, c.size2, &r1, &r2, &proof)
            }
            _ => Err(LogError::MalformedProof("not 32-byte hashes".into())),
        };
        assert_eq!(result.is_err(), c.want_err, "{}: {result:?}", c.file);
    }
}

#[test]
fn generated_proofs_equal_the_reference_proofs() {
    let v: MerkleVectors = load("transparency-dev-merkle-rfc6962.json");
    let mut tree = MemoryTree::new();
    for leaf in &v.leaves_hex {
        tree.push(&hex::decode(leaf).unwrap());
    }
    for c in v.inclusion.iter().filter(|c| !c.want_err) {
        let want = b64_proof(&c.proof).unwrap();
        assert_eq!(
            tree.inclusion_proof(c.leaf_idx, c.tree_size).unwrap(),
            want,
            "{}",
            c.file
        );
    }
    for c in v.consistency.iter().filter(|c| !c.want_err) {
        let want = b64_proof(&c.proof).unwrap();
        assert_eq!(
            tree.consistency_proof(c.size1, c.size2).unwrap(),
            want,
            "{}",
            c.file
        );
    }
}

#[derive(Deserialize)]
struct NoteExample {
    skey: String,
    vkey: String,
    text: String,
    signed_note: String,
}

#[test]
fn go_sumdb_note_example_signs_and_verifies_byte_for_byte() {
    let v: NoteExample = load("go-sumdb-note-example.json");
    let signer = NoteSigner::from_skey(&v.skey).unwrap();
    assert_eq!(
        signer.vkey(),
        v.vkey,
        "the verifier key derived from the private key"
    );
    // Ed25519 is deterministic, so our signature must be the published one.
    let signed = note::sign_note(v.text.as_bytes(), &[&signer]).unwrap();
    assert_eq!(String::from_utf8(signed).unwrap(), v.signed_note);
    let verifier = NoteVerifier::new(&v.vkey).unwrap();
    let opened = note::open_note(v.signed_note.as_bytes(), &[&verifier]).unwrap();
    assert_eq!(opened.text, v.text.as_bytes());
    assert_eq!(opened.verified_by, vec!["PeterNeumann".to_owned()]);
    let altered = v.signed_note.replace("cryptography", "cryptographY");
    assert!(matches!(
        note::open_note(altered.as_bytes(), &[&verifier]),
        Err(LogError::BadSignature(_))
    ));
}

#[test]
fn go_sumdb_note_tamper_loop() {
    let v: NoteExample = load("go-sumdb-note-example.json");
    let verifier = NoteVerifier::new(&v.vkey).unwrap();
    let b = v.signed_note.as_bytes();
    for cut in 0..b.len() {
        assert!(
            note::open_note(&b[..cut], &[&verifier]).is_err(),
            "cut {cut}"
        );
    }
    for i in 0..b.len() {
        for bit in 0..8 {
            let mut m = b.to_vec();
            m[i] ^= 1 << bit;
            if let Ok(opened) = note::open_note(&m, &[&verifier]) {
                // The only accepted change is one that leaves the signed text and a valid
                // signature intact (there is none in this note: every byte is covered).
                panic!(
                    "byte {i} bit {bit} accepted: {:?}",
                    String::from_utf8_lossy(&opened.text)
                );
            }
        }
    }
    // Verifier keys: every truncation and every flipped byte must be rejected or be a different key.
    let k = v.vkey.as_bytes();
    for cut in 0..k.len() {
        if let Ok(s) = std::str::from_utf8(&k[..cut]) {
            assert!(NoteVerifier::new(s).is_err(), "vkey cut {cut}");
        }
    }
}

#[derive(Deserialize)]
struct CosignedCheckpoint {
    log_vkey: String,
    witness_vkeys: Vec<String>,
    unrelated_witness_vkeys: Vec<String>,
    checkpoint: String,
}

#[test]
fn real_checkpoint_with_witness_cosignatures() {
    let v: CosignedCheckpoint = load("arche2025h1-cosigned-checkpoint.json");
    let log = NoteVerifier::new(&v.log_vkey).unwrap();
    let witnesses: Vec<CosignerKey> = v
        .witness_vkeys
        .iter()
        .map(|k| CosignerKey::new(k).unwrap())
        .collect();
    for w in &v.witness_vkeys {
        assert_eq!(&CosignerKey::new(w).unwrap().vkey(), w);
    }
    let all = WitnessPolicy::new(witnesses.clone(), 4).unwrap();
    let verified = note::open_checkpoint(v.checkpoint.as_bytes(), &log, Some(&all), None).unwrap();
    assert_eq!(verified.checkpoint().size, 1_432_088_532);
    assert_eq!(verified.cosignatures().len(), 4);

    // Witnesses that did not sign do not count.
    let mut others: Vec<CosignerKey> = v
        .unrelated_witness_vkeys
        .iter()
        .map(|k| CosignerKey::new(k).unwrap())
        .collect();
    others.push(witnesses[0].clone());
    let need_two = WitnessPolicy::new(others, 2).unwrap();
    assert!(matches!(
        note::open_checkpoint(v.checkpoint.as_bytes(), &log, Some(&need_two), None),
        Err(LogError::WitnessQuorum { got: 1, need: 2 })
    ));

    // A cosignature in the future beyond the allowed skew is rejected (timestamps are 2026).
    assert!(
        note::open_checkpoint(
            v.checkpoint.as_bytes(),
            &log,
            Some(&all),
            Some((1_000_000_000, 60))
        )
        .is_err()
    );

    // Changing the size breaks the log signature.
    let forged = v.checkpoint.replace("1432088532", "1432088533");
    assert!(note::open_checkpoint(forged.as_bytes(), &log, None, None).is_err());

    // A policy asking for more witnesses than it lists is a configuration error.
    assert!(WitnessPolicy::new(witnesses, 5).is_err());
    // The empty policy accepts (zero of zero).
    let empty = WitnessPolicy::new(Vec::new(), 0).unwrap();
    assert!(note::open_checkpoint(v.checkpoint.as_bytes(), &log, Some(&empty), None).is_ok());
    let body = Checkpoint::parse(b"arche2025h1.staging.ct.transparency.dev\n1432088532\nU7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=\n").unwrap();
    assert_eq!(verified.checkpoint(), &body);
}
