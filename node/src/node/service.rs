//! The `tandem.v1.Node` gRPC service: `Submit`, `GetAttestation`, `GetKeyConfigs`.
//!
//! `Submit` runs these steps in order; any failure before the head is a `tonic::Status` with
//! the code and a generic message, and from step 3 on the detail sealed to the device (see
//! [`super::status`]):
//! 1. refuse if draining; rotate keys if due;
//! 2. parse the sealed request's framing; pick the live keys it is sealed to;
//! 3. open it (HPKE) with that key; check the replay guard of that key;
//! 4. decode the `InferenceRequest`; check limits (prompt bytes, new tokens);
//! 5. check the body's digests equal the header's, and that this node serves the model and the
//!    adapter (looked up by digest in the adapter cache);
//! 6. tokenize; check the context fits;
//! 7. take a queue place (or `RESOURCE_EXHAUSTED`), wait for a generation slot until the
//!    deadline (or `DEADLINE_EXCEEDED`);
//! 8. send the head, generate on a blocking thread, stream sealed deltas and the final receipt.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use tandem_model::{AdapterDigest, ModelDigest, SamplingParams, Sha256Digest};
use tandem_proto::v1::node_server::Node;
use tandem_proto::v1::{self, SubmitReply, submit_reply};
use tandem_proto::{Limits, SealedRequest, open_request};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::engine::{self, Engine, Job};
use super::event;
use super::keys::{Clock, KeyRing};
use super::status::Failure;
use crate::config::LimitsConfig;

/// The node's shared state.
#[derive(Debug)]
pub struct Shared {
    /// Keys and attestation.
    pub keys: KeyRing,
    /// Models.
    pub engine: Arc<Engine>,
    /// The batch scheduler, when `limits.max_batch > 1`.
    pub batcher: Option<Arc<super::batch::Batcher>>,
    /// Limits.
    pub limits: LimitsConfig,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Release digest (for receipts).
    pub release_digest: [u8; 32],
    /// Places in the system (waiting + running).
    pub places: Arc<Semaphore>,
    /// Generation slots.
    pub slots: Arc<Semaphore>,
    /// Set on SIGTERM: new requests are refused.
    pub draining: AtomicBool,
    /// Requests in flight (admitted, not finished).
    pub in_flight: AtomicU64,
}

/// The gRPC service (cheap to clone).
#[derive(Debug, Clone)]
pub struct NodeService {
    shared: Arc<Shared>,
}

impl NodeService {
    /// A service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        NodeService { shared }
    }
}

fn digest32(bytes: &[u8], field: &str) -> Result<[u8; 32], Failure> {
    bytes
        .try_into()
        .map_err(|_| Failure::Malformed(format!("{field} is {} bytes; expected 32", bytes.len())))
}

/// A request that passed steps 1–6.
struct Admitted {
    job: Job,
    responder: tandem_proto::Responder,
}

/// A refused request: why, and (once it was opened) the responder to seal the detail with.
struct Rejected {
    failure: Failure,
    responder: Option<Box<tandem_proto::Responder>>,
}

impl From<Failure> for Rejected {
    fn from(failure: Failure) -> Self {
        Rejected {
            failure,
            responder: None,
        }
    }
}

