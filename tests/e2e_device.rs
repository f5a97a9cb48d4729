//! End to end through the device SDK (`tandem_device::Client`) against a real local fleet
//! (`tandem-fleet dev`: log, signed release, two node processes, gateway) on loopback, with a
//! proxy gateway in between that records every byte it forwards and can tamper with
//! attestations or refuse service.
//!
//! One fleet serves every scenario (starting one takes most of the test's time); the scenarios
//! run in order and each says what it checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message as _;
use tandem_device::{
    Client, Error, Event, GenerateRequest, ModelChoice, RemoteError, Route, RouteChoice,
};
use tandem_proto::v1::gateway_client::GatewayClient;
use tandem_proto::v1::gateway_server::{Gateway, GatewayServer};
use tandem_proto::v1::{DiscoverRequest, DiscoverResponse, SubmitReply, SubmitRequest};
use tandem_tests::device::{greedy, run, start_fleet};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// What the proxy does with the traffic it forwards.
const PASS: u8 = 0;
const TAMPER_ATTESTATION: u8 = 1;
const REFUSE: u8 = 2;
const TAMPER_INCLUSION: u8 = 3;

/// A gateway in the middle: forwards to the real one, keeps every byte, counts Submits.
#[derive(Clone)]
struct Proxy {
    upstream: String,
    mode: Arc<AtomicU8>,
    recorded: Arc<Mutex<Vec<u8>>>,
    submits: Arc<AtomicUsize>,
    discovers: Arc<AtomicUsize>,
}

