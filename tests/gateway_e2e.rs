//! The gateway against real tonic `Node` servers on loopback sockets (in this process), each
//! with a real HPKE key and a real attestation bundle (signed release, fleet-certified software
//! evidence). The gateway runs in-process (`BoundGateway`) or as the `tandem-gateway`
//! process (the canary test, which reads every byte it prints).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_attest::attestation::{AttestationBundle, KeyConfigList};
use tandem_attest::digest::Sha256Digest;
use tandem_attest::evidence::{CertRole, EvidenceClaims, FleetCa, RootOfTrust, SoftwareRoot};
use tandem_attest::release::{Artifact, ArtifactKind, ReleaseManifest, ReleaseSigningKey};
use tandem_gateway::config::NodeEndpoint;
use tandem_gateway::{BoundGateway, Event, EventSink, GatewayConfig};
use tandem_proto::v1::gateway_client::GatewayClient;
use tandem_proto::v1::node_server::{Node, NodeServer};
use tandem_proto::v1::{self, submit_reply};
use tandem_proto::{
    Limits, NodeKey, ResponseContext, RoutingMetadata, SealOptions, SizeBucket, Suite,
    open_request, seal_request,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const MODEL: [u8; 32] = [7; 32];
const ADAPTER: [u8; 32] = [9; 32];
const OTHER_MODEL: [u8; 32] = [5; 32];
const CANARY: &str = "CANARY-7f3a9c21-do-not-log";

use tandem_tests::now;

fn id(d: [u8; 32]) -> String {
    Sha256Digest(d).to_string()
}

/// What a test node does with a Submit.
#[derive(Debug, Clone)]
enum Behavior {
    /// Opens the request; answers head, `deltas` chunks and a final chunk.
    Good { deltas: usize },
    /// Fails with this status before sending anything.
    FailBeforeHead(Code),
    /// Sends head and `deltas` chunks, then fails.
    FailAfter { deltas: usize },
    /// Sends head and `deltas` chunks, then ends the stream without a final chunk.
    EndWithoutFinal { deltas: usize },
    /// Accepts the call and never sends anything.
    Hang,
    /// Sends head, then a raw (non-sealed) chunk holding the canary, then fails with the canary
    /// in the status message.
    Canary,
}

struct TestNode {
    key: NodeKey,
    document: Vec<u8>,
    /// The directory digests it lists beside its bundle (the gateway's routing hint).
    served: Vec<Vec<u8>>,
    behavior: Behavior,
    submits: Arc<AtomicU64>,
    hung: Mutex<Vec<mpsc::Sender<Result<v1::SubmitReply, Status>>>>,
}

#[tonic::async_trait]
impl Node for TestNode {
    type SubmitStream = ReceiverStream<Result<v1::SubmitReply, Status>>;

    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        self.submits.fetch_add(1, Ordering::SeqCst);
        let sealed = request.into_inner().sealed_request;
        let (tx, rx) = mpsc::channel(64);
        let head = |tx: &mpsc::Sender<_>, h: Vec<u8>| {
            tx.try_send(Ok(v1::SubmitReply {
                part: Some(submit_reply::Part::Head(h)),
            }))
            .unwrap();
        };
        let chunk = |tx: &mpsc::Sender<_>, c: Vec<u8>| {
            tx.try_send(Ok(v1::SubmitReply {
                part: Some(submit_reply::Part::Chunk(c)),
            }))
            .unwrap();
        };
        if let Behavior::Hang = self.behavior {
            self.hung.lock().unwrap().push(tx);
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        if let Behavior::FailBeforeHead(code) = self.behavior {
            return Err(Status::new(code, format!("test node refuses {CANARY}")));
        }
        let opened = open_request(&self.key, &sealed, &Limits::default())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let (h, mut sealer) = opened.responder.start(Limits::default());
        head(&tx, h);
        match self.behavior {
            Behavior::Good { deltas } => {
                for i in 0..deltas {
                    chunk(&tx, sealer.seal(format!("piece {i}").as_bytes()).unwrap());
                }
                chunk(&tx, sealer.seal_final(b"receipt").unwrap());
            }
            Behavior::FailAfter { deltas } => {
                for i in 0..deltas {
                    chunk(&tx, sealer.seal(format!("piece {i}").as_bytes()).unwrap());
                }
                tx.try_send(Err(Status::internal("model failed"))).unwrap();
            }
            Behavior::EndWithoutFinal { deltas } => {
                for i in 0..deltas {
                    chunk(&tx, sealer.seal(format!("piece {i}").as_bytes()).unwrap());
                }
            }
            Behavior::Canary => {
                chunk(&tx, CANARY.as_bytes().to_vec());
                tx.try_send(Err(Status::internal(format!("failed on {CANARY}"))))
                    .unwrap();
            }
            Behavior::FailBeforeHead(_) | Behavior::Hang => unreachable!(),
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_attestation(
        &self,
        _: Request<v1::GetAttestationRequest>,
    ) -> Result<Response<v1::AttestationBundle>, Status> {
        Ok(Response::new(v1::AttestationBundle {
            document: self.document.clone(),
            served_digests: self.served.clone(),
        }))
    }

    async fn get_key_configs(
        &self,
        _: Request<v1::GetKeyConfigsRequest>,
    ) -> Result<Response<v1::KeyConfigs>, Status> {
        Err(Status::unimplemented("not needed by the gateway"))
    }
}

/// Shared signing material of the test fleet.
struct Fleet {
    ca: FleetCa,
    release_key: ReleaseSigningKey,
}

impl Fleet {
    fn new() -> Self {
        Self {
            ca: FleetCa::generate_with_rng(&mut rand::rngs::OsRng),
            release_key: ReleaseSigningKey::generate(),
        }
    }

    /// A node key and its attestation bundle: a signed release whose manifest lists `digests`
    /// as base-model / adapter artifacts, software evidence over the key configs.
    fn bundle(&self, key: &NodeKey, expiry: u64, model: [u8; 32], adapter: bool) -> Vec<u8> {
        let art = |kind, name: &str, d: [u8; 32]| Artifact {
            kind,
            name: name.into(),
            sha256: Sha256Digest(d),
            size: 1,
        };
        let mut arts = vec![
            art(ArtifactKind::NodeBinary, "tandem-node", [1; 32]),
            art(ArtifactKind::NodeConfig, "node.toml", [2; 32]),
            art(ArtifactKind::BaseModel, "m/model.safetensors", model),
            art(ArtifactKind::Tokenizer, "tokenizer.json", [3; 32]),
        ];
        if adapter {
            arts.push(art(ArtifactKind::Adapter, "m/adapters/a", ADAPTER));
        }
        let manifest = ReleaseManifest::new("test", arts).unwrap();
        let release_digest = manifest.digest();
        let release = self.release_key.sign(manifest);
        let kcl = KeyConfigList::from_configs(vec![key.config().clone()]).unwrap();
        let ident = tandem_attest::evidence::software::generate_identity_key_with_rng(
            &mut rand::rngs::OsRng,
        );
        let cert = self
            .ca
            .certify(
                CertRole::NodeIdentity,
                "test-node",
                ident.verifying_key(),
                0,
                u64::MAX / 2,
            )
            .unwrap();
        let mut root = SoftwareRoot::new(ident, cert).unwrap();
        let evidence = root
            .attest(&EvidenceClaims {
                key_config_digest: kcl.digest(),
                release_digest,
                key_expiry: expiry,
                nonce: None,
            })
            .unwrap();
        let doc = AttestationBundle::new(kcl, expiry, evidence, release).to_json();
        AttestationBundle::from_json(&doc).expect("the test bundle parses");
        doc
    }
}

/// A running test node.
struct Running {
    config: tandem_proto::KeyConfig,
    document: Vec<u8>,
    submits: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl Running {
    async fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

struct Spec {
    expiry: u64,
    model: [u8; 32],
    adapter: bool,
    behavior: Behavior,
}

fn good() -> Spec {
    Spec {
        expiry: now() + 3600,
        model: MODEL,
        adapter: false,
        behavior: Behavior::Good { deltas: 3 },
    }
}

fn with(behavior: Behavior) -> Spec {
    Spec { behavior, ..good() }
}

async fn start_node(fleet: &Fleet, key_id: u8, spec: Spec) -> Running {
    start_node_tls(fleet, key_id, spec, None).await
}

/// A test node, serving TLS with `tls` = (cert PEM, key PEM) if given.
async fn start_node_tls(
    fleet: &Fleet,
    key_id: u8,
    spec: Spec,
    tls: Option<(String, String)>,
) -> Running {
    let key = NodeKey::generate(key_id, &Suite::ALL).unwrap();
    let config = key.config().clone();
    let document = fleet.bundle(&key, spec.expiry, spec.model, spec.adapter);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let submits = Arc::new(AtomicU64::new(0));
    let mut served = vec![spec.model.to_vec()];
    if spec.adapter {
        served.push(ADAPTER.to_vec());
    }
    let svc = TestNode {
        key,
        document: document.clone(),
        served,
        behavior: spec.behavior,
        submits: submits.clone(),
        hung: Mutex::new(Vec::new()),
    };
    let (stop, rx) = oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .unwrap();
    }
    let task = tokio::spawn(async move {
        builder
            .add_service(NodeServer::new(svc))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
    });
    Running {
        config,
        document,
        submits,
        stop: Some(stop),
        task,
        addr,
    }
}

fn gateway_config(
    nodes: &[&Running],
    extra_urls: &[String],
    k: u32,
    interval: Duration,
) -> GatewayConfig {
    let mut urls: Vec<NodeEndpoint> = nodes
        .iter()
        .map(|n| NodeEndpoint {
            url: format!("http://{}", n.addr),
            tls: false,
        })
        .collect();
    urls.extend(extra_urls.iter().map(|u| NodeEndpoint {
        url: u.clone(),
        tls: false,
    }));
    GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        nodes: urls,
        discover_count: k,
        health_interval: interval,
        health_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(500),
        first_message_timeout: Duration::from_secs(65),
        tls: None,
        node_ca_pem: None,
        node_keepalive: tandem_gateway::config::Keepalive::default(),
        dns: None,
    }
}

/// Records every event the gateway logs.
fn recorder() -> (EventSink, Arc<Mutex<Vec<Event>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (
        Arc::new(move |e: &Event| l.lock().unwrap().push(e.clone())),
        log,
    )
}

struct Gw {
    client: GatewayClient<Channel>,
    metrics_url: String,
    metrics: Arc<tandem_gateway::Metrics>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start_gateway(config: GatewayConfig, events: EventSink) -> Gw {
    let gw = BoundGateway::bind(config, events).await.unwrap();
    let addr = gw.grpc_addr();
    let metrics_url = format!("http://{}/metrics", gw.metrics_addr());
    let metrics = gw.metrics();
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(gw.serve(async move {
        let _ = rx.await;
    }));
    let client = connect(addr).await;
    Gw {
        client,
        metrics_url,
        metrics,
        stop: Some(stop),
    }
}

async fn connect(addr: SocketAddr) -> GatewayClient<Channel> {
    for _ in 0..100 {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            return GatewayClient::new(c);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway at {addr} does not accept connections");
}

async fn discover(
    c: &mut GatewayClient<Channel>,
    model: [u8; 32],
    adapter: Option<[u8; 32]>,
    count: u32,
) -> Result<Vec<v1::Candidate>, Status> {
    c.discover(v1::DiscoverRequest {
        model_id: id(model),
        adapter_id: adapter.map(id).unwrap_or_default(),
        count,
    })
    .await
    .map(|r| r.into_inner().candidates)
}

/// handle -> index into `nodes`, by matching attestation documents.
fn handles(cands: &[v1::Candidate], nodes: &[&Running]) -> Vec<(String, usize)> {
    cands
        .iter()
        .map(|c| {
            let doc = &c.attestation.as_ref().unwrap().document;
            let i = nodes
                .iter()
                .position(|n| &n.document == doc)
                .expect("a candidate's bundle is one of the nodes' bundles, byte for byte");
            (c.node_handle.clone(), i)
        })
        .collect()
}

fn seal_to(nodes: &[&Running], body: &[u8]) -> (Vec<u8>, ResponseContext) {
    let configs: Vec<_> = nodes.iter().map(|n| n.config.clone()).collect();
    seal_request(
        &configs,
        &RoutingMetadata {
            model_id: id(MODEL),
            adapter_id: String::new(),
            size_bucket: SizeBucket::for_len(body.len()),
        },
        now(),
        body,
        &SealOptions::default(),
    )
    .unwrap()
}

/// Reads a whole Submit stream: the opened chunk plaintexts, and how it ended.
async fn read_stream(
    resp: Result<Response<tonic::Streaming<v1::SubmitReply>>, Status>,
    ctx: ResponseContext,
) -> (Vec<Vec<u8>>, Result<(), Status>, bool) {
    let mut stream = match resp {
        Ok(r) => r.into_inner(),
        Err(s) => return (Vec::new(), Err(s), false),
    };
    let mut ctx = Some(ctx);
    let mut opener = None;
    let mut out = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => match m.part.unwrap() {
                submit_reply::Part::Head(h) => {
                    opener = Some(
                        ctx.take()
                            .unwrap()
                            .open_head(&h, Limits::default())
                            .unwrap(),
                    );
                }
                submit_reply::Part::Chunk(c) => {
                    out.push(opener.as_mut().unwrap().open(&c).unwrap().data);
                }
            },
            Ok(None) => {
                let complete = opener.is_some_and(|o| o.finish().is_ok());
                return (out, Ok(()), complete);
            }
            Err(s) => return (out, Err(s), false),
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tandem_service::runtime(2).unwrap()
}

#[test]
fn discover_returns_k_distinct_healthy_nodes_at_random() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let mut nodes = Vec::new();
        for i in 0..4u8 {
            nodes.push(start_node(&fleet, i, good()).await);
        }
        // A node with an unparseable bundle, and an address where nothing listens.
        let bad_doc_node = {
            let key = NodeKey::generate(10, &Suite::ALL).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let svc = TestNode {
                key,
                document: b"not a bundle".to_vec(),
                served: vec![MODEL.to_vec()],
                behavior: Behavior::Good { deltas: 1 },
                submits: Arc::new(AtomicU64::new(0)),
                hung: Mutex::new(Vec::new()),
            };
            tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(NodeServer::new(svc))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await;
            });
            addr
        };
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let refs: Vec<&Running> = nodes.iter().collect();
        let (sink, log) = recorder();
        let cfg = gateway_config(
            &refs,
            &[format!("http://{bad_doc_node}"), format!("http://{dead}")],
            3,
            Duration::from_secs(60),
        );
        let mut gw = start_gateway(cfg, sink).await;
        let mut seen = HashSet::new();
        for _ in 0..30 {
            let c = discover(&mut gw.client, MODEL, None, 0).await.unwrap();
            assert_eq!(c.len(), 3, "K = 3 candidates");
            let h = handles(&c, &refs);
            let distinct: HashSet<_> = h.iter().map(|(_, i)| *i).collect();
            assert_eq!(distinct.len(), 3, "candidates are distinct nodes");
            seen.extend(distinct);
        }
        assert_eq!(
            seen.len(),
            4,
            "every healthy node is offered sometimes (random choice)"
        );
        // A device may ask for fewer, never more than K.
        assert_eq!(
            discover(&mut gw.client, MODEL, None, 1)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            discover(&mut gw.client, MODEL, None, 16)
                .await
                .unwrap()
                .len(),
            3
        );
        let e = discover(&mut gw.client, MODEL, None, 17).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // Bad ids are refused.
        let e = gw
            .client
            .discover(v1::DiscoverRequest {
                model_id: "tandem-base".into(),
                adapter_id: String::new(),
                count: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // The two bad nodes were logged as unhealthy, with their reasons.
        let log = log.lock().unwrap().clone();
        assert!(
            log.iter().any(|e| matches!(
                e,
                Event::NodeUnhealthy {
                    node: 4,
                    reason: tandem_gateway::events::Unhealthy::BadBundle
                }
            )),
            "{log:?}"
        );
        assert!(
            log.iter().any(|e| matches!(
                e,
                Event::NodeUnhealthy {
                    node: 5,
                    reason: tandem_gateway::events::Unhealthy::Unreachable(_)
                }
            )),
            "{log:?}"
        );
    });
}

#[test]
fn discover_offers_only_nodes_serving_the_model_and_adapter() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let a = start_node(
            &fleet,
            1,
            Spec {
                adapter: true,
                ..good()
            },
        )
        .await;
        let b = start_node(&fleet, 2, good()).await;
        let c = start_node(
            &fleet,
            3,
            Spec {
                model: OTHER_MODEL,
                ..good()
            },
        )
        .await;
        let refs = [&a, &b, &c];
        let (sink, _) = recorder();
        let mut gw = start_gateway(
            gateway_config(&refs, &[], 16, Duration::from_secs(60)),
            sink,
        )
        .await;
        let only = |cands: Vec<v1::Candidate>| -> HashSet<usize> {
            handles(&cands, &refs).into_iter().map(|(_, i)| i).collect()
        };
        assert_eq!(
            only(discover(&mut gw.client, MODEL, None, 0).await.unwrap()),
            HashSet::from([0, 1])
        );
        assert_eq!(
            only(
                discover(&mut gw.client, MODEL, Some(ADAPTER), 0)
                    .await
                    .unwrap()
            ),
            HashSet::from([0])
        );
        assert_eq!(
            only(
                discover(&mut gw.client, OTHER_MODEL, None, 0)
                    .await
                    .unwrap()
            ),
            HashSet::from([2])
        );
        // No node serves this model: nobody is offered, and the error says so.
        let e = discover(&mut gw.client, [0xee; 32], None, 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("no healthy node serves model"),
            "{e:?}"
        );
    });
}

