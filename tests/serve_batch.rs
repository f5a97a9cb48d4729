//! Batched decoding (`limits.max_batch > 1`): concurrent requests decoded together give the same
//! greedy tokens as the single-sequence path the device runs, each with its own receipt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tandem_node::node::SystemClock;
use tandem_tests::node::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_requests_match_single_sequence_greedy() {
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = bin_dir.path().join("tandem-node");
    std::fs::write(&binary, b"stand-in").unwrap();
    let f = fleet(
        &binary,
        "[limits]\nmax_batch = 8\nmax_concurrent = 1\n",
        true,
    )
    .await;
    let addr = f.serve_in_process(&binary, Arc::new(SystemClock)).await;
    let mut c = connect(addr).await;
    let d = digests();
    let truecase = tandem_model::adapter_digest(&device_model().join("adapters/truecase"))
        .unwrap()
        .0
        .0;
    let configs = key_configs(&mut c).await;
    let prompts = [
        "once upon a time",
        "the cat",
        "a much longer prompt about the weather in the mountains today",
        "hello",
        "numbers: one two three",
        "why",
    ];
    let mut tasks = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let adapter = (i % 2 == 1).then_some(truecase);
        let max = 10 + 3 * i as u32;
        let (s, ctx) = seal(&configs, d.model, adapter, p, max, now());
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            (
                submit(&mut c, s, ctx).await.unwrap(),
                adapter.is_some(),
                max,
            )
        }));
    }
    for (t, p) in tasks.into_iter().zip(prompts) {
        let (ans, adapter, max) = t.await.unwrap();
        let r = ans.receipt.expect("a receipt");
        assert_eq!(r.completion_tokens as usize, ans.tokens.len());
        assert_eq!(
            ans.tokens,
            local_tokens(p, adapter.then_some("truecase"), max as usize),
            "prompt {p:?}"
        );
    }
}
