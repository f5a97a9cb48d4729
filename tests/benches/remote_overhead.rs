//! Remote overhead of the device SDK on loopback: end-to-end latency of a remote request
//! (discover → verify (warm cache) → seal → gateway → node → sealed stream → receipt check;
//! once with a Discover per request, once reusing the verified candidates as the SDK does by
//! default)
//! minus the model time, estimated by the same request run locally with the same model files
//! on the same machine (the node runs the identical model stack).
//!
//! `cargo bench -p tandem-tests --bench remote_overhead` (starts `tandem-fleet dev --nodes 2`).
//! Prints p50/p99 of local and remote latency and of their difference, per token count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tandem_device::{Client, RouteChoice};
use tandem_tests::device::{greedy, run, start_fleet};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // As the `tandem` and `tandem-node` binaries do.
    // SAFETY: the first statement of `main`: no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        tandem_model::default_thread_count()
    };
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let fleet = start_fleet();
    let client = Client::new(fleet.config.clone()).unwrap();
    let mut every = fleet.config.clone();
    every.routing.discover_cache_ms = 0;
    let uncached = Client::new(every).unwrap();
    let rt = tandem_service::runtime(2).unwrap();
    println!("remote overhead, {iters} iterations per row (interleaved local/remote)");
    println!(
        "| new tokens | Discover | local p50 | remote p50 | overhead p50 | local p99 | remote p99 | overhead p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for tokens in [1u32, 16] {
        let mut local = Vec::new();
        let (mut remote, mut diff) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        // Warm-up: loads the local model, fills the verification caches, opens the channels.
        for (c, route) in [
            (&client, RouteChoice::Local),
            (&client, RouteChoice::Remote),
            (&uncached, RouteChoice::Remote),
        ] {
            rt.block_on(run(c, greedy("The king said", tokens, route)))
                .unwrap();
        }
        for _ in 0..iters {
            let t = Instant::now();
            let (_, lids, _, _) = rt
                .block_on(run(
                    &client,
                    greedy("The king said", tokens, RouteChoice::Local),
                ))
                .unwrap();
            let l = t.elapsed();
            local.push(l);
            for (i, c) in [&uncached, &client].into_iter().enumerate() {
                let t = Instant::now();
                let (_, rids, _, _) = rt
                    .block_on(run(c, greedy("The king said", tokens, RouteChoice::Remote)))
                    .unwrap();
                let r = t.elapsed();
                assert_eq!(lids, rids);
                remote[i].push(r);
                diff[i].push(r.saturating_sub(l));
            }
        }
        for (i, label) in ["every request", "cached (default)"]
            .into_iter()
            .enumerate()
        {
            println!(
                "| {tokens} | {label} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
                ms(pct(&mut local, 0.5)),
                ms(pct(&mut remote[i], 0.5)),
                ms(pct(&mut diff[i], 0.5)),
                ms(pct(&mut local, 0.99)),
                ms(pct(&mut remote[i], 0.99)),
                ms(pct(&mut diff[i], 0.99)),
            );
        }
    }
}