#[test]
fn expired_attestations_are_dropped() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let live = start_node(&fleet, 1, good()).await;
        let expired = start_node(
            &fleet,
            2,
            Spec {
                expiry: now() - 1,
                ..good()
            },
        )
        .await;
        let expiring = start_node(
            &fleet,
            3,
            Spec {
                expiry: now() + 2,
                ..good()
            },
        )
        .await;
        let refs = [&live, &expired, &expiring];
        let (sink, log) = recorder();
        let mut gw =
            start_gateway(gateway_config(&refs, &[], 16, Duration::from_secs(1)), sink).await;
        let first: HashSet<usize> = handles(
            &discover(&mut gw.client, MODEL, None, 0).await.unwrap(),
            &refs,
        )
        .into_iter()
        .map(|(_, i)| i)
        .collect();
        assert!(!first.contains(&1), "an expired bundle is never offered");
        tokio::time::sleep(Duration::from_millis(3500)).await;
        for _ in 0..5 {
            let got: HashSet<usize> = handles(
                &discover(&mut gw.client, MODEL, None, 0).await.unwrap(),
                &refs,
            )
            .into_iter()
            .map(|(_, i)| i)
            .collect();
            assert_eq!(got, HashSet::from([0]), "only the live node remains");
        }
        let log = log.lock().unwrap().clone();
        assert!(
            log.iter().any(|e| matches!(
                e,
                Event::NodeUnhealthy {
                    node: 1,
                    reason: tandem_gateway::events::Unhealthy::Expired
                }
            )),
            "{log:?}"
        );
        assert!(
            log.iter().any(|e| matches!(
                e,
                Event::NodeUnhealthy {
                    node: 2,
                    reason: tandem_gateway::events::Unhealthy::Expired
                }
            )),
            "{log:?}"
        );
    });
}

