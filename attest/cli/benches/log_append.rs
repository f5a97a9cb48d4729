//! Durable append throughput of `attest log serve`: a real server process on loopback, its
//! WAL, tiles and checkpoints fsynced before each answer, fed by concurrent HTTP writers.
//!
//! Run: `cargo bench -p tandem-attest --bench log_append` (or `--no-run`, then the binary with
//! `--bench`). One run measures, each against a fresh server and log directory, in this order:
//! - `http1`: `LOG_BENCH_WRITERS` (default 1000) concurrent writers, each POSTing one entry per
//!   request to `/add` over its own HTTP/1.1 connection;
//! - `http2`: as many concurrent single-entry writers sharing one HTTP/2 (h2c) connection;
//! - `batch`: `LOG_BENCH_BATCH_WRITERS` (default 16) concurrent writers, each POSTing
//!   `LOG_BENCH_BATCH` (default 100) entries per request to `/add-batch` over HTTP/1.1.
//!
//! `LOG_BENCH_CASES` (comma-separated) picks some of them; `LOG_BENCH_ENTRIES` (default 100000)
//! is the number of entries per case; `LOG_BENCH_HTTP_THREADS` sets the server's
//! `--http-threads`. Every answer carries inclusion proofs for its entries.
//!
//! `LOG_BENCH_STORE_BATCH=N` instead drives the server's durable store directly (the same
//! `LogStore::append_batch` the sequencer calls: WAL, tiles and checkpoint synced per batch)
//! with batches of `N` entries, to separate the cost of durable batching from HTTP and the
//! writers' CPU.
#![allow(clippy::unwrap_used)]

use tandem_attest::log::batch;
use tandem_log::store;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system, seconds) a process has used so far, from `/proc` (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11..13).map_or(0.0, |t| {
        t.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0 // USER_HZ
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn start_server(bin: &str, key: &Path, dir: &Path) -> (Child, String) {
    let mut child = Command::new(bin)
        .args(["log", "serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .arg("--key")
        .arg(key)
        .args(
            std::env::var("LOG_BENCH_HTTP_THREADS")
                .map(|t| vec!["--http-threads".to_owned(), t])
                .unwrap_or_default(),
        )
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
    (child, url)
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
    let writers = env("LOG_BENCH_WRITERS", 1000);
    let batch_writers = env("LOG_BENCH_BATCH_WRITERS", 16);
    let batch_size = env("LOG_BENCH_BATCH", 100);
    let cases = std::env::var("LOG_BENCH_CASES").unwrap_or_else(|_| "http1,http2,batch".into());
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("log.key");
    let bin = env!("CARGO_BIN_EXE_attest");
    let out = Command::new(bin)
        .args(["log", "keygen", "--origin", "bench.tandem/log", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    println!("load average before: {}", load_average());
    for case in cases.split(',') {
        let (w, per_request, http2) = match case {
            "http1" => (writers, 1, false),
            "http2" => (writers, 1, true),
            "batch" => (batch_writers, batch_size, false),
            other => panic!("unknown LOG_BENCH_CASES entry {other:?} (http1, http2, batch)"),
        };
        let (mut child, url) = start_server(bin, &key, &tmp.path().join(format!("log-{case}")));
        let server_cpu = cpu_seconds(child.id());
        let own_cpu = cpu_seconds(std::process::id());
        let (elapsed, done) = run_writers(&url, entries, w, per_request, http2);
        let server_cpu = cpu_seconds(child.id()) - server_cpu;
        let own_cpu = cpu_seconds(std::process::id()) - own_cpu;
        let _ = child.kill();
        let _ = child.wait();
        let secs = elapsed.as_secs_f64();
        println!(
            "log_append {case}: {done} entries by {w} concurrent writers, {per_request} per POST{}, \
             in {secs:.2} s = {:.0} entries/s (server CPU {:.0}% of a core, writers {:.0}%; \
             load average now {})",
            if http2 {
                ", one HTTP/2 connection"
            } else {
                ", HTTP/1.1"
            },
            done as f64 / secs,
            server_cpu * 100.0 / secs,
            own_cpu * 100.0 / secs,
            load_average()
        );
    }
}

/// `writers` concurrent tasks POST `entries` entries in total, `per_request` at a time (to
/// `/add` when 1, else to `/add-batch`); every request waits for its durable answer.
fn run_writers(
    url: &str,
    entries: u64,
    writers: u64,
    per_request: u64,
    http2: bool,
) -> (std::time::Duration, u64) {
    let rt = tandem_service::runtime(1).unwrap();
    rt.block_on(async {
        let mut builder = reqwest::Client::builder().pool_max_idle_per_host(writers as usize);
        if http2 {
            builder = builder.http2_prior_knowledge();
        }
        let client = builder.build().unwrap();
        let requests = entries / writers / per_request;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let c = client.clone();
            let u = if per_request == 1 {
                format!("{url}/add")
            } else {
                format!("{url}/add-batch")
            };
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                for k in 0..requests {
                    let mut batch_entries = Vec::with_capacity(per_request as usize);
                    for j in 0..per_request {
                        let n = k * per_request + j;
                        batch_entries.push(format!("{{\"release\":\"sha256:{w:08x}{n:056x}\"}}"));
                    }
                    let body = if per_request == 1 {
                        batch_entries.pop().unwrap().into_bytes()
                    } else {
                        batch::encode_batch(&batch_entries).unwrap()
                    };
                    let r = c.post(&u).body(body).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    let _ = r.bytes().await.unwrap();
                    ok += per_request;
                }
                ok
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap();
        }
        (start.elapsed(), done)
    })
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
