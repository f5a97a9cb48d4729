//! Load test of the local fleet (ignored by default; numbers go to BENCHMARKS.md):
//!
//! ```text
//! cargo test -p tandem-node --test fleet_load --no-run
//! target/debug/deps/fleet_load-<hash> --ignored --nocapture --test-threads 1
//! ```
//!
//! Starts `tandem-fleet dev --nodes 2`, verifies the candidates with the written policy, then
//! runs sealed requests for the embedded device model through the gateway at 1, 4 and 16
//! concurrent streams (the 16-stream run is `TANDEM_LOAD_REQUESTS`, default 1000 requests),
//! and measures the gateway's added latency by sending the same kind of request straight to a
//! node. Every request must succeed and end in a receipt. Node RSS is read before and after.
//!
//! Environment: `TANDEM_LOAD_REQUESTS` (default 1000), `TANDEM_LOAD_SMALL` (requests at 1 and 4
//! streams, default 100), `TANDEM_LOAD_TOKENS` (max_new_tokens, default 16).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use tandem_proto::v1::gateway_client::GatewayClient;
use tandem_proto::v1::node_client::NodeClient;
use tandem_proto::v1::{self, response_event, submit_reply};
use tandem_proto::{KeyConfig, Limits, RoutingMetadata, SealOptions, SizeBucket, seal_request};
use tonic::transport::Channel;

use tandem_tests::fleet::{DevRun, now};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What one request needs: the routing, the body, the recipients.
#[derive(Clone)]
struct Job {
    model_id: String,
    body: Vec<u8>,
    configs: Vec<KeyConfig>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    first_message: Duration,
    total: Duration,
    tokens: u32,
}

enum Target {
    Gateway(GatewayClient<Channel>, Vec<String>),
    Node(NodeClient<Channel>),
}

/// One sealed request, end to end: seal, submit, open every chunk, check the receipt.
async fn one(job: &Job, target: &mut Target) -> Result<Sample, String> {
    let start = Instant::now();
    let (sealed, ctx) = seal_request(
        &job.configs,
        &RoutingMetadata {
            model_id: job.model_id.clone(),
            adapter_id: String::new(),
            size_bucket: SizeBucket::for_len(job.body.len()),
        },
        now(),
        &job.body,
        &SealOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let mut stream = match target {
        Target::Gateway(c, handles) => c
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: handles.clone(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner(),
        Target::Node(c) => c
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: Vec::new(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner(),
    };
    let mut ctx = Some(ctx);
    let mut opener = None;
    let mut first_message = None;
    let mut tokens = None;
    while let Some(m) = stream.message().await.map_err(|e| e.to_string())? {
        first_message.get_or_insert_with(|| start.elapsed());
        match m.part.ok_or("empty message")? {
            submit_reply::Part::Head(h) => {
                opener = Some(
                    ctx.take()
                        .ok_or("two heads")?
                        .open_head(&h, Limits::default())
                        .map_err(|e| e.to_string())?,
                );
            }
            submit_reply::Part::Chunk(c) => {
                let opened = opener
                    .as_mut()
                    .ok_or("chunk before head")?
                    .open(&c)
                    .map_err(|e| e.to_string())?;
                let ev =
                    v1::ResponseEvent::decode(opened.data.as_slice()).map_err(|e| e.to_string())?;
                match ev.event {
                    Some(response_event::Event::Receipt(r)) => tokens = Some(r.completion_tokens),
                    Some(response_event::Event::Error(e)) => return Err(format!("{e:?}")),
                    _ => {}
                }
            }
        }
    }
    opener
        .ok_or("no head")?
        .finish()
        .map_err(|e| e.to_string())?;
    Ok(Sample {
        first_message: first_message.unwrap_or_default(),
        total: start.elapsed(),
        tokens: tokens.ok_or("no receipt")?,
    })
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

struct Run {
    concurrency: usize,
    requests: usize,
    errors: usize,
    wall: Duration,
    tokens: u64,
    samples: Vec<Sample>,
}

async fn run_level(
    gw: &GatewayClient<Channel>,
    job: &Job,
    handles: &[String],
    concurrency: usize,
    requests: usize,
) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, job, handles) = (next.clone(), job.clone(), handles.to_vec());
        let mut client = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return out;
                }
                // Rotate the handle order so requests spread over the nodes, as devices'
                // random candidate order does.
                let mut order = handles.clone();
                order.rotate_left(i % handles.len());
                let mut target = Target::Gateway(client.clone(), order);
                out.push(one(&job, &mut target).await);
                if let Target::Gateway(c, _) = target {
                    client = c;
                }
            }
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(s) => samples.push(s),
                Err(e) => {
                    if errors < 5 {
                        eprintln!("request failed: {e}");
                    }
                    errors += 1;
                }
            }
        }
    }
    Run {
        concurrency,
        requests,
        errors,
        wall: start.elapsed(),
        tokens: samples.iter().map(|s| u64::from(s.tokens)).sum(),
        samples,
    }
}

