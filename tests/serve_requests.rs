//! `tandem-node serve` in process, on a real loopback socket, with a real log, a real signed
//! release, real HPKE and the embedded device model: round trip with receipt, replay, limits,
//! unknown adapter, key rotation and expiry, queue backpressure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tandem_attest::attestation::AttestationBundle;
use tandem_node::node::{Clock, Node};
use tandem_tests::node::*;
use tonic::Code;

#[derive(Debug)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Running {
    addr: SocketAddr,
    clock: Arc<TestClock>,
    fleet: Fleet,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(extra_config: &str) -> Running {
    let bin_dir = tempfile::tempdir().unwrap();
    // In process, the "binary" measured is a stand-in file; the process tests measure the
    // real executable.
    let binary = bin_dir.path().join("tandem-node");
    std::fs::write(&binary, b"stand-in node binary").unwrap();
    let fleet = fleet(&binary, extra_config, true).await;
    let clock = Arc::new(TestClock(AtomicU64::new(now())));
    let node = Node::start(
        fleet.resolved(),
        &fleet.config_bytes,
        &binary,
        clock.clone(),
    )
    .await
    .unwrap();
    let listener = node.bind().await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        node.serve(listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        clock,
        fleet,
        stop: Some(tx),
        done,
    }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_receipt_replay_limits_and_unknown_adapter() {
    let r = start("").await;
    let mut c = connect(r.addr).await;
    let d = digests();

    // The attestation binds the published key to the logged release.
    let doc = attestation_document(&mut c).await;
    let bundle = AttestationBundle::from_json(&doc).unwrap();
    bundle
        .evidence()
        .verify_binding(None, bundle.release().statement().manifest())
        .unwrap();
    bundle
        .evidence()
        .verify_root(&[r.fleet.ca.public_key()])
        .unwrap();
    assert_eq!(
        bundle.evidence().claims().key_config_digest,
        bundle.key_configs().digest()
    );
    assert_eq!(
        bundle.release().release_digest(),
        r.fleet.release.release_digest()
    );
    // The device's verifier accepts the node's bundle as published.
    let verification = tandem_attest::verify::Verifier::new(r.fleet.policy()).verify_node(
        &doc,
        &tandem_attest::verify::VerifyContext {
            now: now(),
            ..Default::default()
        },
    );
    assert!(
        verification.node.is_some(),
        "the device verifier rejects the node: {:?}",
        verification.report
    );
    let entry = bundle.release().log_entry().expect("a fresh log entry");
    assert_eq!(entry.log_index, 5, "after the 5 filler entries");
    let configs = bundle.key_configs().entries().to_vec();

    // Round trip with the adapter: tokens equal local greedy generation; receipt binds it all.
    let prompt = "the quick brown fox";
    let (sealed, ctx) = seal(&configs, d.model, Some(d.adapter), prompt, 12, now());
    let ans = submit(&mut c, sealed.clone(), ctx).await.unwrap();
    assert!(ans.error.is_none(), "{:?}", ans.error);
    let receipt = ans.receipt.expect("a receipt");
    assert_eq!(
        receipt.release_digest,
        r.fleet.release.release_digest().as_bytes().to_vec()
    );
    assert_eq!(receipt.model_digest, d.model.to_vec());
    assert_eq!(receipt.adapter_digest, d.adapter.to_vec());
    assert_eq!(receipt.completion_tokens as usize, ans.tokens.len());
    assert!(receipt.prompt_tokens > 0);
    assert_eq!(ans.tokens, local_tokens(prompt, Some("proofread"), 12));

    // The same sealed bytes again: replay.
    let (_, ctx2) = seal(&configs, d.model, None, "x", 1, now());
    let err = submit(&mut c, sealed, ctx2).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");

    // Base model, no adapter.
    let (sealed, ctx) = seal(&configs, d.model, None, prompt, 6, now());
    let ans = submit(&mut c, sealed, ctx).await.unwrap();
    assert_eq!(ans.tokens, local_tokens(prompt, None, 6));
    assert!(ans.receipt.unwrap().adapter_digest.is_empty());

    // Oversize prompt (default limit 64 KiB).
    let big = "a".repeat(70 * 1024);
    let (sealed, ctx) = seal(&configs, d.model, None, &big, 4, now());
    let err = submit(&mut c, sealed, ctx).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(!err.message().contains("aaaa"), "no prompt text in errors");

    // Too many new tokens.
    let (sealed, ctx) = seal(&configs, d.model, None, prompt, 100_000, now());
    let err = submit(&mut c, sealed, ctx).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");

    // Unknown adapter digest.
    let (sealed, ctx) = seal(&configs, d.model, Some([7u8; 32]), prompt, 4, now());
    let err = submit(&mut c, sealed, ctx).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("adapter"), "{err}");

    // Unknown model digest.
    let (sealed, ctx) = seal(&configs, [9u8; 32], None, prompt, 4, now());
    let err = submit(&mut c, sealed, ctx).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // Garbage.
    let (_, ctx) = seal(&configs, d.model, None, prompt, 4, now());
    let err = submit(&mut c, b"not a sealed request".to_vec(), ctx)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_at_half_life_and_expired_keys_refuse() {
    let r = start("").await;
    let mut c = connect(r.addr).await;
    let d = digests();
    let t0 = r.clock.now();
    let old = key_configs(&mut c).await;
    // Sealed now, submitted after rotation (created_at inside the replay window).
    r.clock.0.store(t0 + 1800, Ordering::SeqCst);
    let new = key_configs(&mut c).await;
    assert_ne!(old[0].key_id(), new[0].key_id(), "a new key at half-life");
    assert_ne!(old[0].public_key(), new[0].public_key());
    // The old key still opens requests until it expires.
    let (sealed, ctx) = seal(&old, d.model, None, "hello", 2, t0 + 1800);
    let ans = submit(&mut c, sealed, ctx).await.unwrap();
    assert!(ans.receipt.is_some());
    let (sealed, ctx) = seal(&new, d.model, None, "hello", 2, t0 + 1800);
    assert!(submit(&mut c, sealed, ctx).await.unwrap().receipt.is_some());
    // Past the old key's expiry: refused with FAILED_PRECONDITION.
    r.clock.0.store(t0 + 3601, Ordering::SeqCst);
    let (sealed, ctx) = seal(&old, d.model, None, "hello", 2, t0 + 3601);
    let err = submit(&mut c, sealed, ctx).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("expired"), "{err}");
    // The key made at half-life still works.
    let (sealed, ctx) = seal(&new, d.model, None, "hello", 2, t0 + 3601);
    assert!(submit(&mut c, sealed, ctx).await.unwrap().receipt.is_some());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted() {
    let r = start("[limits]\nqueue_depth = 0\nmax_concurrent = 1\nmax_new_tokens = 200\n").await;
    let mut c = connect(r.addr).await;
    let d = digests();
    let configs = key_configs(&mut c).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (sealed, ctx) = seal(&configs, d.model, None, &format!("story {i}"), 200, now());
        let mut c = c.clone();
        tasks.push(tokio::spawn(
            async move { submit(&mut c, sealed, ctx).await },
        ));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => {
                assert!(a.receipt.is_some());
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                busy += 1;
            }
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls() {
    let r = start("tls = true").await;
    let ca = std::fs::read(r.fleet.identity.join("tls.cert.pem")).unwrap();
    let mut c = connect_tls(r.addr, &ca).await;
    let d = digests();
    let configs = key_configs(&mut c).await;
    let (sealed, ctx) = seal(&configs, d.model, None, "over tls", 3, now());
    let ans = submit(&mut c, sealed, ctx).await.unwrap();
    assert!(ans.receipt.is_some());
    // A plaintext client cannot talk to it.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", r.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut pc = tandem_proto::v1::node_client::NodeClient::new(ch);
        assert!(
            pc.get_attestation(tandem_proto::v1::GetAttestationRequest {})
                .await
                .is_err()
        );
    }
    r.stop().await;
}
