//! Sealed-message benchmarks, each beside the same work done by the `ohttp` crate (RFC 9458,
//! rust-hpke backend, same suite X25519-HKDF-SHA256 / HKDF-SHA256 / AES-128-GCM) in the same run.
//!
//! Run: `cargo bench -p tandem-proto --bench sealed` (see BENCHMARKS.md for the numbers).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hpke::{OpModeR, OpModeS};
use rand_hpke::SeedableRng;
use rand_hpke::rngs::StdRng;
use tandem_proto::{
    KeyConfig, Limits, NodeKey, RoutingMetadata, SealOptions, SizeBucket, Suite, open_request,
    seal_request_with_rng,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn routing() -> RoutingMetadata {
    RoutingMetadata {
        model_id: "tandem-3b".into(),
        adapter_id: "summarize".into(),
        size_bucket: SizeBucket::for_len(KIB),
    }
}

fn nodes(k: usize, rng: &mut StdRng) -> Vec<NodeKey> {
    (0..k)
        .map(|i| NodeKey::generate_with_rng(i as u8, &[Suite::default()], rng).expect("valid"))
        .collect()
}

/// Tandem: seal a request to K nodes, open it at one, seal a one-chunk response, open it.
fn tandem_round_trip(
    configs: &[KeyConfig],
    node: &NodeKey,
    req: &[u8],
    resp: &[u8],
    opts: &SealOptions,
    rng: &mut StdRng,
) -> Vec<u8> {
    let (sealed, ctx) =
        seal_request_with_rng(configs, &routing(), 1_800_000_000, req, opts, rng).expect("seal");
    let opened = open_request(node, &sealed, &opts.limits).expect("open");
    let (head, sealer) = opened.responder.start_with_rng(opts.limits, rng);
    let chunk = sealer.seal_final(resp).expect("seal response");
    let mut opener = ctx.open_head(&head, opts.limits).expect("head");
    let out = opener.open(&chunk).expect("open response").data;
    opener.finish().expect("final");
    out
}

/// ohttp: encapsulate a request, decapsulate it, encapsulate a response, decapsulate it.
fn ohttp_round_trip(
    encoded_config: &[u8],
    server: &ohttp::Server,
    req: &[u8],
    resp: &[u8],
) -> Vec<u8> {
    let client = ohttp::ClientRequest::from_encoded_config(encoded_config).expect("config");
    let (enc_req, client_resp) = client.encapsulate(req).expect("encapsulate");
    let (_, server_resp) = server.decapsulate(&enc_req).expect("decapsulate");
    let enc_resp = server_resp.encapsulate(resp).expect("encapsulate response");
    client_resp
        .decapsulate(&enc_resp)
        .expect("decapsulate response")
}

fn ohttp_server() -> (ohttp::Server, Vec<u8>) {
    ohttp::init();
    let config = ohttp::KeyConfig::new(
        1,
        ohttp::hpke::Kem::X25519Sha256,
        vec![ohttp::SymmetricSuite::new(
            ohttp::hpke::Kdf::HkdfSha256,
            ohttp::hpke::Aead::Aes128Gcm,
        )],
    )
    .expect("ohttp config");
    let server = ohttp::Server::new(config).expect("ohttp server");
    let encoded = server.config().encode().expect("encode");
    (server, encoded)
}

fn round_trip(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let req = vec![0x61u8; KIB];
    let resp = vec![0x62u8; KIB];
    let opts = SealOptions::default();
    let mut g = c.benchmark_group("round_trip_1KiB_req_1KiB_resp");
    for k in [1usize, 3, 8] {
        let ns = nodes(k, &mut rng);
        let configs: Vec<KeyConfig> = ns.iter().map(|n| n.config().clone()).collect();
        g.bench_with_input(BenchmarkId::new("tandem", format!("K={k}")), &k, |b, _| {
            b.iter(|| {
                black_box(tandem_round_trip(
                    &configs, &ns[0], &req, &resp, &opts, &mut rng,
                ))
            })
        });
    }
    // One HPKE sender setup plus the 32-byte data-key seal: the cost each added recipient
    // should stay within.
    {
        type A = hpke::aead::AesGcm128;
        type Kdf = hpke::kdf::HkdfSha256;
        type Kem = hpke::kem::X25519HkdfSha256;
        let (_, pk) = <Kem as hpke::Kem>::gen_keypair_with_rng(&mut rng);
        g.bench_function("hpke setup_sender + seal 32 B (one wrapping)", |b| {
            b.iter(|| {
                let (enc, mut ctx) = hpke::setup_sender_with_rng::<A, Kdf, Kem>(
                    &OpModeS::Base,
                    &pk,
                    b"info",
                    &mut rng,
                )
                .expect("setup");
                black_box((enc, ctx.seal(&[0u8; 32], b"aad").expect("seal")))
            })
        });
    }
    let (server, encoded) = ohttp_server();
    g.bench_function("ohttp/K=1", |b| {
        b.iter(|| black_box(ohttp_round_trip(&encoded, &server, &req, &resp)))
    });
    g.finish();
}

fn token_chunk(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let ns = nodes(1, &mut rng);
    let limits = Limits {
        max_chunk_len: 64 * KIB,
        max_message_len: usize::MAX,
    };
    let opts = SealOptions {
        suite: Suite::default(),
        limits,
    };
    let (sealed, ctx) = seal_request_with_rng(
        &[ns[0].config().clone()],
        &routing(),
        1_800_000_000,
        b"q",
        &opts,
        &mut rng,
    )
    .expect("seal");
    let opened = open_request(&ns[0], &sealed, &limits).expect("open");
    let (head, mut sealer) = opened.responder.start_with_rng(limits, &mut rng);
    let mut opener = ctx.open_head(&head, limits).expect("head");
    let token = [0x74u8; 16];
    let mut g = c.benchmark_group("token_chunk_16B_seal_open");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tandem", |b| {
        b.iter(|| {
            let chunk = sealer.seal(black_box(&token)).expect("seal");
            black_box(opener.open(&chunk).expect("open"))
        })
    });
    // Anchor: the HPKE AEAD context seal+open that ohttp's rust-hpke backend runs underneath
    // (the ohttp crate has no synchronous per-chunk API with default features off).
    type A = hpke::aead::AesGcm128;
    type Kdf = hpke::kdf::HkdfSha256;
    type Kem = hpke::kem::X25519HkdfSha256;
    let (sk, pk) = <Kem as hpke::Kem>::gen_keypair_with_rng(&mut rng);
    let (enc, mut s) =
        hpke::setup_sender_with_rng::<A, Kdf, Kem>(&OpModeS::Base, &pk, b"bench", &mut rng)
            .expect("setup");
    let mut r =
        hpke::setup_receiver::<A, Kdf, Kem>(&OpModeR::Base, &sk, &enc, b"bench").expect("setup");
    g.bench_function("hpke-aead-ctx (ohttp backend)", |b| {
        b.iter(|| {
            let ct = s.seal(black_box(&token), b"").expect("seal");
            black_box(r.open(&ct, b"").expect("open"))
        })
    });
    g.finish();
}

