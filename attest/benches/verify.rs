//! Full verification of one node attestation bundle: cold (every step, every signature) and
//! cached (a `VerificationCache` hit). Run: `cargo bench -p tandem-attest --bench verify`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use tandem_attest::test_util as common;

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tandem_attest::verify::{VerificationCache, Verifier, VerifyContext};

fn bench(c: &mut Criterion) {
    let f = common::Fixture::new();
    let bytes = f.bundle.to_json();
    let verifier = Verifier::new(f.policy());
    let cx = VerifyContext {
        now: common::NOW,
        known: None,
        required_digests: &[],
        nonce: None,
    };
    assert!(verifier.verify_node(&bytes, &cx).report.passed());

    let mut g = c.benchmark_group("attestation verification");
    g.bench_function(
        format!("cold: full node bundle ({} bytes)", bytes.len()),
        |b| {
            b.iter(|| {
                let v = verifier.verify_node(black_box(&bytes), black_box(&cx));
                assert!(v.node.is_some());
            })
        },
    );
    let mut cache = VerificationCache::new(verifier.clone());
    assert!(cache.verify_node(&bytes, &cx).report.passed());
    g.bench_function("cached: VerificationCache hit", |b| {
        b.iter(|| {
            let v = cache.verify_node(black_box(&bytes), black_box(&cx));
            assert!(v.report.cached && v.node.is_some());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
