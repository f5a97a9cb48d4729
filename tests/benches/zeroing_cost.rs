//! What the zeroing allocator (`tandem_node::zeroing::ZeroOnFree`, the `tandem-node` binary's
//! global allocator) costs: generated tokens/s of one in-process node (real gRPC socket, real
//! HPKE, greedy, the embedded device or server model) with zeroing on and off, in interleaved rounds
//! (on/off order alternating) so machine load drifts hit both alike.
//!
//! The bench's global allocator forwards to `ZeroOnFree<System>` or to `System` by a switch;
//! both free into the same system allocator, so the switch can flip between rounds.
//!
//! Run (`RAYON_NUM_THREADS` fixes candle's threads; the bench sets 2 if unset):
//! `cargo test -p tandem-tests --bench zeroing_cost --no-run --locked`, then the printed binary
//! with `--bench [--model device|server] [--rounds 6] [--requests 8] [--tokens 64]
//! [--streams 1]`. Prints one JSON line
//! per round and mode, then a summary line (median tokens/s per mode and the ratio).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tandem_node::node::SystemClock;
use tandem_node::zeroing::ZeroOnFree;
use tandem_tests::node::*;

static ZEROING: AtomicBool = AtomicBool::new(true);

struct Switch;

// SAFETY: both arms are the system allocator (one zeroes first), so a block from either arm
// may be freed or reallocated by the other.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's block.
        unsafe {
            if ZEROING.load(Ordering::Relaxed) {
                ZeroOnFree(System).dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's block.
        unsafe {
            if ZEROING.load(Ordering::Relaxed) {
                ZeroOnFree(System).realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[global_allocator]
static ALLOC: Switch = Switch;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: the first statement of `main`: no other thread exists yet.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", "2")
        };
    }
    let rt = tandem_service::runtime(2).unwrap();
    rt.block_on(run());
}

async fn run() {
    let rounds = arg("--rounds", 6);
    let requests = arg("--requests", 8);
    let tokens = arg("--tokens", 64) as u32;
    let streams = arg("--streams", 1);
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = bin_dir.path().join("tandem-node");
    std::fs::write(&binary, b"stand-in").unwrap();
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1))
        .map_or("device", String::as_str);
    assert!(
        model == "device" || model == "server",
        "--model is device or server"
    );
    let dir = embedded_model(model);
    let f = fleet_serving(
        &binary,
        "[limits]\nqueue_depth = 64\nmax_concurrent = 4\n",
        true,
        "kind = \"software\"",
        |_, _| {},
        &dir,
    )
    .await;
    let addr = f.serve_in_process(&binary, Arc::new(SystemClock)).await;
    let c = connect(addr).await;
    let digest = tandem_model::model_digest(&dir).unwrap().0.0;
    let configs = key_configs(&mut c.clone()).await;
    let (s, ctx) = seal(&configs, digest, None, "warm up", 8, now());
    submit(&mut c.clone(), s, ctx).await.unwrap();
    let mut results: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for zeroing in order {
            ZEROING.store(zeroing, Ordering::SeqCst);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..streams {
                let mut c = c.clone();
                let configs = configs.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    for i in 0..requests {
                        let prompt = format!("once upon a time there was a king {w} {i}");
                        let (s, ctx) = seal(&configs, digest, None, &prompt, tokens, now());
                        let a = submit(&mut c, s, ctx).await.unwrap();
                        n += u64::from(a.receipt.unwrap().completion_tokens);
                    }
                    n
                }));
            }
            let mut n = 0u64;
            for t in tasks {
                n += t.await.unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            let tps = n as f64 / secs;
            results[usize::from(zeroing)].push(tps);
            println!(
                "{}",
                serde_json::json!({"model": model, "round": round, "zeroing": zeroing, "streams": streams,
                    "tokens": n, "seconds": secs, "tokens_per_s": tps})
            );
        }
    }
    ZEROING.store(true, Ordering::SeqCst);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let off = median(&mut results[0]);
    let on = median(&mut results[1]);
    println!(
        "{}",
        serde_json::json!({"summary": true, "model": model, "rounds": rounds,
            "median_tokens_per_s_zeroing_off": off,
            "median_tokens_per_s_zeroing_on": on, "on_over_off": on / off,
            "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default()})
    );
}