#[test]
fn submit_fails_over_before_the_first_message() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let mut down = start_node(&fleet, 1, good()).await;
        let refusing = start_node(&fleet, 2, with(Behavior::FailBeforeHead(Code::Internal))).await;
        let ok = start_node(&fleet, 3, good()).await;
        let refs = [&down, &refusing, &ok];
        let (sink, log) = recorder();
        let mut gw =
            start_gateway(gateway_config(&refs, &[], 3, Duration::from_secs(60)), sink).await;
        let cands = discover(&mut gw.client, MODEL, None, 3).await.unwrap();
        let map: HashMap<usize, String> = handles(&cands, &refs)
            .into_iter()
            .map(|(h, i)| (i, h))
            .collect();
        assert_eq!(map.len(), 3);
        down.kill().await;
        let refs = [&down, &refusing, &ok];
        let (sealed, ctx) = seal_to(&refs, b"hello");
        let order = vec![map[&0].clone(), map[&1].clone(), map[&2].clone()];
        let resp = gw
            .client
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: order,
            })
            .await;
        let (chunks, end, complete) = read_stream(resp, ctx).await;
        end.unwrap();
        assert!(complete, "the answer is complete (final chunk opened)");
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[3], b"receipt");
        assert_eq!(refusing.submits.load(Ordering::SeqCst), 1);
        assert_eq!(ok.submits.load(Ordering::SeqCst), 1);
        assert_eq!(gw.metrics.failovers.get(), 2);
        assert_eq!(gw.metrics.submit_ok.get(), 1);
        let log = log.lock().unwrap().clone();
        assert!(
            log.iter()
                .any(|e| matches!(e, Event::Failover { node: 0, .. })),
            "{log:?}"
        );
        assert!(
            log.iter().any(|e| matches!(
                e,
                Event::Failover {
                    node: 1,
                    code: Code::Internal
                }
            )),
            "{log:?}"
        );

        // Unknown handles only: NOT_FOUND; an empty list: INVALID_ARGUMENT; garbage: INVALID_ARGUMENT.
        let (sealed, _) = seal_to(&refs, b"x");
        let e = gw
            .client
            .submit(v1::SubmitRequest {
                sealed_request: sealed.clone(),
                node_handles: vec!["n-nope".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = gw
            .client
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = gw
            .client
            .submit(v1::SubmitRequest {
                sealed_request: b"garbage".to_vec(),
                node_handles: vec![map[&2].clone()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    });
}

#[test]
fn request_errors_are_not_retried_and_no_node_is_unavailable() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let replay = start_node(
            &fleet,
            1,
            with(Behavior::FailBeforeHead(Code::AlreadyExists)),
        )
        .await;
        let other = start_node(&fleet, 2, good()).await;
        let refs = [&replay, &other];
        let (sink, _) = recorder();
        let mut gw =
            start_gateway(gateway_config(&refs, &[], 2, Duration::from_secs(60)), sink).await;
        let map: HashMap<usize, String> = handles(
            &discover(&mut gw.client, MODEL, None, 2).await.unwrap(),
            &refs,
        )
        .into_iter()
        .map(|(h, i)| (i, h))
        .collect();
        let (sealed, _) = seal_to(&refs, b"x");
        let e = gw
            .client
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: vec![map[&0].clone(), map[&1].clone()],
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::AlreadyExists,
            "the node's verdict on the request is passed on"
        );
        assert_eq!(
            other.submits.load(Ordering::SeqCst),
            0,
            "and not retried elsewhere"
        );
        // A node that has no wrapping for its key (FAILED_PRECONDITION) counts as a node
        // failure; with no other handle left, the device hears that no node answered.
        let (sealed, _) = seal_to(&[&replay], b"x");
        let e = gw
            .client
            .submit(v1::SubmitRequest {
                sealed_request: sealed.clone(),
                node_handles: vec![map[&1].clone()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("none of the 1 nodes answered"),
            "{}",
            e.message()
        );
    });
}

#[test]
fn midstream_failure_is_an_error_status_not_a_short_stream() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let failing = start_node(&fleet, 1, with(Behavior::FailAfter { deltas: 2 })).await;
        let cut = start_node(&fleet, 2, with(Behavior::EndWithoutFinal { deltas: 2 })).await;
        let good_node = start_node(&fleet, 3, good()).await;
        let refs = [&failing, &cut, &good_node];
        let (sink, log) = recorder();
        let mut gw =
            start_gateway(gateway_config(&refs, &[], 3, Duration::from_secs(60)), sink).await;
        let map: HashMap<usize, String> = handles(
            &discover(&mut gw.client, MODEL, None, 3).await.unwrap(),
            &refs,
        )
        .into_iter()
        .map(|(h, i)| (i, h))
        .collect();
        for bad in [0usize, 1] {
            let (sealed, ctx) = seal_to(&refs, b"hello");
            // The good node is listed next, but a failure after the first message must not
            // fail over (the device already has part of an answer).
            let resp = gw
                .client
                .submit(v1::SubmitRequest {
                    sealed_request: sealed,
                    node_handles: vec![map[&bad].clone(), map[&2].clone()],
                })
                .await;
            let (chunks, end, complete) = read_stream(resp, ctx).await;
            assert_eq!(chunks.len(), 2, "the two deltas arrived");
            let e = end.expect_err("the stream ends with an error status");
            assert_eq!(e.code(), Code::Unavailable);
            assert!(e.message().contains("incomplete"), "{}", e.message());
            assert!(!complete);
        }
        assert_eq!(good_node.submits.load(Ordering::SeqCst), 0);
        assert_eq!(gw.metrics.submit_midstream_failure.get(), 2);
        let text = reqwest::get(&gw.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("tandem_gateway_submit_total{outcome=\"midstream_failure\"} 2"),
            "{text}"
        );
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log.iter()
                .filter(|e| matches!(e, Event::MidstreamFailure { .. }))
                .count(),
            2,
            "{log:?}"
        );
    });
}