impl Proxy {
    async fn upstream(&self) -> Result<GatewayClient<tonic::transport::Channel>, Status> {
        let ch = tonic::transport::Endpoint::from_shared(self.upstream.clone())
            .map_err(|e| Status::internal(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(GatewayClient::new(ch))
    }
}

#[tonic::async_trait]
impl Gateway for Proxy {
    async fn discover(
        &self,
        req: Request<DiscoverRequest>,
    ) -> Result<Response<DiscoverResponse>, Status> {
        self.discovers.fetch_add(1, Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) == REFUSE {
            return Err(Status::unavailable("proxy refuses service"));
        }
        let req = req.into_inner();
        self.recorded.lock().unwrap().extend(req.encode_to_vec());
        let mut up = self.upstream().await?;
        let mut resp = up.discover(req).await?.into_inner();
        if self.mode.load(Ordering::SeqCst) == TAMPER_INCLUSION {
            // One hash more in each release's inclusion proof: the release is no longer shown
            // to be in the log (nothing else about the node changes).
            for c in &mut resp.candidates {
                let doc = &mut c.attestation.as_mut().unwrap().document;
                let mut v: serde_json::Value = serde_json::from_slice(doc).unwrap();
                v["releaseBundle"]["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
                    ["hashes"]
                    .as_array_mut()
                    .expect("inclusion proof hashes")
                    .push("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
                *doc = serde_json::to_vec(&v).unwrap();
            }
        }
        if self.mode.load(Ordering::SeqCst) == TAMPER_ATTESTATION {
            for c in &mut resp.candidates {
                let doc = &mut c.attestation.as_mut().unwrap().document;
                // Change one digit of the key expiry: the JSON still parses, the evidence no
                // longer covers it.
                let s = String::from_utf8(doc.clone()).unwrap();
                let at = s.find("\"keyExpiry\":").expect("keyExpiry field") + 12;
                let digit = doc[at..].iter().position(u8::is_ascii_digit).unwrap() + at;
                doc[digit] = if doc[digit] == b'9' {
                    b'8'
                } else {
                    doc[digit] + 1
                };
            }
        }
        self.recorded.lock().unwrap().extend(resp.encode_to_vec());
        Ok(Response::new(resp))
    }

    type SubmitStream = ReceiverStream<Result<SubmitReply, Status>>;

    async fn submit(
        &self,
        req: Request<SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        self.submits.fetch_add(1, Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) == REFUSE {
            return Err(Status::unavailable("proxy refuses service"));
        }
        let req = req.into_inner();
        self.recorded.lock().unwrap().extend(req.encode_to_vec());
        let mut up = self.upstream().await?;
        let mut stream = up.submit(req).await?.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let recorded = self.recorded.clone();
        tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                if let Ok(r) = &m {
                    recorded.lock().unwrap().extend(r.encode_to_vec());
                }
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn start_proxy(upstream: String) -> (Proxy, String) {
    let proxy = Proxy {
        upstream,
        mode: Arc::new(AtomicU8::new(PASS)),
        recorded: Arc::new(Mutex::new(Vec::new())),
        submits: Arc::new(AtomicUsize::new(0)),
        discovers: Arc::new(AtomicUsize::new(0)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = GatewayServer::new(proxy.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    (proxy, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_sdk_against_a_dev_fleet() {
    let fleet = start_fleet();
    assert_eq!(fleet.node_pids().len(), 2);
    let upstream = fleet.config.gateway.clone().unwrap();
    let (proxy, proxy_url) = start_proxy(upstream).await;
    let mut cfg = fleet.config.clone();
    cfg.gateway = Some(proxy_url);
    let client = Client::new(cfg.clone()).unwrap();

    // 1. Local and remote both answer, with identical greedy tokens for the same model and
    //    adapter; the remote receipt names the digests the device holds.
    for req in [
        greedy("The king said", 24, RouteChoice::Local),
        GenerateRequest {
            route: RouteChoice::Local,
            max_new_tokens: 24,
            ..GenerateRequest::for_adapter("proofread", "Thsi is a sentnce with typos.")
        },
    ] {
        let (lt, lids, ls, _) = run(&client, req.clone()).await.unwrap();
        assert_eq!(ls.route, Route::Local);
        assert!(ls.receipt.is_none());
        let remote_req = GenerateRequest {
            route: RouteChoice::Remote,
            ..req
        };
        let (rt, rids, rs, fb) = run(&client, remote_req).await.unwrap();
        assert!(fb.is_none());
        assert_eq!(rs.route, Route::Remote);
        assert!(
            rs.reason.contains("remote route requested"),
            "{}",
            rs.reason
        );
        assert_eq!(lids, rids, "greedy tokens differ between local and remote");
        assert_eq!(lt, rt);
        let r = rs.receipt.expect("remote runs carry a verified receipt");
        assert_eq!(r.model_digest.0, ls.model_digest.0.0);
        assert_eq!(
            r.adapter_digest.map(|d| d.0),
            ls.adapter_digest.map(|d| d.0.0)
        );
        assert_eq!(r.completion_tokens as usize, rids.len());
    }

    // 2. The server model runs only on nodes: auto routing sends it there and says why.
    let (_, ids, s, _) = run(
        &client,
        GenerateRequest {
            model: ModelChoice::Server,
            max_new_tokens: 8,
            ..GenerateRequest::new("The king said")
        },
    )
    .await
    .unwrap();
    assert_eq!(s.route, Route::Remote);
    assert!(
        s.reason.contains("server model runs only on nodes"),
        "{}",
        s.reason
    );
    assert!(!ids.is_empty());
    let server_pin = client.pin(ModelChoice::Server).unwrap();
    assert_eq!(s.receipt.unwrap().model_digest.0, server_pin.digest.0.0);

    // 3. A canary prompt never appears in any byte the gateway forwards.
    let canary = "canary-7f3a9c zebra quartz";
    let before = proxy.recorded.lock().unwrap().len();
    run(&client, greedy(canary, 8, RouteChoice::Remote))
        .await
        .unwrap();
    let recorded = proxy.recorded.lock().unwrap().clone();
    assert!(recorded.len() > before, "the proxy saw the request");
    assert!(
        !recorded
            .windows(canary.len())
            .any(|w| w == canary.as_bytes()),
        "the canary prompt crossed the gateway in clear"
    );
    assert!(!recorded.windows(6).any(|w| w == b"canary"));

    // 3b. Verified candidates are reused: requests right after one that discovered nodes
    //     for the same model ask the gateway nothing but Submit.
    let discovers = proxy.discovers.load(Ordering::SeqCst);
    for _ in 0..3 {
        run(&client, greedy(canary, 2, RouteChoice::Remote))
            .await
            .unwrap();
    }
    assert_eq!(proxy.discovers.load(Ordering::SeqCst), discovers);

    // 3c. When the gateway refuses the cached candidates' Submit, the client discards them and
    //     discovers again (here refused too: the error is Discover's).
    proxy.mode.store(REFUSE, Ordering::SeqCst);
    let e = run(&client, greedy(canary, 2, RouteChoice::Remote))
        .await
        .expect_err("refused");
    proxy.mode.store(PASS, Ordering::SeqCst);
    assert!(e.to_string().contains("Discover failed"), "{e}");
    assert_eq!(proxy.discovers.load(Ordering::SeqCst), discovers + 1);

    // 4. A tampered attestation is refused with a clear error and nothing is sent (a new
    //    client: this one would reuse the nodes it verified before the tampering).
    proxy.mode.store(TAMPER_ATTESTATION, Ordering::SeqCst);
    let submits = proxy.submits.load(Ordering::SeqCst);
    let fresh = Client::new(cfg.clone()).unwrap();
    let e = run(&fresh, greedy("hello", 4, RouteChoice::Remote))
        .await
        .expect_err("tampered attestation");
    assert!(
        matches!(e, Error::Remote(RemoteError::NoVerifiedNode(_))),
        "{e}"
    );
    assert!(e.to_string().contains("step"), "names the failed step: {e}");
    assert_eq!(
        proxy.submits.load(Ordering::SeqCst),
        submits,
        "nothing was sent"
    );
    proxy.mode.store(PASS, Ordering::SeqCst);

    // 4b. A node whose release is not shown to be in the log is refused at the inclusion step,
    //     with the release and checkpoint named, and nothing is sent.
    proxy.mode.store(TAMPER_INCLUSION, Ordering::SeqCst);
    let submits = proxy.submits.load(Ordering::SeqCst);
    let e = run(
        &Client::new(cfg.clone()).unwrap(),
        greedy("hello", 4, RouteChoice::Remote),
    )
    .await
    .expect_err("release not in the log");
    proxy.mode.store(PASS, Ordering::SeqCst);
    assert!(
        matches!(e, Error::Remote(RemoteError::NoVerifiedNode(_))),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("is not in the log at checkpoint") && msg.contains("release sha256:"),
        "{msg}"
    );
    assert_eq!(
        proxy.submits.load(Ordering::SeqCst),
        submits,
        "nothing was sent"
    );

    // 5. A node serving a different adapter (the device holds other adapter bytes): no
    //    candidate passes the required-digest step; nothing is sent.
    let other = tempfile::tempdir().unwrap();
    let dev_dir = client.pin(ModelChoice::Device).unwrap().dir.clone();
    // Every file of the model (a base adapter's sit in a subdirectory).
    for f in tandem_model::model_files(&dev_dir).unwrap() {
        let dest = other.path().join(f.strip_prefix(&dev_dir).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, dest).unwrap();
    }
    let ad = other.path().join("adapters/proofread");
    std::fs::create_dir_all(&ad).unwrap();
    std::fs::copy(
        dev_dir.join("adapters/proofread/adapter_model.safetensors"),
        ad.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut acfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dev_dir.join("adapters/proofread/adapter_config.json")).unwrap(),
    )
    .unwrap();
    acfg["lora_alpha"] = serde_json::json!(acfg["lora_alpha"].as_f64().unwrap() * 2.0);
    std::fs::write(ad.join("adapter_config.json"), acfg.to_string()).unwrap();
    let mut other_cfg = cfg.clone();
    other_cfg.models.device = Some(other.path().to_owned());
    let other_client = Client::new(other_cfg).unwrap();
    let submits = proxy.submits.load(Ordering::SeqCst);
    let e = run(
        &other_client,
        GenerateRequest {
            route: RouteChoice::Remote,
            max_new_tokens: 4,
            ..GenerateRequest::for_adapter("proofread", "helo")
        },
    )
    .await
    .expect_err("different adapter digest");
    assert!(matches!(e, Error::Remote(_)), "{e}");
    assert_eq!(
        proxy.submits.load(Ordering::SeqCst),
        submits,
        "nothing was sent: {e}"
    );

    // 5b. Expired keys: a device whose clock is past every node's key expiry refuses them all at
    //     the expiry step and sends nothing.
    /// Three days ahead of the system clock.
    #[derive(Debug)]
    struct Late;
    impl tandem_service::Clock for Late {
        fn now(&self) -> u64 {
            tandem_service::unix_now() + 3 * 24 * 3600
        }
    }
    let late = Client::with_clock(cfg.clone(), Arc::new(Late)).unwrap();
    let submits = proxy.submits.load(Ordering::SeqCst);
    let e = run(&late, greedy("hello", 4, RouteChoice::Remote))
        .await
        .expect_err("expired keys");
    assert!(
        matches!(e, Error::Remote(RemoteError::NoVerifiedNode(_))),
        "{e}"
    );
    assert!(
        e.to_string().contains("expir"),
        "names the expiry step: {e}"
    );
    assert_eq!(
        proxy.submits.load(Ordering::SeqCst),
        submits,
        "nothing was sent"
    );

    // 5c. Log checkpoints. The device saved the newest checkpoint it verified (trusted on first
    //     use). A device that already knows a larger checkpoint of the same log accepts the
    //     nodes' older one with a consistency proof built from the log's tiles; a device that
    //     knows a forked checkpoint (signed by the log's own key, same size as the nodes', other
    //     root) refuses every node at step 5, names the equivocation and sends nothing.
    let cp_file = cfg
        .checkpoint_file
        .clone()
        .expect("dev writes checkpoint_file");
    let saved = std::fs::read_to_string(&cp_file).expect("the device saved its checkpoint");
    let node_size: u64 = saved.lines().nth(1).unwrap().parse().unwrap();
    assert!(node_size >= 1, "{saved}");
    let log_url = cfg.log_url.clone().unwrap();
    let http = reqwest::Client::new();
    for i in 0..3 {
        let r = http
            .post(format!("{log_url}/add"))
            .body(format!("unrelated entry {i}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let grown = http
        .get(format!("{log_url}/checkpoint"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        grown.lines().nth(1),
        Some((node_size + 3).to_string().as_str())
    );
    let cp_dir = tempfile::tempdir().unwrap();
    let ahead_file = cp_dir.path().join("ahead");
    std::fs::write(&ahead_file, &grown).unwrap();
    let ahead = Client::new(tandem_device::Config {
        checkpoint_file: Some(ahead_file.clone()),
        ..cfg.clone()
    })
    .unwrap();
    let (_, _, s, _) = run(&ahead, greedy("hello", 4, RouteChoice::Remote))
        .await
        .expect("an older checkpoint consistent with the known one is accepted");
    assert_eq!(s.route, Route::Remote);
    assert_eq!(
        std::fs::read_to_string(&ahead_file).unwrap(),
        grown,
        "the newest known checkpoint stays the larger one"
    );
    let mut fork = tandem_attest::log::merkle::MemoryTree::new();
    for i in 0..node_size {
        fork.push(format!("forged entry {i}").as_bytes());
    }
    let forged = tandem_attest::log::note::sign_checkpoint(
        &tandem_attest::log::Checkpoint::new(
            tandem_fleet::dev::LOG_ORIGIN,
            node_size,
            fork.root(node_size).unwrap(),
        ),
        &fleet.log_signer,
    )
    .unwrap();
    let garbage = cp_dir.path().join("garbage");
    std::fs::write(&garbage, "not a checkpoint").unwrap();
    let e = Client::new(tandem_device::Config {
        checkpoint_file: Some(garbage),
        ..cfg.clone()
    })
    .expect_err("a saved checkpoint that does not verify is a config error");
    assert!(e.to_string().contains("checkpoint_file"), "{e}");
    let forked_file = cp_dir.path().join("forked");
    std::fs::write(&forked_file, &forged).unwrap();
    let forked = Client::new(tandem_device::Config {
        checkpoint_file: Some(forked_file),
        ..cfg.clone()
    })
    .unwrap();
    let submits = proxy.submits.load(Ordering::SeqCst);
    let e = run(&forked, greedy("hello", 4, RouteChoice::Remote))
        .await
        .expect_err("a forked log is refused");
    assert!(
        matches!(e, Error::Remote(RemoteError::NoVerifiedNode(_))),
        "{e}"
    );
    assert!(e.to_string().contains("EQUIVOCATION"), "{e}");
    assert_eq!(
        proxy.submits.load(Ordering::SeqCst),
        submits,
        "nothing was sent"
    );

    // 6. Fallback: with a tiny local budget auto routing goes remote; when the gateway refuses
    //    before the first chunk the request runs locally and the events say so.
    let mut small = cfg.clone();
    small.routing.local_token_budget = Some(4);
    let small_client = Client::new(small).unwrap();
    proxy.mode.store(REFUSE, Ordering::SeqCst);
    let (_, ids, s, fb) = run(&small_client, greedy("The king said", 8, RouteChoice::Auto))
        .await
        .unwrap();
    proxy.mode.store(PASS, Ordering::SeqCst);
    assert!(fb.unwrap().contains("proxy refuses service"));
    assert_eq!(s.route, Route::Local);
    assert!(
        s.reason.contains("remote failed before the first chunk"),
        "{}",
        s.reason
    );
    assert_eq!(ids.len(), 8);

    // 7. 200 remote requests, 8 at a time, zero errors.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    for i in 0..200u32 {
        let c = client.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let r = run(
                &c,
                greedy(&format!("Request {i} says"), 4, RouteChoice::Remote),
            )
            .await;
            drop(permit);
            r.map(|(_, _, s, _)| s.route)
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap(), Route::Remote);
        ok += 1;
    }
    assert_eq!(ok, 200);
    eprintln!(
        "200 remote requests, 8 concurrent: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 7b. Dropping the event stream cancels the remote call: the gateway counts a cancelled
    //     Submit (its call to the node is dropped with it).
    let metrics = fleet
        .run
        .metrics_url
        .clone()
        .expect("dev prints the metrics URL");
    let cancelled = || async {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with("tandem_gateway_submit_total{outcome=\"cancelled\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .expect("the cancelled-Submit counter")
    };
    let before = cancelled().await;
    let mut events = client.generate(greedy("The king said", 200, RouteChoice::Remote));
    let first = events.next().await.unwrap().unwrap();
    assert!(matches!(first, Event::Text { .. }), "{first:?}");
    drop(events);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while cancelled().await == before {
        assert!(
            Instant::now() < deadline,
            "the gateway never saw the dropped stream's Submit cancelled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // 8. Every node killed mid-stream: the device gets an error, never a short answer that
    //    looks complete.
    let mut events = client.generate(greedy("The king said", 200, RouteChoice::Remote));
    let first = events.next().await.unwrap().unwrap();
    assert!(matches!(first, Event::Text { .. }), "{first:?}");
    for pid in fleet.node_pids() {
        let _ = tandem_fleet::dev::send_signal(pid, tandem_fleet::dev::StopSignal::Kill);
    }
    let mut outcome = None;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(Event::Text { .. }) => {}
            Ok(Event::Done(s)) => {
                // Finished before the kill landed: then it must be complete and receipted.
                let r = s.receipt.expect("receipt");
                assert_eq!(r.completion_tokens, s.completion_tokens);
                outcome = Some("completed");
                break;
            }
            Ok(Event::Fallback { .. }) => panic!("no fallback after text was streamed"),
            Err(e) => {
                assert!(matches!(e, Error::Remote(_)), "{e}");
                outcome = Some("error");
                break;
            }
        }
    }
    assert!(
        outcome.is_some(),
        "the stream ended without Done or an error"
    );
}
