//! The remote path: discover → verify every candidate → seal to the verified ones → submit →
//! open the stream → check the receipt against what was verified.
//!
//! Sealing takes [`VerifiedNode`] values only (they can be made only by tandem-attest's
//! verifier), so a request cannot be sealed to a node that did not pass the checklist.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message as _;
use tandem_attest::digest::Sha256Digest as FileDigest;
use tandem_attest::verify::{
    Policy, Report, VerificationCache, VerifiedNode, Verifier, VerifyContext,
};
use tandem_proto::v1::gateway_client::GatewayClient;
use tandem_proto::v1::{
    DiscoverRequest, InferenceRequest, NodeError, Receipt, ResponseEvent, SubmitRequest,
    response_event, submit_reply,
};
use tandem_proto::{
    Limits, ResponseContext, ResponseHead, RoutingMetadata, SealOptions, SizeBucket, seal_request,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::checkpoints::CheckpointBook;
use crate::config::TimeoutConfig;
use crate::error::RemoteError;

pub use tandem_service::unix_now;

/// The clock the remote path reads (Unix seconds): `tandem_service::SystemClock` by default,
/// replaceable for tests and for devices with a trusted time source.
pub type Clock = std::sync::Arc<dyn tandem_service::Clock>;

/// One candidate the gateway offered, with its verification report.
#[derive(Debug, Clone)]
pub struct CandidateReport {
    /// The gateway's opaque handle for the node.
    pub handle: String,
    /// The per-step report.
    pub report: Report,
    /// The verified node, if every step passed.
    pub node: Option<VerifiedNode>,
    /// The node's key configs exactly as offered (RFC 9458 `application/ohttp-keys`), if the
    /// bundle parsed far enough to have them.
    pub key_configs: Option<Vec<u8>>,
}

/// A receipt whose every field was checked against the verified node that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The node that answered (its fleet certificate subject).
    pub node: String,
    /// Its root of trust (`software` or `tpm2`).
    pub root_of_trust: String,
    /// Its verified release digest.
    pub release_digest: FileDigest,
    /// Its release's index in the transparency log.
    pub log_index: u64,
    /// The model that ran.
    pub model_digest: FileDigest,
    /// The adapter that ran.
    pub adapter_digest: Option<FileDigest>,
    /// Prompt tokens the node counted.
    pub prompt_tokens: u32,
    /// Tokens it generated.
    pub completion_tokens: u32,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// What the request needs from a node.
#[derive(Debug, Clone)]
pub struct RemoteJob {
    /// Model content digest.
    pub model_digest: [u8; 32],
    /// Adapter content digest.
    pub adapter_digest: Option<[u8; 32]>,
    /// File digests the node's release must contain.
    pub required: Vec<FileDigest>,
    /// The plaintext body.
    pub body: InferenceRequest,
}

/// Connection to a gateway plus the verification cache.
pub struct Remote {
    url: String,
    clock: Clock,
    tls_ca_pem: Option<String>,
    timeouts: TimeoutConfig,
    candidates: u32,
    cache: Mutex<VerificationCache>,
    checkpoints: Option<CheckpointBook>,
    discover_ttl: Duration,
    discovered: Mutex<HashMap<DiscoverKey, Discovered>>,
    channel: tokio::sync::OnceCell<Channel>,
}

/// (model id, adapter id, required file digests).
type DiscoverKey = (String, String, Vec<FileDigest>);

/// The verified candidates of one Discover.
#[derive(Debug, Clone)]
struct Discovered {
    at: Instant,
    /// The earliest `valid_until` of the nodes (Unix seconds).
    valid_until: u64,
    nodes: Vec<(String, VerifiedNode)>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

fn digest_hex(d: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(d))
}

/// A Submit refused before the response head: the node's sealed detail when it attached one
/// (`tandem_proto::SEALED_STATUS_METADATA`), opened with this request's context; else the
/// status as relayed. A sealed status that does not open is an error of its own (it was
/// altered, or answers another request), never silently dropped.
fn refusal(s: &tonic::Status, ctx: ResponseContext) -> RemoteError {
    let Some(bytes) = s
        .metadata()
        .get_bin(tandem_proto::SEALED_STATUS_METADATA)
        .and_then(|v| v.to_bytes().ok())
    else {
        return status("Submit", s);
    };
    match ctx.open_status(&bytes) {
        Ok(detail) => match NodeError::decode(detail.as_slice()) {
            Ok(e) => RemoteError::Refused {
                call: "Submit",
                code: format!("{:?}", s.code()),
                node_code: e.code,
                detail: e.message,
            },
            Err(e) => RemoteError::Response(format!(
                "the node's sealed status opened but is not a NodeError ({e}); the node is faulty"
            )),
        },
        Err(e) => RemoteError::Response(format!(
            "Submit failed with {:?} and a sealed status that does not open ({e}): it was \
             altered in transit or answers another request",
            s.code()
        )),
    }
}

fn status(call: &'static str, s: &tonic::Status) -> RemoteError {
    RemoteError::Status {
        call,
        code: format!("{:?}", s.code()),
        message: s.message().to_string(),
    }
}

impl Remote {
    /// A client for the gateway at `url` trusting nodes that pass `policy`.
    pub fn new(
        url: String,
        tls_ca_pem: Option<String>,
        policy: Policy,
        timeouts: TimeoutConfig,
        candidates: u32,
    ) -> Remote {
        Remote {
            url,
            clock: std::sync::Arc::new(tandem_service::SystemClock),
            tls_ca_pem,
            timeouts,
            candidates,
            cache: Mutex::new(VerificationCache::new(Verifier::new(policy))),
            checkpoints: None,
            discover_ttl: Duration::ZERO,
            discovered: Mutex::new(HashMap::new()),
            channel: tokio::sync::OnceCell::new(),
        }
    }

    /// Reuses the verified candidates of a Discover for `ttl` (see
    /// [`crate::config::RoutingConfig::discover_cache_ms`]); zero turns reuse off.
    pub fn with_discover_cache(mut self, ttl: Duration) -> Remote {
        self.discover_ttl = ttl;
        self
    }

    /// Checks every node's log checkpoint against the newest one `book` knows (and advances
    /// it); without a book, the first checkpoint seen is trusted on each verification.
    pub fn with_checkpoints(mut self, book: CheckpointBook) -> Remote {
        self.checkpoints = Some(book);
        self
    }

    /// The device's checkpoint book, if the config names a log.
    pub fn checkpoints(&self) -> Option<&CheckpointBook> {
        self.checkpoints.as_ref()
    }

    /// Replaces the clock (verification "now" and the request's creation time).
    pub fn with_clock(mut self, clock: Clock) -> Remote {
        self.clock = clock;
        self
    }

    /// The gateway URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn channel(&self) -> Result<Channel, RemoteError> {
        let c = self
            .channel
            .get_or_try_init(|| async {
                let connect = |reason: String| RemoteError::Connect {
                    url: self.url.clone(),
                    reason,
                };
                let mut ep = Endpoint::from_shared(self.url.clone())
                    .map_err(|e| connect(e.to_string()))?
                    .connect_timeout(self.timeouts.connect())
                    .timeout(self.timeouts.request());
                if let Some(pem) = &self.tls_ca_pem {
                    ep = ep
                        .tls_config(
                            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                        )
                        .map_err(|e| connect(format!("TLS config: {e}")))?;
                }
                ep.connect().await.map_err(|e| connect(format!("{e}")))
            })
            .await?;
        Ok(c.clone())
    }

    /// Asks the gateway for candidates serving `model_id`/`adapter_id` and verifies each one
    /// (cached until its earliest expiry).
    pub async fn discover(
        &self,
        model_id: &str,
        adapter_id: &str,
        required: &[FileDigest],
    ) -> Result<Vec<CandidateReport>, RemoteError> {
        let mut gw = GatewayClient::new(self.channel().await?);
        let resp = tokio::time::timeout(
            self.timeouts.first_chunk(),
            gw.discover(DiscoverRequest {
                model_id: model_id.to_string(),
                adapter_id: adapter_id.to_string(),
                count: self.candidates,
            }),
        )
        .await
        .map_err(|_| RemoteError::Timeout(self.timeouts.first_chunk(), "waiting for Discover"))?
        .map_err(|s| status("Discover", &s))?
        .into_inner();
        let now = self.clock.now();
        // Parse each bundle once: its log entry says which checkpoint it carries (checked by
        // the verifier), its key configs are what the caller seals to.
        let parsed: Vec<_> = resp
            .candidates
            .into_iter()
            .map(|c| {
                let doc = c.attestation.map(|a| a.document).unwrap_or_default();
                let bundle = tandem_attest::attestation::AttestationBundle::from_json(&doc).ok();
                (c.node_handle, doc, bundle)
            })
            .collect();
        let mut known = Vec::with_capacity(parsed.len());
        for (_, _, bundle) in &parsed {
            known.push(match &self.checkpoints {
                Some(book) => {
                    book.known_for(bundle.as_ref().and_then(|b| b.release().log_entry()))
                        .await?
                }
                None => None,
            });
        }
        let mut out = Vec::with_capacity(parsed.len());
        for ((handle, doc, bundle), known) in parsed.into_iter().zip(known) {
            let cx = VerifyContext {
                now,
                known: known.as_ref(),
                required_digests: required,
                nonce: None,
            };
            let v = self
                .cache
                .lock()
                .map_err(|_| RemoteError::Response("verification cache poisoned".into()))?
                .verify_node(&doc, &cx);
            if v.node.is_some()
                && let (Some(book), Some(entry)) = (
                    &self.checkpoints,
                    bundle.as_ref().and_then(|b| b.release().log_entry()),
                )
            {
                book.advance(entry)?;
            }
            out.push(CandidateReport {
                handle,
                report: v.report,
                node: v.node,
                key_configs: bundle.map(|b| b.key_configs().bytes().to_vec()),
            });
        }
        Ok(out)
    }

    /// Runs `job` on the verified candidates; `on_delta` gets each text delta. Returns the
    /// verified receipt. `started` is set once the first delta was handed out (after that, a
    /// failure must not fall back to another route).
    ///
    /// Candidates come from the Discover cache when it holds fresh ones for this model and
    /// adapter; if a request to cached candidates fails before the response head, they are
    /// discarded and the request is sealed again to freshly discovered ones, once.
    pub async fn run(
        &self,
        job: &RemoteJob,
        mut on_delta: impl FnMut(String, Vec<u32>) -> bool,
        started: &mut bool,
    ) -> Result<VerifiedReceipt, RemoteError> {
        let model_id = digest_hex(&job.model_digest);
        let adapter_id = job
            .adapter_digest
            .as_ref()
            .map(digest_hex)
            .unwrap_or_default();
        let key: DiscoverKey = (model_id, adapter_id, job.required.clone());
        if let Some(cached) = self.cached_candidates(&key) {
            let mut head = false;
            match self
                .attempt(job, &key, &cached, &mut on_delta, started, &mut head)
                .await
            {
                // Stale candidates (a node left, the gateway restarted): ask again. Not after a
                // timeout, which would only double the wait.
                Err(e) if !head && !matches!(e, RemoteError::Timeout(..)) => {
                    if let Ok(mut d) = self.discovered.lock() {
                        d.remove(&key);
                    }
                }
                done => return done,
            }
        }
        let verified = self.fresh_candidates(&key).await?;
        let mut head = false;
        self.attempt(job, &key, &verified, &mut on_delta, started, &mut head)
            .await
    }

    fn cached_candidates(&self, key: &DiscoverKey) -> Option<Vec<(String, VerifiedNode)>> {
        if self.discover_ttl.is_zero() {
            return None;
        }
        let now = self.clock.now();
        let d = self.discovered.lock().ok()?;
        d.get(key)
            .filter(|c| c.at.elapsed() < self.discover_ttl && now < c.valid_until)
            .map(|c| c.nodes.clone())
    }

    /// Discover + verify; the verified candidates, or why none passed.
    async fn fresh_candidates(
        &self,
        key: &DiscoverKey,
    ) -> Result<Vec<(String, VerifiedNode)>, RemoteError> {
        let (model_id, adapter_id, required) = key;
        let candidates = self.discover(model_id, adapter_id, required).await?;
        let mut verified = Vec::new();
        let mut refused = Vec::new();
        for c in candidates {
            match c.node {
                Some(n) => verified.push((c.handle, n)),
                None => refused.push(match c.report.first_failure() {
                    Some(s) => {
                        format!("{}: step {} ({}): {}", c.handle, s.number, s.name, s.detail)
                    }
                    None => format!("{}: not verified", c.handle),
                }),
            }
        }
        if verified.is_empty() {
            return Err(RemoteError::NoVerifiedNode(if refused.is_empty() {
                format!("the gateway offered no node for model {model_id}")
            } else {
                refused.join("; ")
            }));
        }
        if !self.discover_ttl.is_zero()
            && let Ok(mut d) = self.discovered.lock()
        {
            d.insert(
                key.clone(),
                Discovered {
                    at: Instant::now(),
                    valid_until: verified
                        .iter()
                        .map(|(_, n): &(String, VerifiedNode)| n.valid_until())
                        .min()
                        .unwrap_or(0),
                    nodes: verified.clone(),
                },
            );
        }
        Ok(verified)
    }

    /// Seals `job` to `verified`, submits it and reads the answer. `head` is set once the
    /// response head arrived.
    async fn attempt(
        &self,
        job: &RemoteJob,
        key: &DiscoverKey,
        verified: &[(String, VerifiedNode)],
        on_delta: &mut impl FnMut(String, Vec<u32>) -> bool,
        started: &mut bool,
        head: &mut bool,
    ) -> Result<VerifiedReceipt, RemoteError> {
        let (model_id, adapter_id, _) = key;
        let nodes: Vec<VerifiedNode> = verified.iter().map(|(_, n)| n.clone()).collect();
        let body = job.body.encode_to_vec();
        let routing = RoutingMetadata {
            model_id: model_id.clone(),
            adapter_id: adapter_id.clone(),
            size_bucket: SizeBucket::for_len(body.len()),
        };
        let (sealed, ctx) = seal_to_verified(&nodes, &routing, self.clock.now(), &body)?;
        let mut gw = GatewayClient::new(self.channel().await?);
        let submit = gw.submit(SubmitRequest {
            sealed_request: sealed,
            node_handles: verified.iter().map(|(h, _)| h.clone()).collect(),
        });
        let mut stream = match tokio::time::timeout(self.timeouts.first_chunk(), submit)
            .await
            .map_err(|_| RemoteError::Timeout(self.timeouts.first_chunk(), "waiting for Submit"))?
        {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(refusal(&s, ctx)),
        };
        let first = match tokio::time::timeout(self.timeouts.first_chunk(), stream.message())
            .await
            .map_err(|_| {
                RemoteError::Timeout(self.timeouts.first_chunk(), "waiting for the response head")
            })? {
            Ok(m) => m.ok_or_else(|| {
                RemoteError::Response("the stream ended before the response head".into())
            })?,
            Err(s) => return Err(refusal(&s, ctx)),
        };
        let Some(submit_reply::Part::Head(resp_head)) = first.part else {
            return Err(RemoteError::Response(
                "the first message is not a response head".into(),
            ));
        };
        *head = true;
        let request_id = ctx.request_id();
        let answered = ResponseHead::parse(&resp_head)
            .map_err(|e| RemoteError::Response(format!("response head: {e}")))?
            .recipient_index;
        let node = nodes
            .get(usize::from(answered))
            .ok_or_else(|| RemoteError::Response(format!("response names recipient {answered}")))?
            .clone();
        let mut opener = ctx
            .open_head(&resp_head, Limits::default())
            .map_err(|e| RemoteError::Response(format!("response head: {e}")))?;
        let mut tokens = 0u32;
        loop {
            let msg = tokio::time::timeout(self.timeouts.request(), stream.message())
                .await
                .map_err(|_| RemoteError::Timeout(self.timeouts.request(), "waiting for a chunk"))?
                .map_err(|s| status("Submit", &s))?;
            let Some(msg) = msg else {
                return Err(RemoteError::Response(
                    "the stream ended before the final chunk: the answer is incomplete".into(),
                ));
            };
            let Some(submit_reply::Part::Chunk(chunk)) = msg.part else {
                return Err(RemoteError::Response("a second response head".into()));
            };
            let opened = opener
                .open(&chunk)
                .map_err(|e| RemoteError::Response(format!("chunk: {e}")))?;
            let event = ResponseEvent::decode(opened.data.as_slice())
                .map_err(|e| RemoteError::Response(format!("chunk plaintext: {e}")))?;
            match (event.event, opened.is_final) {
                (Some(response_event::Event::Delta(d)), false) => {
                    tokens = tokens.saturating_add(d.token_ids.len() as u32);
                    *started = true;
                    if !on_delta(d.text, d.token_ids) {
                        return Err(RemoteError::Response("cancelled by the caller".into()));
                    }
                }
                (Some(response_event::Event::Receipt(r)), true) => {
                    opener
                        .finish()
                        .map_err(|e| RemoteError::Response(format!("stream end: {e}")))?;
                    let receipt = check_receipt(&r, &node, job, tokens)?;
                    // One answer per request id: after the final chunk the stream must end. A
                    // request sealed to K nodes can be run by each of them (a gateway replaying
                    // it to another recipient); a second head or anything else is refused.
                    return match tokio::time::timeout(self.timeouts.request(), stream.message())
                        .await
                    {
                        Ok(Ok(None)) => Ok(receipt),
                        Ok(Ok(Some(_))) => Err(RemoteError::Response(format!(
                            "a second answer to request {request_id} after its final chunk: the \
                             gateway relayed more than one recipient's answer (the request was \
                             replayed to another node); the first answer is refused too"
                        ))),
                        Ok(Err(s)) => Err(RemoteError::Response(format!(
                            "the stream of request {request_id} failed after its final chunk \
                             ({:?}); the answer is refused",
                            s.code()
                        ))),
                        Err(_) => Err(RemoteError::Timeout(
                            self.timeouts.request(),
                            "waiting for the stream to end after the final chunk",
                        )),
                    };
                }
                (Some(response_event::Event::Error(e)), true) => {
                    return Err(RemoteError::Node {
                        code: e.code,
                        message: e.message,
                    });
                }
                (_, is_final) => {
                    return Err(RemoteError::Response(format!(
                        "unexpected event in a {} chunk",
                        if is_final { "final" } else { "non-final" }
                    )));
                }
            }
        }
    }
}