/// Every byte the gateway process prints, and what its metrics say, must hold no payload: not
/// the canary (in the prompt, in a raw chunk, in a node's error message), not any 12-byte
/// window of the sealed request, raw or hex or base64.
#[test]
fn the_gateway_process_never_logs_payload_bytes() {
    use base64::Engine as _;
    rt().block_on(async {
        let fleet = Fleet::new();
        let canary_node = start_node(&fleet, 1, with(Behavior::Canary)).await;
        let refusing = start_node(&fleet, 2, with(Behavior::FailBeforeHead(Code::Internal))).await;
        let good_node = start_node(&fleet, 3, good()).await;
        let refs = [&canary_node, &refusing, &good_node];
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nnodes = [{}]\nhealth_interval_secs = 1\n",
                refs.iter().map(|n| format!("\"http://{}\"", n.addr)).collect::<Vec<_>>().join(", ")
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(tandem_tests::bins::path("tandem-gateway"))
            .arg("--config")
            .arg(&cfg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = Vec::new();
        let mut byte = [0u8; 1];
        while !first.ends_with(b"\n") {
            assert_eq!(stdout.read(&mut byte).unwrap(), 1, "gateway exited early");
            first.push(byte[0]);
        }
        let line = String::from_utf8(first.clone()).unwrap();
        let addr: SocketAddr = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        let metrics: SocketAddr = line.split_whitespace().nth(5).unwrap().parse().unwrap();
        let mut client = connect(addr).await;
        let mut cands = Vec::new();
        for _ in 0..50 {
            cands = discover(&mut client, MODEL, None, 3).await.unwrap_or_default();
            if cands.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let map: HashMap<usize, String> = handles(&cands, &refs).into_iter().map(|(h, i)| (i, h)).collect();
        let mut sent = Vec::new();
        let prompt = format!("{CANARY} {CANARY} {CANARY}");
        for order in [vec![0usize], vec![1, 2], vec![2]] {
            let (sealed, ctx) = seal_to(&refs, prompt.as_bytes());
            sent.push(sealed.clone());
            let resp = client
                .submit(v1::SubmitRequest {
                    sealed_request: sealed,
                    node_handles: order.iter().map(|i| map[i].clone()).collect(),
                })
                .await;
            let _ = read_stream_raw(resp).await;
            let _ = ctx;
        }
        let metrics_text = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
        assert!(metrics_text.contains("tandem_gateway_submit_total{outcome=\"ok\"} 2"), "{metrics_text}");
        tandem_fleet::dev::send_signal(child.id(), tandem_fleet::dev::StopSignal::Term).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "gateway exits 0 on SIGTERM: {status}");
        let mut out = first;
        stdout.read_to_end(&mut out).unwrap();
        child.stderr.take().unwrap().read_to_end(&mut out).unwrap();
        out.extend_from_slice(metrics_text.as_bytes());
        let printed = String::from_utf8_lossy(&out).to_string();
        assert!(printed.contains("failover"), "the events were printed: {printed}");
        let hay = printed.to_lowercase();
        assert!(!printed.contains(CANARY), "canary leaked: {printed}");
        for sealed in &sent {
            for w in sealed.windows(12).step_by(3) {
                assert!(!out.windows(12).any(|o| o == w), "raw sealed bytes leaked");
                assert!(!hay.contains(&hex::encode(w)), "hex of sealed bytes leaked");
                let b = base64::engine::general_purpose::STANDARD.encode(w);
                assert!(!printed.contains(&b[..12]), "base64 of sealed bytes leaked");
            }
        }
    });
}

/// Reads a stream to its end without opening anything.
async fn read_stream_raw(
    resp: Result<Response<tonic::Streaming<v1::SubmitReply>>, Status>,
) -> Result<usize, Status> {
    let mut s = resp?.into_inner();
    let mut n = 0;
    while s.message().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[test]
fn a_node_that_sends_nothing_is_skipped_after_the_first_message_timeout() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let hung = start_node(&fleet, 1, with(Behavior::Hang)).await;
        let ok = start_node(&fleet, 2, good()).await;
        let refs = [&hung, &ok];
        let (sink, log) = recorder();
        let mut cfg = gateway_config(&refs, &[], 2, Duration::from_secs(60));
        cfg.first_message_timeout = Duration::from_millis(300);
        let mut gw = start_gateway(cfg, sink).await;
        let map: HashMap<usize, String> = handles(
            &discover(&mut gw.client, MODEL, None, 2).await.unwrap(),
            &refs,
        )
        .into_iter()
        .map(|(h, i)| (i, h))
        .collect();
        let (sealed, ctx) = seal_to(&refs, b"hello");
        let t = std::time::Instant::now();
        let resp = gw
            .client
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: vec![map[&0].clone(), map[&1].clone()],
            })
            .await;
        let (_, end, complete) = read_stream(resp, ctx).await;
        end.unwrap();
        assert!(complete);
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(hung.submits.load(Ordering::SeqCst), 1);
        let log = log.lock().unwrap().clone();
        assert!(
            log.iter().any(|e| matches!(
                e,
                Event::Failover {
                    node: 0,
                    code: Code::DeadlineExceeded
                }
            )),
            "{log:?}"
        );
    });
}

fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

#[test]
fn tls_on_both_hops() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let node_tls = self_signed();
        let gw_tls = self_signed();
        let node = start_node_tls(&fleet, 1, good(), Some(node_tls.clone())).await;
        let refs = [&node];
        let https = |n: &Running| NodeEndpoint {
            url: format!("https://localhost:{}", n.addr.port()),
            tls: true,
        };
        let mut cfg = gateway_config(&[], &[], 3, Duration::from_secs(60));
        cfg.nodes = vec![https(&node)];
        cfg.node_ca_pem = Some(node_tls.0.clone().into_bytes());
        cfg.tls = Some(tandem_gateway::config::TlsIdentity {
            cert_pem: gw_tls.0.clone().into_bytes(),
            key_pem: gw_tls.1.clone().into_bytes(),
        });
        let (sink, _) = recorder();
        let gw = BoundGateway::bind(cfg, sink).await.unwrap();
        let port = gw.grpc_addr().port();
        let (stop, rx) = oneshot::channel::<()>();
        tokio::spawn(gw.serve(async move {
            let _ = rx.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&gw_tls.0)),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = GatewayClient::new(channel);
        let cands = discover(&mut client, MODEL, None, 1).await.unwrap();
        assert_eq!(handles(&cands, &refs)[0].1, 0, "the TLS node is healthy");
        let (sealed, ctx) = seal_to(&refs, b"hello");
        let resp = client
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: vec![cands[0].node_handle.clone()],
            })
            .await;
        let (_, end, complete) = read_stream(resp, ctx).await;
        end.unwrap();
        assert!(complete);
        let _ = stop.send(());

        // A gateway that does not trust the node's certificate never offers it.
        let mut cfg = gateway_config(&[], &[], 3, Duration::from_secs(60));
        cfg.nodes = vec![https(&node)];
        cfg.node_ca_pem = Some(gw_tls.0.clone().into_bytes());
        let (sink, log) = recorder();
        let mut gw = start_gateway(cfg, sink).await;
        let e = discover(&mut gw.client, MODEL, None, 1).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(
            e.message().contains("0 of 1 nodes are healthy"),
            "{}",
            e.message()
        );
        let log = log.lock().unwrap().clone();
        assert!(
            log.iter()
                .any(|e| matches!(e, Event::NodeUnhealthy { node: 0, .. })),
            "{log:?}"
        );
    });
}

