//! What the gateway learns from a node's refusal, and how many answers a device accepts, through
//! a real fleet (`tandem-fleet dev`: log, signed release, two node processes, gateway) on
//! loopback, with the device SDK behind a proxy gateway that records every byte the real
//! gateway relays (stream messages, status messages and status metadata).
//!
//! 1. A canary size (a prompt of exactly 1237 tokens, 233 new tokens; the model's context is
//!    256): the gateway's log lines and everything it relays name neither number, and the
//!    device's error does (the node sealed the detail to it).
//! 2. A request replayed to a second recipient: the proxy relays node 0's whole answer and
//!    then node 1's; the device refuses the second answer (and so the request).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message as _;
use tandem_device::{Client, Error, RemoteError, RouteChoice};
use tandem_proto::v1::gateway_client::GatewayClient;
use tandem_proto::v1::gateway_server::{Gateway, GatewayServer};
use tandem_proto::v1::{DiscoverRequest, DiscoverResponse, SubmitReply, SubmitRequest};
use tandem_tests::device::{greedy, run, start_fleet_logged};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const PROMPT_TOKENS: usize = 1237;
const NEW_TOKENS: u32 = 233;

/// A gateway in the middle: forwards to the real one and keeps every byte it relays back;
/// with `replay`, sends each Submit to the first handle and then to the second, and relays
/// both answers in one stream (what a hostile gateway can do with a request sealed to K nodes).
#[derive(Clone)]
struct Proxy {
    upstream: String,
    replay: Arc<AtomicBool>,
    relayed: Arc<Mutex<Vec<u8>>>,
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

    /// Records a status exactly as the device receives it: code, message, every metadata
    /// entry in its wire form and (binary entries) decoded.
    fn record_status(&self, s: &Status) {
        let mut r = self.relayed.lock().unwrap();
        r.extend(format!("{:?} ", s.code()).as_bytes());
        r.extend(s.message().as_bytes());
        r.extend(s.details());
        for (name, value) in s.metadata().clone().into_headers().iter() {
            r.extend(name.as_str().as_bytes());
            r.extend(value.as_bytes());
        }
        if let Some(v) = s.metadata().get_bin(tandem_proto::SEALED_STATUS_METADATA) {
            r.extend(v.to_bytes().unwrap());
        }
    }
}

#[tonic::async_trait]
impl Gateway for Proxy {
    async fn discover(
        &self,
        req: Request<DiscoverRequest>,
    ) -> Result<Response<DiscoverResponse>, Status> {
        let mut up = self.upstream().await?;
        up.discover(req.into_inner()).await
    }

    type SubmitStream = ReceiverStream<Result<SubmitReply, Status>>;

