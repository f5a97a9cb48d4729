//! Transparency-log proof generation and verification at 1 M entries.
//!
//! Run: `cargo bench -p tandem-attest --bench log_proofs` (or build with `--no-run` and run the
//! produced binary with `--bench`).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_attest::log::merkle::{self, MemoryTree};
use tandem_attest::log::note::{self, NoteSigner};
use tandem_attest::log::tile::{self, TileKind, TileSet};
use tandem_attest::log::{Checkpoint, InclusionBundle, LogError};

const N: u64 = 1 << 20;

fn bench(c: &mut Criterion) {
    let mut tree = MemoryTree::new();
    for i in 0..N {
        tree.push(&i.to_be_bytes());
    }
    let root = tree.root(N).unwrap();
    let mut idx = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        idx = idx.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (idx >> 11) % N
    };

    let mut g = c.benchmark_group("log_1M");
    g.bench_function("inclusion_proof_generate_memory", |b| {
        b.iter(|| black_box(tree.inclusion_proof(next(), N).unwrap()))
    });
    g.bench_function("consistency_proof_generate_memory", |b| {
        b.iter(|| black_box(tree.consistency_proof(next().max(1), N).unwrap()))
    });
    // The client side of tlog-tiles: proofs from the hash tiles a log serves (all preloaded).
    let mut tiles = TileSet::new(N);
    for t in tile::tiles_to_publish(0, N) {
        if let TileKind::Hash(l) = t.kind {
            tiles
                .insert(
                    t,
                    &tile::hash_tile_data(&tree, l, t.index, t.width).unwrap(),
                )
                .unwrap();
        }
    }
    g.bench_function("inclusion_proof_generate_from_tiles", |b| {
        b.iter(|| {
            let r: Result<_, LogError> = merkle::inclusion_proof(&tiles, next(), N);
            black_box(r.unwrap())
        })
    });
    let i = next();
    let proof = tree.inclusion_proof(i, N).unwrap();
    let leaf = merkle::leaf_hash(&i.to_be_bytes());
    g.bench_function("inclusion_proof_verify", |b| {
        b.iter(|| merkle::verify_inclusion(black_box(&leaf), i, N, &proof, &root).unwrap())
    });
    let cproof = tree.consistency_proof(12_345, N).unwrap();
    let old_root = tree.root(12_345).unwrap();
    g.bench_function("consistency_proof_verify", |b| {
        b.iter(|| {
            merkle::verify_consistency(12_345, N, &old_root, &root, black_box(&cproof)).unwrap()
        })
    });
    // Full check of an inclusion bundle: checkpoint signature + body + proof.
    let (signer, _) =
        NoteSigner::generate_with_rng(&mut rand::rngs::OsRng, "bench.tandem/log").unwrap();
    let cp = note::sign_checkpoint(&Checkpoint::new("bench.tandem/log", N, root), &signer).unwrap();
    let bundle = InclusionBundle::new(i, N, &proof, &cp);
    let v = signer.verifier();
    let entry = i.to_be_bytes();
    g.bench_function("inclusion_bundle_verify_with_signature", |b| {
        b.iter(|| bundle.verify(black_box(&entry), &v, None, None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