#[test]
#[ignore = "load test (minutes); run explicitly, see the module docs"]
fn fleet_load() {
    let big = env_usize("TANDEM_LOAD_REQUESTS", 1000);
    let small = env_usize("TANDEM_LOAD_SMALL", 100);
    let max_tokens = env_usize("TANDEM_LOAD_TOKENS", 16) as u32;
    let run = DevRun::start(2);
    let nodes = run.nodes.clone();
    let verifier = run.verifier();
    let device_dir = run.model_dir("device");
    let model_digest = tandem_model::model_digest(&device_dir).unwrap();
    let body = v1::InferenceRequest {
        model_digest: model_digest.0.0.to_vec(),
        adapter_digest: Vec::new(),
        prompt: "The king said to his son that the".into(),
        max_new_tokens: max_tokens,
        temperature: 0.0,
        top_p: 0.0,
        seed: 0,
    }
    .encode_to_vec();

    let rt = tandem_service::runtime(2).unwrap();
    rt.block_on(async {
        let gw = run.gateway().await;
        let cands = tandem_tests::fleet::candidates(&mut gw.clone(), &verifier, &device_dir).await;
        let handles: Vec<String> = cands.iter().map(|(h, _, _)| h.clone()).collect();
        let configs: Vec<_> = cands
            .iter()
            .map(|(_, v, _)| v.key_configs().entries()[0].clone())
            .collect();
        let job = Job {
            model_id: model_digest.to_string(),
            body,
            configs,
        };
        let rss_before: Vec<u64> = nodes.iter().map(|(p, _)| rss_kib(*p)).collect();
        // Warm-up (first requests load caches and connections).
        let warm = run_level(&gw, &job, &handles, 2, 8).await;
        assert_eq!(warm.errors, 0);

        println!("| streams | requests | errors | wall s | requests/s | tokens | tokens/s | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|---|---|---|---|");
        let mut per_level = Vec::new();
        for (c, n) in [(1usize, small), (4, small), (16, big)] {
            let mut r = run_level(&gw, &job, &handles, c, n).await;
            let mut lat: Vec<Duration> = r.samples.iter().map(|s| s.total).collect();
            let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
            let tps = r.tokens as f64 / r.wall.as_secs_f64();
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {} | {:.0} | {:.1} | {:.1} |",
                r.concurrency,
                r.requests,
                r.errors,
                r.wall.as_secs_f64(),
                r.samples.len() as f64 / r.wall.as_secs_f64(),
                r.tokens,
                tps,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
            assert_eq!(r.errors, 0, "every request succeeds");
            r.samples.clear();
            per_level.push((c, tps));
        }
        let one_stream = per_level[0].1;
        for (c, tps) in &per_level {
            println!("aggregate tokens/s at {c} streams = {:.2}x one stream", tps / one_stream);
        }

        // Gateway added latency: the same request at one stream, through the gateway and
        // straight to node 0 (sealed to node 0 only in both cases), interleaved.
        let node0 = NodeClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{}", nodes[0].1))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        // The handle of node 0: the candidate whose key config the node itself serves.
        let direct_job = {
            let kc = node0
                .clone()
                .get_attestation(v1::GetAttestationRequest {})
                .await
                .unwrap()
                .into_inner()
                .document;
            let i = cands
                .iter()
                .position(|(_, _, doc)| *doc == kc)
                .unwrap();
            (i, Job { configs: vec![job.configs[i].clone()], ..job.clone() })
        };
        let (i0, job0) = direct_job;
        let mut via_gw_first = Vec::new();
        let mut direct_first = Vec::new();
        let mut via_gw_total = Vec::new();
        let mut direct_total = Vec::new();
        for _ in 0..small {
            let mut t = Target::Gateway(gw.clone(), vec![handles[i0].clone()]);
            let s = one(&job0, &mut t).await.unwrap();
            via_gw_first.push(s.first_message);
            via_gw_total.push(s.total);
            let mut t = Target::Node(node0.clone());
            let s = one(&job0, &mut t).await.unwrap();
            direct_first.push(s.first_message);
            direct_total.push(s.total);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "time to first message: via gateway p50 {:.2} ms p99 {:.2} ms; direct p50 {:.2} ms p99 {:.2} ms; added p50 {:.2} ms p99 {:.2} ms",
            ms(pct(&mut via_gw_first, 0.5)),
            ms(pct(&mut via_gw_first, 0.99)),
            ms(pct(&mut direct_first, 0.5)),
            ms(pct(&mut direct_first, 0.99)),
            ms(pct(&mut via_gw_first, 0.5)) - ms(pct(&mut direct_first, 0.5)),
            ms(pct(&mut via_gw_first, 0.99)) - ms(pct(&mut direct_first, 0.99)),
        );
        println!(
            "whole request: via gateway p50 {:.2} ms p99 {:.2} ms; direct p50 {:.2} ms p99 {:.2} ms; added p50 {:.2} ms p99 {:.2} ms",
            ms(pct(&mut via_gw_total, 0.5)),
            ms(pct(&mut via_gw_total, 0.99)),
            ms(pct(&mut direct_total, 0.5)),
            ms(pct(&mut direct_total, 0.99)),
            ms(pct(&mut via_gw_total, 0.5)) - ms(pct(&mut direct_total, 0.5)),
            ms(pct(&mut via_gw_total, 0.99)) - ms(pct(&mut direct_total, 0.99)),
        );
        let rss_after: Vec<u64> = nodes.iter().map(|(p, _)| rss_kib(*p)).collect();
        for (i, (b, a)) in rss_before.iter().zip(&rss_after).enumerate() {
            println!("node {i} RSS before {:.1} MiB after {:.1} MiB", *b as f64 / 1024.0, *a as f64 / 1024.0);
        }
    });
}