    async fn submit(
        &self,
        req: Request<SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        let req = req.into_inner();
        let mut up = self.upstream().await?;
        let attempts: Vec<SubmitRequest> = if self.replay.load(Ordering::SeqCst) {
            assert!(
                req.node_handles.len() >= 2,
                "the request is sealed to 2 nodes"
            );
            (0..2)
                .map(|i| SubmitRequest {
                    sealed_request: req.sealed_request.clone(),
                    node_handles: vec![req.node_handles[i].clone()],
                })
                .collect()
        } else {
            vec![req]
        };
        let mut streams = Vec::new();
        for a in attempts {
            match up.submit(a).await {
                Ok(s) => streams.push(s.into_inner()),
                Err(s) => {
                    self.record_status(&s);
                    return Err(s);
                }
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let proxy = self.clone();
        tokio::spawn(async move {
            for mut stream in streams {
                while let Some(m) = stream.next().await {
                    match &m {
                        Ok(r) => proxy.relayed.lock().unwrap().extend(r.encode_to_vec()),
                        Err(s) => proxy.record_status(s),
                    }
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn start_proxy(upstream: String) -> (Proxy, String) {
    let proxy = Proxy {
        upstream,
        replay: Arc::new(AtomicBool::new(false)),
        relayed: Arc::new(Mutex::new(Vec::new())),
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

/// Whether `n` appears in `bytes` as a whole decimal number (no digit on either side).
fn has_number(bytes: &[u8], n: impl ToString) -> bool {
    let n = n.to_string();
    let n = n.as_bytes();
    bytes.windows(n.len()).enumerate().any(|(i, w)| {
        w == n
            && (i == 0 || !bytes[i - 1].is_ascii_digit())
            && bytes.get(i + n.len()).is_none_or(|b| !b.is_ascii_digit())
    })
}

/// A prompt of exactly `tokens` tokens for the tokenizer in `model_dir`.
fn prompt_of(model_dir: &std::path::Path, tokens: usize) -> String {
    let path = model_dir.join("tokenizer.json");
    let tok = tandem_model::Tokenizer::from_bytes(&std::fs::read(&path).unwrap(), &path).unwrap();
    let mut words = tokens;
    for _ in 0..20 {
        let p = format!("Once{}", " upon".repeat(words));
        let n = tok.encode(&p).unwrap().len();
        if n == tokens {
            return p;
        }
        words = (words as i64 + tokens as i64 - n as i64).max(1) as usize;
    }
    panic!("no prompt of exactly {tokens} tokens found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_reach_the_device_sealed_and_a_second_answer_is_refused() {
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("fleet.stderr");
    let fleet = start_fleet_logged(Some(&log_path));
    let (proxy, proxy_url) = start_proxy(fleet.config.gateway.clone().unwrap()).await;
    let mut cfg = fleet.config.clone();
    cfg.gateway = Some(proxy_url);
    // Every request discovers afresh (no cached candidates to retry with).
    cfg.routing.discover_cache_ms = 0;
    let client = Client::new(cfg).unwrap();
    let prompt = prompt_of(&fleet.run.model_dir("device"), PROMPT_TOKENS);

    // 1. The canary size is refused by the node (1237 + 233 > 256, OUT_OF_RANGE).
    let e = run(&client, greedy(&prompt, NEW_TOKENS, RouteChoice::Remote))
        .await
        .expect_err("too long for the context");
    let msg = e.to_string();
    assert!(
        matches!(
            &e,
            Error::Remote(RemoteError::Refused { code, node_code: 11, .. }) if code == "OutOfRange"
        ),
        "{e:?}"
    );
    assert!(
        msg.contains(&format!(
            "{PROMPT_TOKENS} prompt tokens + {NEW_TOKENS} new tokens exceed the model's context of 256"
        )),
        "the device reports the real detail: {msg}"
    );
    let relayed = proxy.relayed.lock().unwrap().clone();
    assert!(
        relayed.windows(10).any(|w| w == b"OutOfRange"),
        "the proxy saw the refusal"
    );
    assert!(
        !has_number(&relayed, PROMPT_TOKENS) && !has_number(&relayed, NEW_TOKENS),
        "the gateway relayed a canary size in plaintext: {}",
        String::from_utf8_lossy(&relayed)
    );
    // Control: the check finds the numbers where they are.
    assert!(has_number(msg.as_bytes(), PROMPT_TOKENS) && has_number(msg.as_bytes(), NEW_TOKENS));

    // 2. Replay to a second recipient: two full answers in one stream; the second is refused.
    proxy.replay.store(true, Ordering::SeqCst);
    let e = run(&client, greedy("The king said", 6, RouteChoice::Remote))
        .await
        .expect_err("a second answer is refused");
    assert!(e.to_string().contains("a second answer to request"), "{e}");
    proxy.replay.store(false, Ordering::SeqCst);
    // Control: without the replay the same request is answered.
    run(&client, greedy("The king said", 6, RouteChoice::Remote))
        .await
        .expect("answered once");

    // The gateway's (and nodes') log lines name neither canary size.
    drop(client);
    drop(fleet);
    let log = std::fs::read(&log_path).unwrap();
    assert!(
        log.windows(16).any(|w| w == b"request_rejected"),
        "the node logged the refusal: {}",
        String::from_utf8_lossy(&log)
    );
    assert!(
        !has_number(&log, PROMPT_TOKENS) && !has_number(&log, NEW_TOKENS),
        "a canary size reached a log line: {}",
        String::from_utf8_lossy(&log)
    );
}