fn bulk(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let ns = nodes(1, &mut rng);
    let configs = vec![ns[0].config().clone()];
    let body = vec![0x5au8; MIB];
    let limits = Limits {
        max_chunk_len: 64 * KIB,
        max_message_len: 2 * MIB,
    };
    let opts = SealOptions {
        suite: Suite::default(),
        limits,
    };
    let (sealed, _) =
        seal_request_with_rng(&configs, &routing(), 1_800_000_000, &body, &opts, &mut rng)
            .expect("seal");
    let (server, encoded) = ohttp_server();
    let client = ohttp::ClientRequest::from_encoded_config(&encoded).expect("config");
    let (enc_req, _) = client.encapsulate(&body).expect("encapsulate");

    let mut g = c.benchmark_group("bulk_1MiB_request_body");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("tandem/seal (K=1, 64 KiB chunks)", |b| {
        b.iter(|| {
            black_box(
                seal_request_with_rng(&configs, &routing(), 1_800_000_000, &body, &opts, &mut rng)
                    .expect("seal"),
            )
        })
    });
    g.bench_function("tandem/open (K=1, 64 KiB chunks)", |b| {
        b.iter(|| black_box(open_request(&ns[0], &sealed, &limits).expect("open")))
    });
    // The chunked AEAD alone (no HPKE setup): a response-direction stream of 16 x 64 KiB.
    let big = Limits {
        max_chunk_len: 64 * KIB,
        max_message_len: usize::MAX,
    };
    let (sealed_q, ctx) =
        seal_request_with_rng(&configs, &routing(), 1_800_000_000, b"q", &opts, &mut rng)
            .expect("seal");
    let opened = open_request(&ns[0], &sealed_q, &limits).expect("open");
    let (head, mut sealer) = opened.responder.start_with_rng(big, &mut rng);
    let mut opener = ctx.open_head(&head, big).expect("head");
    let mut sealed_chunks: Vec<Vec<u8>> = Vec::with_capacity(16);
    g.bench_function("tandem/stream seal+open (16 x 64 KiB chunks)", |b| {
        b.iter(|| {
            sealed_chunks.clear();
            for piece in body.chunks(64 * KIB) {
                sealed_chunks.push(sealer.seal(piece).expect("seal"));
            }
            // Keep the opener in step with the sealer's sequence numbers.
            let mut out = Vec::with_capacity(MIB);
            for c in &sealed_chunks {
                opener.open_into(c, &mut out).expect("open");
            }
            black_box(out.len())
        })
    });
    g.bench_function("ohttp/encapsulate", |b| {
        b.iter(|| {
            let client = ohttp::ClientRequest::from_encoded_config(&encoded).expect("config");
            black_box(client.encapsulate(&body).expect("encapsulate"))
        })
    });
    g.bench_function("ohttp/decapsulate", |b| {
        b.iter(|| black_box(server.decapsulate(&enc_req).expect("decapsulate")))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = round_trip, token_chunk, bulk
}
criterion_main!(benches);
