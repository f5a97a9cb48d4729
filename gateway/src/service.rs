//! The `tandem.v1.Gateway` service: Discover and Submit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tandem_attest::digest::Sha256Digest;
use tandem_proto::v1::gateway_server::Gateway;
use tandem_proto::v1::{self, submit_reply};
use tandem_proto::{ChunkRef, Limits, MAX_RECIPIENTS, SealedRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::events::{Event, EventSink};
use crate::fleet::{Fleet, FleetNode};
use crate::metrics::Metrics;

/// Messages buffered between a node's stream and the device's.
const RELAY_BUFFER: usize = 16;

/// The gateway service.
#[derive(Debug, Clone)]
pub struct GatewayService {
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    events: SinkDebug,
    discover_count: u32,
    first_message_timeout: std::time::Duration,
}

/// An [`EventSink`] that can sit in a `#[derive(Debug)]` struct.
#[derive(Clone)]
struct SinkDebug(EventSink);

impl std::fmt::Debug for SinkDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl GatewayService {
    /// A service over `fleet` returning at most `discover_count` candidates per Discover.
    pub fn new(
        fleet: Arc<Fleet>,
        metrics: Arc<Metrics>,
        events: EventSink,
        discover_count: u32,
        first_message_timeout: std::time::Duration,
    ) -> Self {
        Self {
            fleet,
            metrics,
            events: SinkDebug(events),
            discover_count,
            first_message_timeout,
        }
    }

    fn discover_inner(&self, req: &v1::DiscoverRequest) -> Result<v1::DiscoverResponse, Status> {
        let model: Sha256Digest = req.model_id.parse().map_err(|_| {
            Status::invalid_argument(
                "model_id must be a model digest `sha256:<64 hex>` (tandem_model digest of the \
                 model directory)",
            )
        })?;
        let adapter: Option<Sha256Digest> = if req.adapter_id.is_empty() {
            None
        } else {
            Some(req.adapter_id.parse().map_err(|_| {
                Status::invalid_argument(
                    "adapter_id must be empty (base model) or an adapter digest `sha256:<64 hex>`",
                )
            })?)
        };
        if req.count > MAX_RECIPIENTS as u32 {
            return Err(Status::invalid_argument(format!(
                "count {} is more than {MAX_RECIPIENTS} (the most recipients a request can have)",
                req.count
            )));
        }
        // 0 means "the gateway's default"; a device may ask for fewer than K, never more.
        let count = if req.count == 0 {
            self.discover_count
        } else {
            req.count.min(self.discover_count)
        };
        let chosen = self.fleet.choose(&model, adapter.as_ref(), count as usize);
        if chosen.is_empty() {
            return Err(Status::unavailable(format!(
                "no healthy node serves model {model}{}; {} of {} nodes are healthy{}",
                adapter
                    .map(|a| format!(" with adapter {a}"))
                    .unwrap_or_default(),
                self.fleet.healthy_count(),
                self.fleet.len(),
                self.fleet
                    .dns_problem()
                    .map(|f| format!(" (node discovery through DNS: {f})"))
                    .unwrap_or_default()
            )));
        }
        Ok(v1::DiscoverResponse {
            candidates: chosen
                .into_iter()
                .map(|c| v1::Candidate {
                    node_handle: c.handle,
                    attestation: Some(v1::AttestationBundle {
                        document: c.document.to_vec(),
                        served_digests: Vec::new(),
                    }),
                })
                .collect(),
        })
    }

    /// The nodes to try, in the device's order, known handles only, each once.
    fn route(&self, handles: &[String]) -> Result<Vec<Arc<FleetNode>>, Status> {
        if handles.is_empty() || handles.len() > MAX_RECIPIENTS {
            return Err(Status::invalid_argument(format!(
                "node_handles has {} entries; give 1..={MAX_RECIPIENTS} handles from Discover",
                handles.len()
            )));
        }
        let mut seen = HashSet::new();
        let nodes: Vec<Arc<FleetNode>> = handles
            .iter()
            .filter_map(|h| self.fleet.by_handle(h))
            .filter(|n| seen.insert(n.index))
            .collect();
        if nodes.is_empty() {
            return Err(Status::not_found(format!(
                "none of the {} node handles is known to this gateway (handles change when the \
                 gateway restarts, and a node DNS no longer names leaves); call Discover again",
                handles.len()
            )));
        }
        Ok(nodes)
    }
}

/// Whether a node's error before its first message is about the node (try the next one) rather
/// than about the request itself (every node would answer the same, so pass it to the device).
fn try_next(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange
    )
}

/// What the gateway relays of a node's refusal: its code and message, and the node's sealed
/// status (opaque bytes only the device can open) — never any other metadata.
fn relayed(code: Code, message: impl Into<String>, sealed: Option<&[u8]>) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(b) = sealed {
        metadata.insert_bin(
            tandem_proto::SEALED_STATUS_METADATA,
            tonic::metadata::MetadataValue::from_bytes(b),
        );
    }
    Status::with_metadata(code, message, metadata)
}

/// The sealed status a node attached to its refusal, if any.
fn sealed_status(status: &Status) -> Option<Vec<u8>> {
    status
        .metadata()
        .get_bin(tandem_proto::SEALED_STATUS_METADATA)
        .and_then(|v| v.to_bytes().ok())
        .map(|b| b.to_vec())
}