impl Shared {
    /// Steps 1–6; a failure after step 3 keeps the responder, so its detail is sealed to the
    /// device rather than told to the gateway.
    fn admit(&self, sealed: &[u8]) -> Result<Admitted, Rejected> {
        // 1.
        if self.draining.load(Ordering::SeqCst) {
            return Err(Failure::Draining.into());
        }
        let now = self.clock.now();
        if let Ok(m) = self.keys.maintain(now)
            && let Some(id) = m.rotated_to
        {
            event::emit(&event::Event::KeyRotated { key_id: id });
        }
        // 2.
        let limits = Limits::default();
        let parsed = SealedRequest::parse(sealed, &limits).map_err(Failure::from_proto)?;
        let ids: Vec<u8> = parsed.recipients.iter().map(|r| r.key_id).collect();
        let keys = self.keys.live_keys_for(&ids, now);
        if keys.is_empty() {
            return Err(Failure::NoLiveKey {
                sealed_to: ids,
                live: self.keys.live_ids(now),
            }
            .into());
        }
        // 3.
        let mut last = None;
        let mut opened = None;
        for k in keys {
            match open_request(&k.key, sealed, &limits) {
                Ok(o) => {
                    opened = Some((k, o));
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some((key, opened)) = opened else {
            return Err(last
                .map(Failure::from_proto)
                .unwrap_or_else(|| Failure::Internal("no key tried".into()))
                .into());
        };
        let tandem_proto::OpenedRequest {
            header,
            body,
            responder,
        } = opened;
        let checked = key
            .replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(&header, now)
            .map_err(Failure::from_proto)
            .and_then(|()| self.check(&header, &body));
        match checked {
            Ok(job) => Ok(Admitted { job, responder }),
            Err(failure) => Err(Rejected {
                failure,
                responder: Some(Box::new(responder)),
            }),
        }
    }

    /// Steps 4–6 on an opened request.
    fn check(&self, header: &tandem_proto::RequestHeader, body: &[u8]) -> Result<Job, Failure> {
        // 4.
        let mut req = v1::InferenceRequest::decode(body)
            .map_err(|e| Failure::Malformed(format!("InferenceRequest: {e}")))?;
        let prompt = Zeroizing::new(std::mem::take(&mut req.prompt));
        if prompt.len() > self.limits.max_prompt_bytes {
            return Err(Failure::PromptTooLarge {
                len: prompt.len(),
                max: self.limits.max_prompt_bytes,
            });
        }
        if req.max_new_tokens == 0 {
            return Err(Failure::Malformed("max_new_tokens is 0".into()));
        }
        if req.max_new_tokens > self.limits.max_new_tokens {
            return Err(Failure::TooManyTokens {
                asked: req.max_new_tokens,
                max: self.limits.max_new_tokens,
            });
        }
        // 5.
        let model_digest = ModelDigest(Sha256Digest(digest32(&req.model_digest, "model_digest")?));
        if model_digest.to_string() != header.routing.model_id {
            return Err(Failure::Malformed(
                "model_digest in the body differs from the header's model_id".into(),
            ));
        }
        let adapter_digest = if req.adapter_digest.is_empty() {
            None
        } else {
            Some(AdapterDigest(Sha256Digest(digest32(
                &req.adapter_digest,
                "adapter_digest",
            )?)))
        };
        let header_adapter = adapter_digest.map(|d| d.to_string()).unwrap_or_default();
        if header_adapter != header.routing.adapter_id {
            return Err(Failure::Malformed(
                "adapter_digest in the body differs from the header's adapter_id".into(),
            ));
        }
        let model = self.engine.model(&model_digest)?;
        let adapter = match adapter_digest {
            Some(d) => Some((d, self.engine.adapter(model, &d)?)),
            None => None,
        };
        // 6.
        let ids = Zeroizing::new(
            model
                .loaded
                .tokenizer
                .encode(&prompt)
                .map_err(|_| Failure::Malformed("the tokenizer rejected the prompt".into()))?,
        );
        if ids.is_empty() {
            return Err(Failure::Malformed("the prompt has no tokens".into()));
        }
        let context = model.loaded.model.config().max_position_embeddings;
        if ids.len() + req.max_new_tokens as usize > context {
            return Err(Failure::ContextTooLong {
                prompt: ids.len(),
                new: req.max_new_tokens,
                context,
            });
        }
        let temperature = f64::from(req.temperature);
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(Failure::Malformed("temperature must be >= 0".into()));
        }
        let top_p = f64::from(req.top_p);
        if !top_p.is_finite() || !(0.0..=1.0).contains(&top_p) {
            return Err(Failure::Malformed("top_p must be in [0, 1]".into()));
        }
        Ok(Job {
            model: model_digest,
            adapter,
            prompt_ids: ids,
            max_new_tokens: req.max_new_tokens,
            sampling: SamplingParams {
                temperature,
                top_k: None,
                top_p: (top_p > 0.0).then_some(top_p),
                repetition_penalty: 1.0,
                seed: req.seed,
            },
        })
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<SubmitReply, Status>> + Send + 'static>>;

/// Logs the refusal and builds its status: code and generic message for the gateway, the
/// detail sealed to the device when the request was opened (`super::status`).
fn reject(f: &Failure, responder: Option<tandem_proto::Responder>, start: Instant) -> Status {
    event::emit(&event::Event::RequestRejected {
        reason: f.kind(),
        code: f.code() as i32,
        ms: start.elapsed().as_millis() as u64,
    });
    f.to_status(responder)
}

#[tonic::async_trait]
impl Node for NodeService {
    type SubmitStream = ReplyStream;

    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        let start = Instant::now();
        let s = self.shared.clone();
        let deadline_secs = s.limits.deadline_secs;
        // `limits.deadline_secs` is bounded when the config is checked; this cannot fail.
        let Some(deadline) = start.checked_add(Duration::from_secs(deadline_secs)) else {
            return Err(reject(
                &Failure::Internal("limits.deadline_secs is out of range".into()),
                None,
                start,
            ));
        };
        let stall = Duration::from_millis(s.limits.stall_timeout_ms);
        let sealed = Zeroizing::new(request.into_inner().sealed_request);
        // Steps 1–6 (tokenizing is cheap next to generation; keep it off the async threads).
        let s2 = s.clone();
        let admitted = tokio::task::spawn_blocking(move || s2.admit(&sealed))
            .await
            .map_err(|_| Status::internal("request task failed"))?
            .map_err(|r| reject(&r.failure, r.responder.map(|b| *b), start))?;
        // 7.
        let Ok(place) = s.places.clone().try_acquire_owned() else {
            return Err(reject(
                &Failure::Busy(format!(
                    "queue full ({} waiting or running); retry on another node",
                    s.limits.queue_depth + s.limits.max_concurrent
                )),
                Some(admitted.responder),
                start,
            ));
        };
        let done = {
            let s = s.clone();
            move |out: engine::Outcome| {
                drop(place);
                s.in_flight.fetch_sub(1, Ordering::SeqCst);
                event::emit(&event::Event::RequestDone {
                    prompt_tokens: out.prompt_tokens,
                    tokens: out.completion_tokens,
                    finish: out.finish,
                    batch: out.batch,
                    ms: start.elapsed().as_millis() as u64,
                });
            }
        };
        if let Some(b) = &s.batcher {
            let (head, sealer) = admitted.responder.start(Limits::default());
            let (tx, rx) = mpsc::channel(32);
            let _ = tx
                .send(Ok(SubmitReply {
                    part: Some(submit_reply::Part::Head(head)),
                }))
                .await;
            s.in_flight.fetch_add(1, Ordering::SeqCst);
            b.submit(super::batch::Pending {
                job: admitted.job,
                sealer,
                sink: engine::Sink::new(tx, stall),
                deadline,
                done: Box::new(done),
            });
            return Ok(Response::new(Box::pin(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )));
        }
        let slot =
            match tokio::time::timeout_at(deadline.into(), s.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => {
                    return Err(reject(&Failure::Draining, Some(admitted.responder), start));
                }
                Err(_) => {
                    return Err(reject(
                        &Failure::Deadline(deadline_secs),
                        Some(admitted.responder),
                        start,
                    ));
                }
            };
        // 8.
        let (head, sealer) = admitted.responder.start(Limits::default());
        let (tx, rx) = mpsc::channel(32);
        let _ = tx
            .send(Ok(SubmitReply {
                part: Some(submit_reply::Part::Head(head)),
            }))
            .await;
        s.in_flight.fetch_add(1, Ordering::SeqCst);
        let job = admitted.job;
        let s3 = s.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut sink = engine::Sink::new(tx, stall);
            let out = engine::run(
                &s3.engine,
                job,
                sealer,
                &mut sink,
                deadline,
                deadline_secs,
                s3.release_digest,
            );
            // The slot is free once generation ends; what the client has not taken yet is
            // sent without holding it.
            drop(slot);
            runtime.spawn(async move { done(sink.finish(out, deadline).await) });
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_attestation(
        &self,
        _request: Request<v1::GetAttestationRequest>,
    ) -> Result<Response<v1::AttestationBundle>, Status> {
        let now = self.shared.clock.now();
        if let Ok(m) = self.shared.keys.maintain(now)
            && let Some(id) = m.rotated_to
        {
            event::emit(&event::Event::KeyRotated { key_id: id });
        }
        let p = self
            .shared
            .keys
            .published()
            .ok_or_else(|| Status::unavailable("no key yet"))?;
        Ok(Response::new(v1::AttestationBundle {
            document: p.document.as_ref().clone(),
            served_digests: self.shared.engine.served_digests(),
        }))
    }

    async fn get_key_configs(
        &self,
        _request: Request<v1::GetKeyConfigsRequest>,
    ) -> Result<Response<v1::KeyConfigs>, Status> {
        let now = self.shared.clock.now();
        let _ = self.shared.keys.maintain(now);
        let p = self
            .shared
            .keys
            .published()
            .ok_or_else(|| Status::unavailable("no key yet"))?;
        Ok(Response::new(v1::KeyConfigs {
            key_configs: p.key_configs,
            key_expiry_unix: p.key_expiry,
        }))
    }
}
