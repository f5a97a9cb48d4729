//! C2SP tlog-proof (`c2sp.org/tlog-proof@v1`): Tandem's inclusion bundles written and read as
//! offline proofs. Round trip for every entry of a 13-entry log, verified with no log at hand;
//! the spec's example parses; every truncation and every flipped byte is refused (by the parser
//! or by verification, never accepted); hostile shapes get reasons.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tandem_attest::log::merkle::MemoryTree;
use tandem_attest::log::note::{NoteSigner, sign_checkpoint};
use tandem_attest::log::{Checkpoint, InclusionBundle, TlogProof};

fn log(n: usize) -> (NoteSigner, Vec<Vec<u8>>, Vec<u8>, MemoryTree) {
    let (signer, _) =
        NoteSigner::generate_with_rng(&mut rand::rngs::OsRng, "proof.tandem/log").unwrap();
    let entries: Vec<Vec<u8>> = (0..n).map(|i| format!("entry {i}").into_bytes()).collect();
    let mut tree = MemoryTree::new();
    for e in &entries {
        tree.push(e);
    }
    let cp = Checkpoint::new("proof.tandem/log", n as u64, tree.root(n as u64).unwrap());
    let note = sign_checkpoint(&cp, &signer).unwrap();
    (signer, entries, note, tree)
}

fn bundle(tree: &MemoryTree, note: &[u8], index: u64, size: u64) -> InclusionBundle {
    InclusionBundle::new(
        index,
        size,
        &tree.inclusion_proof(index, size).unwrap(),
        note,
    )
}

#[test]
fn every_entry_round_trips_and_verifies_offline() {
    let (signer, entries, note, tree) = log(13);
    let key = signer.verifier();
    for (i, e) in entries.iter().enumerate() {
        let b = bundle(&tree, &note, i as u64, 13);
        for extra in [None, Some(&b"release sha256:ab12"[..])] {
            let text = b.to_tlog_proof(extra);
            assert!(text.starts_with("c2sp.org/tlog-proof@v1\n"));
            let p = TlogProof::parse(text.as_bytes()).unwrap();
            assert_eq!(p.bundle, b);
            assert_eq!(p.extra.as_deref(), extra);
            p.bundle.verify(e, &key, None, None).unwrap();
            // Not another entry, not under another key.
            assert!(p.bundle.verify(b"entry 99", &key, None, None).is_err());
            let (other, _) =
                NoteSigner::generate_with_rng(&mut rand::rngs::OsRng, "proof.tandem/log").unwrap();
            assert!(p.bundle.verify(e, &other.verifier(), None, None).is_err());
        }
    }
}

#[test]
fn the_specs_example_parses() {
    let example = "c2sp.org/tlog-proof@v1\n\
        extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6\n\
        index 73894\n\
        gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\n\
        B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\n\
        EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\n\
        \n\
        example.com/fancylog\n\
        109482\n\
        sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n\
        \n\
        \u{2014} example.com/fancylog hI2DJw==\n";
    let p = TlogProof::parse(example.as_bytes()).unwrap();
    assert_eq!(p.bundle.index, 73894);
    assert_eq!(p.bundle.tree_size, 109482);
    assert_eq!(p.bundle.inclusion_proof.len(), 3);
    assert_eq!(
        p.extra.as_deref(),
        Some(&b"age-v1.2.1-darwin-arm64.tar.gz"[..])
    );
}

#[test]
fn every_truncation_and_every_flipped_byte_is_refused() {
    let (signer, entries, note, tree) = log(13);
    let key = signer.verifier();
    let b = bundle(&tree, &note, 5, 13);
    let text = b.to_tlog_proof(Some(b"x")).into_bytes();
    let accepted = |bytes: &[u8]| {
        TlogProof::parse(bytes)
            .is_ok_and(|p| p.bundle.verify(&entries[5], &key, None, None).is_ok())
    };
    assert!(accepted(&text));
    for cut in 0..text.len() {
        assert!(!accepted(&text[..cut]), "accepted when cut at {cut}");
    }
    for at in 0..text.len() {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut t = text.clone();
            t[at] ^= mask;
            // The extra line is unauthenticated by design: a change there may still verify,
            // and then must show up as different extra data.
            if let Ok(p) = TlogProof::parse(&t)
                && p.bundle.verify(&entries[5], &key, None, None).is_ok()
            {
                assert_ne!(p.extra.as_deref(), Some(&b"x"[..]), "byte {at} ^ {mask:#x}");
                assert!(
                    at < "c2sp.org/tlog-proof@v1\nextra eA==".len(),
                    "byte {at} ^ {mask:#x}"
                );
            }
        }
    }
}

#[test]
fn hostile_shapes_are_refused_with_reasons() {
    let (_, _, note, tree) = log(4);
    let good = bundle(&tree, &note, 1, 4).to_tlog_proof(None);
    let cases = [
        (
            good.replace("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2"),
            "first line",
        ),
        (good.replace("index 1", "index 01"), "leading zeros"),
        (good.replace("index 1", "index -1"), "leading zeros"),
        (
            good.replace("index 1", "index 4"),
            "not in a tree of size 4",
        ),
        (good.replace("index 1", "idx 1"), "expected `index N`"),
        (good.replacen("\n\n", "\n", 1), "not a SHA-256 hash"),
        (
            good.split("\n\n").next().unwrap().to_string(),
            "no empty line",
        ),
        (
            good.replace("index 1\n", "index 1\nnot-base64\n"),
            "proof line 0",
        ),
        (
            good.replace(
                "c2sp.org/tlog-proof@v1\n",
                "c2sp.org/tlog-proof@v1\nextra %%\n",
            ),
            "extra",
        ),
        ("x".repeat(70_000), "limit"),
    ];
    for (text, why) in cases {
        let e = TlogProof::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(e.contains(why), "{why:?} not in {e:?}");
    }
    let mut many = String::from("c2sp.org/tlog-proof@v1\nindex 0\n");
    for _ in 0..65 {
        many.push_str("gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\n");
    }
    many.push_str(
        "\nexample.com/x\n1\ngSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\n\n\u{2014} a b\n",
    );
    let e = TlogProof::parse(many.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("more than 64"), "{e}");
}
