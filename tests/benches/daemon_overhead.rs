//! What the device daemon (`tandem serve`, a real child process) adds over the in-process SDK
//! on the local route: time to first token and time per token, p50/p99, for the same greedy
//! request through
//! - the SDK in this process (`tandem_device::Client`),
//! - the daemon's gRPC API over its Unix socket (`tandem_device::daemon_client`),
//! - the daemon's OpenAI-compatible API over loopback TCP (`POST /v1/completions`, SSE),
//!
//! interleaved request by request, with the same model files and thread count on both sides.
//! Then throughput: 16 concurrent gRPC clients against the daemon (its default one local slot
//! and queue), aggregate tokens/s and request latency, beside one client at a time.
//!
//! `cargo bench -p tandem-tests --bench daemon_overhead`
//! env: ITERS (default 50), TOKENS (default 32), THREADS (RAYON_NUM_THREADS of both sides,
//! default 1), MODEL (a model directory or `.gguf` for the device model; default the embedded
//! toy model), CLIENTS (default 16).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tandem_device::daemon_client::{DaemonClient, DaemonEvent, DeviceRoute, GenerateOptions};
use tandem_device::{Client, Config, Event, GenerateRequest, RouteChoice};
use tandem_tests::daemon::DaemonRun;
use tandem_tests::fleet::models_dir;

const PROMPT: &str = "The capital of France is";

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time to first text, time per token after it, tokens.
#[derive(Default)]
struct Timing {
    ttft: Vec<Duration>,
    per_token: Vec<Duration>,
    tokens: u64,
}

impl Timing {
    fn push(&mut self, start: Instant, first: Instant, end: Instant, tokens: u32) {
        self.tokens += u64::from(tokens);
        self.ttft.push(first - start);
        if tokens > 1 {
            self.per_token.push((end - first) / (tokens - 1));
        }
    }
}

async fn in_process(client: &Client, tokens: u32, t: &mut Timing) -> String {
    let start = Instant::now();
    let mut events = client.generate(GenerateRequest {
        max_new_tokens: tokens,
        route: RouteChoice::Local,
        ..GenerateRequest::new(PROMPT)
    });
    let (mut first, mut text) = (None, String::new());
    while let Some(ev) = events.next().await {
        match ev.unwrap() {
            Event::Text { text: s, .. } => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&s);
            }
            Event::Fallback { .. } => {}
            Event::Done(s) => {
                t.push(start, first.unwrap(), Instant::now(), s.completion_tokens);
                return text;
            }
        }
    }
    panic!("no summary")
}

fn options(tokens: u32) -> GenerateOptions {
    GenerateOptions {
        max_tokens: tokens,
        route: DeviceRoute::Local as i32,
        ..GenerateOptions::default()
    }
}

async fn grpc(c: &mut DaemonClient, tokens: u32, t: &mut Timing) -> String {
    let start = Instant::now();
    let mut s = c.generate(PROMPT, options(tokens)).await.unwrap();
    let (mut first, mut text) = (None, String::new());
    while let Some(ev) = s.next().await.unwrap() {
        match ev {
            DaemonEvent::Text(s) => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&s);
            }
            DaemonEvent::Fallback(_) => {}
            DaemonEvent::Done(s) => {
                t.push(start, first.unwrap(), Instant::now(), s.completion_tokens);
                return text;
            }
        }
    }
    panic!("no summary")
}

async fn openai(http: &reqwest::Client, url: &str, tokens: u32, t: &mut Timing) -> String {
    let start = Instant::now();
    let resp = http
        .post(format!("{url}/v1/completions"))
        .header("x-tandem-route", "local")
        .json(&serde_json::json!({
            "model": "device", "prompt": PROMPT, "max_tokens": tokens,
            "temperature": 0, "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut resp = resp;
    let (mut first, mut text, mut buf, mut completion) = (None, String::new(), Vec::new(), 0);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let ev: Vec<u8> = buf.drain(..i + 2).collect();
            let ev = std::str::from_utf8(&ev).unwrap().trim();
            let Some(data) = ev.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                t.push(start, first.unwrap(), Instant::now(), completion);
                return text;
            }
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            let delta = v["choices"][0]["text"].as_str().unwrap_or_default();
            if !delta.is_empty() {
                first.get_or_insert_with(Instant::now);
                text.push_str(delta);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                completion = n as u32;
            }
        }
    }
    panic!("no [DONE]")
}