/// Every truncation and every single-byte flip of a sealed request is answered with a status or
/// a complete stream (a flip the framing parser cannot see reaches the node, which refuses it);
/// the gateway neither panics nor hangs, and stays up for the next request.
#[test]
fn truncated_and_flipped_requests_get_a_status() {
    rt().block_on(async {
        let fleet = Fleet::new();
        let node = start_node(&fleet, 1, good()).await;
        let refs = [&node];
        let (sink, _) = recorder();
        let mut gw =
            start_gateway(gateway_config(&refs, &[], 1, Duration::from_secs(60)), sink).await;
        let handle = discover(&mut gw.client, MODEL, None, 1).await.unwrap()[0]
            .node_handle
            .clone();
        let (sealed, _) = seal_to(&refs, b"hello");
        let mut variants: Vec<Vec<u8>> = (0..sealed.len()).map(|i| sealed[..i].to_vec()).collect();
        for i in 0..sealed.len() {
            let mut v = sealed.clone();
            v[i] ^= 0x41;
            variants.push(v);
        }
        let mut refused_by_gateway = 0;
        for v in variants {
            let resp = tokio::time::timeout(
                Duration::from_secs(10),
                gw.client.submit(v1::SubmitRequest {
                    sealed_request: v,
                    node_handles: vec![handle.clone()],
                }),
            )
            .await
            .expect("no hang");
            match resp {
                Err(s) if s.code() == Code::InvalidArgument => refused_by_gateway += 1,
                Err(s) => assert_ne!(s.code(), Code::Unknown, "{s:?}"),
                Ok(r) => {
                    // The node could not open it: it must not have answered with a stream.
                    let mut s = r.into_inner();
                    assert!(
                        s.message().await.is_err(),
                        "a tampered request was answered"
                    );
                }
            }
        }
        assert!(
            refused_by_gateway > sealed.len() / 2,
            "framing errors are caught at the gateway"
        );
        // Still serving.
        let (sealed, ctx) = seal_to(&refs, b"again");
        let resp = gw
            .client
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: vec![handle],
            })
            .await;
        let (_, end, complete) = read_stream(resp, ctx).await;
        end.unwrap();
        assert!(complete);
    });
}

#[test]
fn the_gateway_binary_refuses_a_bad_config_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nnodes = [\"http://127.0.0.1:1\"]\ndiscover_count = 40\n",
    )
    .unwrap();
    let out = std::process::Command::new(tandem_tests::bins::path("tandem-gateway"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("discover_count") && err.contains("1..=16"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing was bound or printed");
}
