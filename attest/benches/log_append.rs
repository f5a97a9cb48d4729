//! Durable append throughput of `attest log serve`: a real server process on loopback, its
//! WAL, tiles and checkpoints fsynced before each answer, fed by concurrent HTTP writers.
//!
//! Run: `cargo bench -p tandem-attest --bench log_append` (or `--no-run`, then the binary with
//! `--bench`). Settings: `LOG_BENCH_ENTRIES` (default 100000), `LOG_BENCH_WRITERS` (default 256).
//!
//! `LOG_BENCH_STORE_BATCH=N` instead drives the server's durable store directly (the same
//! `LogStore::append_batch` the sequencer calls: WAL, tiles and checkpoint synced per batch)
//! with batches of `N` entries, to separate the cost of durable batching from HTTP and the
//! writers' CPU.
#![allow(clippy::unwrap_used)]

use tandem_attest::log::store;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` runs benches as tests; this one is too long for that.
    }
    let entries = env("LOG_BENCH_ENTRIES", 100_000);
    let store_batch = env("LOG_BENCH_STORE_BATCH", 0);
    if store_batch > 0 {
        return bench_store(entries, store_batch as usize);
    }
    let writers = env("LOG_BENCH_WRITERS", 256);
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("log.key");
    let bin = env!("CARGO_BIN_EXE_attest");
    let out = Command::new(bin)
        .args(["log", "keygen", "--origin", "bench.tandem/log", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut child = Command::new(bin)
        .args(["log", "serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(tmp.path().join("log"))
        .arg("--key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (elapsed, done) = rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(writers as usize)
            .build()
            .unwrap();
        let per_writer = entries / writers;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let c = client.clone();
            let u = format!("{url}/add");
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                for k in 0..per_writer {
                    let body = format!("{{\"release\":\"sha256:{w:08x}{k:056x}\"}}");
                    let r = c.post(&u).body(body).send().await.unwrap();
                    assert!(r.status().is_success());
                    let _ = r.bytes().await.unwrap();
                    ok += 1;
                }
                ok
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap();
        }
        (start.elapsed(), done)
    });
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "log_append: {done} entries by {writers} concurrent HTTP writers in {:.2} s = {:.0} entries/s \
         (each answered after WAL + tiles + checkpoint fsync, with its inclusion proof)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
}

fn bench_store(entries: u64, batch: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, _) = tandem_attest::log::note::NoteSigner::generate_with_rng(
        &mut rand::rngs::OsRng,
        "bench.tandem/log",
    )
    .unwrap();
    let (mut store, _) = store::LogStore::open(&tmp.path().join("log"), signer).unwrap();
    let all: Vec<Vec<u8>> = (0..entries)
        .map(|k| format!("{{\"release\":\"sha256:{k:064x}\"}}").into_bytes())
        .collect();
    let start = Instant::now();
    for chunk in all.chunks(batch) {
        store.append_batch(chunk).unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(store.published_size(), entries);
    println!(
        "log_append (store): {entries} entries in batches of {batch} in {:.2} s = {:.0} entries/s \
         ({:.2} ms per durable batch: WAL + tiles + checkpoint synced)",
        elapsed.as_secs_f64(),
        entries as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / entries.div_ceil(batch as u64) as f64
    );
}