fn main() {
    let threads: usize = env_or("THREADS", 1);
    // SAFETY: the first statement of `main`: no other thread exists yet. The daemon child
    // inherits the same thread count.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string())
    };
    let iters: usize = env_or("ITERS", 50);
    let tokens: u32 = env_or("TOKENS", 32);
    let clients: usize = env_or("CLIENTS", 16);
    let model = std::env::var("MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| models_dir().join("device"));

    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("device.json");
    let config = serde_json::json!({ "models": { "device": model } });
    std::fs::write(&config_file, serde_json::to_vec(&config).unwrap()).unwrap();
    let daemon = DaemonRun::start(&[
        "--config",
        config_file.to_str().unwrap(),
        "--queue",
        &(clients * 2).to_string(),
    ]);
    let sdk =
        Client::new(Config::from_json(&serde_json::to_vec(&config).unwrap()).unwrap()).unwrap();
    let rt = tandem_service::runtime(2).unwrap();
    let http = reqwest::Client::new();
    let url = daemon.url();
    let mut c = rt
        .block_on(DaemonClient::connect_unix(&daemon.socket))
        .unwrap();

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "daemon overhead: model {}, {tokens} new tokens, {iters} interleaved rounds, RAYON_NUM_THREADS={threads}, {} cores, load average at start: {}",
        model.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (mut a, mut b, mut h) = (Timing::default(), Timing::default(), Timing::default());
    rt.block_on(async {
        // Warm-up: loads the model on both sides, opens the connections.
        let mut w = Timing::default();
        let want = in_process(&sdk, tokens, &mut w).await;
        assert_eq!(grpc(&mut c, tokens, &mut w).await, want);
        assert_eq!(openai(&http, &url, tokens, &mut w).await, want);
        for _ in 0..iters {
            in_process(&sdk, tokens, &mut a).await;
            grpc(&mut c, tokens, &mut b).await;
            openai(&http, &url, tokens, &mut h).await;
        }
    });
    println!("| path | TTFT p50 | TTFT p99 | per token p50 | per token p99 |");
    println!("|---|---|---|---|---|");
    for (label, t) in [
        ("in-process SDK", &mut a),
        ("daemon gRPC (Unix socket)", &mut b),
        ("daemon OpenAI SSE (TCP)", &mut h),
    ] {
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {:.3} ms | {:.3} ms |",
            ms(pct(&mut t.ttft, 0.5)),
            ms(pct(&mut t.ttft, 0.99)),
            ms(pct(&mut t.per_token, 0.5)),
            ms(pct(&mut t.per_token, 0.99)),
        );
    }
    let (ta50, tb50, th50) = (
        pct(&mut a.ttft, 0.5),
        pct(&mut b.ttft, 0.5),
        pct(&mut h.ttft, 0.5),
    );
    println!(
        "added TTFT p50: gRPC {:+.2} ms, OpenAI {:+.2} ms; added per token p50: gRPC {:+.3} ms, OpenAI {:+.3} ms",
        ms(tb50) - ms(ta50),
        ms(th50) - ms(ta50),
        ms(pct(&mut b.per_token, 0.5)) - ms(pct(&mut a.per_token, 0.5)),
        ms(pct(&mut h.per_token, 0.5)) - ms(pct(&mut a.per_token, 0.5)),
    );

    // Throughput: one client at a time, then `clients` at once, against the daemon.
    let rounds = (iters / 5).max(2);
    let (one, many) = rt.block_on(async {
        let mut t = Timing::default();
        let start = Instant::now();
        for _ in 0..rounds * 2 {
            grpc(&mut c, tokens, &mut t).await;
        }
        let one = t.tokens as f64 / start.elapsed().as_secs_f64();

        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut t) = (Vec::new(), Timing::default());
                for _ in 0..rounds {
                    let s = Instant::now();
                    grpc(&mut c, tokens, &mut t).await;
                    lat.push(s.elapsed());
                }
                (lat, t.tokens)
            }));
        }
        let (mut lat, mut toks) = (Vec::new(), 0u64);
        for t in tasks {
            let (l, n) = t.await.unwrap();
            lat.extend(l);
            toks += n;
        }
        let secs = start.elapsed().as_secs_f64();
        let agg = toks as f64 / secs;
        (one, (agg, lat))
    });
    let (agg, mut lat) = many;
    println!("| clients | aggregate tokens/s | request p50 | request p99 |");
    println!("|---|---|---|---|");
    println!("| 1 | {one:.1} | | |");
    println!(
        "| {clients} | {agg:.1} | {:.1} ms | {:.1} ms |",
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99))
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