/// Sends the request to one node and waits for its first message.
async fn first_message(
    node: &FleetNode,
    sealed: Vec<u8>,
) -> Result<(v1::SubmitReply, Streaming<v1::SubmitReply>), Status> {
    let mut stream = node
        .client
        .clone()
        .submit(v1::SubmitRequest {
            sealed_request: sealed,
            node_handles: Vec::new(),
        })
        .await?
        .into_inner();
    match stream.message().await? {
        Some(m) => Ok((m, stream)),
        None => Err(Status::unavailable(
            "the node ended its stream without answering",
        )),
    }
}

fn is_final(m: &v1::SubmitReply) -> bool {
    match &m.part {
        Some(submit_reply::Part::Chunk(c)) => ChunkRef::parse(c).is_ok_and(|c| c.is_final),
        _ => false,
    }
}

/// Relays the rest of a node's stream; the device's stream always ends either after the
/// node's final chunk or with an error status, never silently short.
async fn relay(
    node_index: usize,
    first: v1::SubmitReply,
    mut stream: Streaming<v1::SubmitReply>,
    tx: mpsc::Sender<Result<v1::SubmitReply, Status>>,
    metrics: Arc<Metrics>,
    events: EventSink,
    start: Instant,
) {
    let mut saw_final = is_final(&first);
    let mut relayed = 1u64;
    if tx.send(Ok(first)).await.is_err() {
        metrics.submit_cancelled.inc();
        return;
    }
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                saw_final |= is_final(&m);
                if tx.send(Ok(m)).await.is_err() {
                    // The device went away; dropping the node's stream cancels its call.
                    metrics.submit_cancelled.inc();
                    return;
                }
                relayed += 1;
            }
            Ok(None) if saw_final => {
                metrics.submit_ok.inc();
                metrics.submit_seconds.observe(start.elapsed());
                return;
            }
            Ok(None) => {
                metrics.submit_midstream_failure.inc();
                events(&Event::MidstreamFailure {
                    node: node_index,
                    relayed,
                });
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "the node ended its stream after {relayed} messages without the final \
                         chunk; the response is incomplete, send the request again"
                    ))))
                    .await;
                return;
            }
            Err(status) => {
                metrics.submit_midstream_failure.inc();
                events(&Event::MidstreamFailure {
                    node: node_index,
                    relayed,
                });
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "the node failed after {relayed} messages (gRPC {:?}); the response is \
                         incomplete, send the request again",
                        status.code()
                    ))))
                    .await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn discover(
        &self,
        request: Request<v1::DiscoverRequest>,
    ) -> Result<Response<v1::DiscoverResponse>, Status> {
        let start = Instant::now();
        let result = self.discover_inner(request.get_ref());
        self.metrics.discover_seconds.observe(start.elapsed());
        match &result {
            Ok(_) => self.metrics.discover_ok.inc(),
            Err(_) => self.metrics.discover_err.inc(),
        }
        result.map(Response::new)
    }

    type SubmitStream = ReceiverStream<Result<v1::SubmitReply, Status>>;

    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        // 1. Only the public header and the framing are read (no cryptography: the gateway has
        //    no key). The error says which framing field is wrong, never any bytes.
        if let Err(e) = SealedRequest::parse(&req.sealed_request, &Limits::default()) {
            self.metrics.submit_rejected.inc();
            return Err(Status::invalid_argument(format!(
                "sealed_request is not a sealed request: {e}"
            )));
        }
        // 2. The device's handles, in its order.
        let nodes = match self.route(&req.node_handles) {
            Ok(n) => n,
            Err(s) => {
                self.metrics.submit_rejected.inc();
                return Err(s);
            }
        };
        // 3. First node that answers wins; a node failing before its first message is skipped.
        let tried = nodes.len();
        let mut last = Code::Unavailable;
        let mut last_sealed = None;
        for node in nodes {
            let attempt = tokio::time::timeout(
                self.first_message_timeout,
                first_message(&node, req.sealed_request.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(
                    "the node sent nothing within the first-message timeout",
                ))
            });
            match attempt {
                Ok((first, stream)) => {
                    self.metrics
                        .submit_first_message_seconds
                        .observe(start.elapsed());
                    let (tx, rx) = mpsc::channel(RELAY_BUFFER);
                    tokio::spawn(relay(
                        node.index,
                        first,
                        stream,
                        tx,
                        self.metrics.clone(),
                        self.events.0.clone(),
                        start,
                    ));
                    return Ok(Response::new(ReceiverStream::new(rx)));
                }
                Err(status) if try_next(status.code()) => {
                    if status.code() == Code::Unavailable {
                        node.mark_unreachable(status.code());
                    }
                    self.metrics.failovers.inc();
                    (self.events.0)(&Event::Failover {
                        node: node.index,
                        code: status.code(),
                    });
                    last = status.code();
                    last_sealed = sealed_status(&status);
                }
                Err(status) => {
                    // The node judged the request itself; every node would say the same.
                    self.metrics.submit_rejected.inc();
                    return Err(relayed(
                        status.code(),
                        status.message(),
                        sealed_status(&status).as_deref(),
                    ));
                }
            }
        }
        self.metrics.submit_no_node.inc();
        // The last node's sealed status (if it opened the request) goes to the device: it says
        // why that node refused, which only the device may read.
        Err(relayed(
            Code::Unavailable,
            format!(
                "none of the {tried} nodes answered (last failure: gRPC {last:?}); call Discover \
                 again and reseal to the new candidates"
            ),
            last_sealed.as_deref(),
        ))
    }
}