/// Seals `body` to one key of each verified node (the newest config each lists).
pub fn seal_to_verified(
    nodes: &[VerifiedNode],
    routing: &RoutingMetadata,
    now: u64,
    body: &[u8],
) -> Result<(Vec<u8>, ResponseContext), RemoteError> {
    let configs: Vec<_> = nodes
        .iter()
        .filter_map(|n| n.key_configs().entries().last().cloned())
        .collect();
    Ok(seal_request(
        &configs,
        routing,
        now,
        body,
        &SealOptions::default(),
    )?)
}

fn opt_digest(b: &[u8], what: &str) -> Result<Option<[u8; 32]>, RemoteError> {
    if b.is_empty() {
        return Ok(None);
    }
    <[u8; 32]>::try_from(b)
        .map(Some)
        .map_err(|_| RemoteError::Receipt(format!("{what} is {} bytes, not 32", b.len())))
}

fn check_receipt(
    r: &Receipt,
    node: &VerifiedNode,
    job: &RemoteJob,
    tokens_seen: u32,
) -> Result<VerifiedReceipt, RemoteError> {
    let release = node.release().digest();
    let got_release = opt_digest(&r.release_digest, "release digest")?;
    if got_release != Some(release.0) {
        return Err(RemoteError::Receipt(format!(
            "the receipt names release {}, but node {} was verified running release {}",
            got_release.map_or("(none)".into(), |d| digest_hex(&d)),
            node.name(),
            release
        )));
    }
    let model = opt_digest(&r.model_digest, "model digest")?;
    if model != Some(job.model_digest) {
        return Err(RemoteError::Receipt(format!(
            "the receipt names model {}, the request asked for {}",
            model.map_or("(none)".into(), |d| digest_hex(&d)),
            digest_hex(&job.model_digest)
        )));
    }
    let adapter = opt_digest(&r.adapter_digest, "adapter digest")?;
    if adapter != job.adapter_digest {
        return Err(RemoteError::Receipt(format!(
            "the receipt names adapter {}, the request asked for {}",
            adapter.map_or("(none)".into(), |d| digest_hex(&d)),
            job.adapter_digest
                .map_or("(none)".into(), |d| digest_hex(&d))
        )));
    }
    if r.completion_tokens != tokens_seen {
        return Err(RemoteError::Receipt(format!(
            "the receipt counts {} completion tokens but the stream carried {tokens_seen}",
            r.completion_tokens
        )));
    }
    let finish_reason = match tandem_proto::v1::FinishReason::try_from(r.finish_reason) {
        Ok(tandem_proto::v1::FinishReason::Stop) => "stop",
        Ok(tandem_proto::v1::FinishReason::Length) => "length",
        _ => "unspecified",
    };
    Ok(VerifiedReceipt {
        node: node.name().to_string(),
        root_of_trust: node.root_of_trust().to_string(),
        release_digest: release,
        log_index: node.release().log_index(),
        model_digest: FileDigest(job.model_digest),
        adapter_digest: adapter.map(FileDigest),
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        finish_reason: finish_reason.to_string(),
    })
}
