//! Node throughput on loopback: requests/s and aggregate generated tokens/s at 1, 4 and 16
//! concurrent streams, one in-process node (real gRPC socket, real HPKE, greedy, 32 new tokens
//! per request; no early stop: the prompt is chosen so generation runs to the limit or the count
//! is what the receipts say), serving the embedded device model (palletized, 4 layers) and then
//! the embedded server model (f16, 16 layers).
//!
//! Run: `cargo bench -p tandem-tests --bench serve_throughput --no-run`, then the printed binary
//! with `--bench` from `node/`. Options: `--model device|server|both` (default both);
//! `--streams 1,4,16` (the concurrency levels); `--batched-only` (skip the unbatched
//! configuration); `--no-thread-env` (leave `RAYON_NUM_THREADS` unset, see
//! `tandem_model::default_thread_count`). Prints one JSON line per model, mode and level.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use tandem_node::node::SystemClock;
use tandem_tests::node::*;

const NEW_TOKENS: u32 = 32;

fn main() {
    // As the `tandem-node` binary does; `--no-thread-env` leaves RAYON_NUM_THREADS unset to
    // measure what that costs (candle then re-reads /proc/cpuinfo on every matmul).
    if !std::env::args().any(|a| a == "--no-thread-env") {
        // SAFETY: the first statement of `main`: no other thread exists yet.
        #[allow(unsafe_code)]
        unsafe {
            tandem_model::default_thread_count()
        };
    }
    let rt = tandem_service::runtime(2).unwrap();
    rt.block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1))
        .map_or("both", String::as_str);
    let models: &[&str] = match model {
        "both" => &["device", "server"],
        "device" => &["device"],
        "server" => &["server"],
        other => panic!("--model must be device, server or both, not {other}"),
    };
    let only_batched = args.iter().any(|a| a == "--batched-only");
    let levels: Vec<usize> = args
        .iter()
        .position(|a| a == "--streams")
        .and_then(|i| args.get(i + 1))
        .map_or(vec![1, 4, 16], |s| {
            s.split(',').filter_map(|t| t.parse().ok()).collect()
        });
    for &model in models {
        // Unbatched: up to 16 generations at once, each its own forward pass.
        if !only_batched {
            run_config(
                model,
                "[limits]\nqueue_depth = 256\nmax_concurrent = 16\n",
                "unbatched",
                &levels,
            )
            .await;
        }
        // Batched: one worker decoding up to 16 sequences per forward pass.
        run_config(
            model,
            "[limits]\nqueue_depth = 256\nmax_concurrent = 1\nmax_batch = 16\n",
            "batched",
            &levels,
        )
        .await;
    }
}

async fn run_config(model: &str, config: &str, mode: &str, levels: &[usize]) {
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = bin_dir.path().join("tandem-node");
    std::fs::write(&binary, b"stand-in").unwrap();
    let dir = embedded_model(model);
    let f = fleet_serving(
        &binary,
        config,
        true,
        "kind = \"software\"",
        |_, _| {},
        &dir,
    )
    .await;
    let addr = f.serve_in_process(&binary, Arc::new(SystemClock)).await;
    let mut c = connect(addr).await;
    let digest = tandem_model::model_digest(&dir).unwrap().0.0;
    let configs = key_configs(&mut c).await;
    // Warm-up.
    let (s, ctx) = seal(&configs, digest, None, "warm up", 8, now());
    submit(&mut c, s, ctx).await.unwrap();
    for &conc in levels {
        let total = (conc * 4).max(8);
        let start = Instant::now();
        let mut tasks = Vec::new();
        let per = total / conc;
        for w in 0..conc {
            let mut c = c.clone();
            let configs = configs.clone();
            tasks.push(tokio::spawn(async move {
                let mut tokens = 0u64;
                for i in 0..per {
                    let prompt = format!("once upon a time {w} {i}");
                    let (s, ctx) = seal(&configs, digest, None, &prompt, NEW_TOKENS, now());
                    let a = submit(&mut c, s, ctx).await.unwrap();
                    tokens += u64::from(a.receipt.unwrap().completion_tokens);
                }
                tokens
            }));
        }
        let mut tokens = 0u64;
        for t in tasks {
            tokens += t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let n = (per * conc) as f64;
        println!(
            "{}",
            serde_json::json!({
                "model": model,
                "mode": mode,
                "concurrency": conc,
                "requests": per * conc,
                "seconds": secs,
                "requests_per_s": n / secs,
                "tokens": tokens,
                "tokens_per_s": tokens as f64 / secs,
            })
        );
    }
}
