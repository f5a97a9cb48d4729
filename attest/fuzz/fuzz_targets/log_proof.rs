#![no_main]
//! Inclusion bundles (JSON) and raw RFC 9162 proofs: never panic on any input.
use libfuzzer_sys::fuzz_target;
use tandem_attest::log::merkle::{self, MemoryTree};
use tandem_attest::log::{InclusionBundle, NoteVerifier};

const LOG: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = serde_json::from_slice::<InclusionBundle>(data) {
        let log = NoteVerifier::new(LOG).expect("fixed key");
        let _ = b.verify(b"entry", &log, None, None);
        let _ = b.proof_hashes();
    }
    // Raw proofs: sizes and hashes from the input, checked against a real small tree.
    if data.len() >= 16 {
        let a = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
        let proof: Vec<[u8; 32]> = data[16..]
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        let mut tree = MemoryTree::new();
        for i in 0u8..13 {
            tree.push(&[i]);
        }
        let root13 = tree.root(13).expect("size 13");
        let leaf = merkle::leaf_hash(&[3]);
        if merkle::verify_inclusion(&leaf, a, b, &proof, &root13).is_ok() {
            // Passing means the path really hashes to the 13-leaf root.
            assert_eq!(
                merkle::root_from_inclusion_proof(&leaf, a, b, &proof),
                Some(root13)
            );
        }
        let root5 = tree.root(5).expect("size 5");
        let _ = merkle::verify_consistency(a, b, &root5, &root13, &proof);
    }
});
