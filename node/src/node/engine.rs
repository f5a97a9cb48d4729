//! The model side of the node: the served models and adapters (measured at start-up), and one
//! generation run on a blocking thread, streaming sealed chunks.
//!
//! Generation is `tandem_model::Model::generate_with_tokens`, the same call the device's local
//! path makes, with the same sampling parameters, so greedy outputs match token for token.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tandem_model::{
    Adapter, AdapterCache, AdapterDigest, DType, Device, FinishReason, GenerateParams, LoadedModel,
    ModelDigest, SamplingParams, load_adapter, load_model,
};
use tandem_proto::ChunkSealer;
use tandem_proto::v1::{self, SubmitReply, response_event, submit_reply};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tonic::Status;
use zeroize::Zeroizing;

use super::NodeError;
use super::status::Failure;
use crate::config::ResolvedModel;

/// One served model.
#[derive(Debug)]
pub struct ServedModel {
    /// Name in the release.
    pub name: String,
    /// The loaded weights and tokenizer.
    pub loaded: LoadedModel,
    /// Compute dtype.
    pub dtype: DType,
    /// Served adapters by digest: name and directory.
    pub adapters: HashMap<AdapterDigest, (String, PathBuf)>,
}

/// Every served model and the adapter cache.
#[derive(Debug)]
pub struct Engine {
    models: HashMap<ModelDigest, ServedModel>,
    cache: Mutex<AdapterCache>,
}

impl Engine {
    /// Loads every model and adapter (adapters go into the cache up to its budget).
    pub fn load(models: &[ResolvedModel], cache_bytes: usize) -> Result<Self, NodeError> {
        let mut cache = AdapterCache::new(cache_bytes);
        let mut out = HashMap::new();
        for m in models {
            let dtype = if m.f16 { DType::F16 } else { DType::F32 };
            let loaded =
                load_model(&m.dir, dtype, &Device::Cpu).map_err(|source| NodeError::Model {
                    dir: m.dir.clone(),
                    source: Box::new(source),
                })?;
            let mut adapters = HashMap::new();
            for a in &m.adapters {
                let dir = m.dir.join("adapters").join(a);
                let la = load_adapter(&dir, loaded.model.config(), dtype, &Device::Cpu).map_err(
                    |source| NodeError::Model {
                        dir: dir.clone(),
                        source: Box::new(source),
                    },
                )?;
                let digest = la.digest;
                cache
                    .get_or_try_insert_with(digest, || Ok::<_, NodeError>(la.adapter))
                    .map(|_| ())?;
                adapters.insert(digest, (a.clone(), dir));
            }
            out.insert(
                loaded.digest,
                ServedModel {
                    name: m.name.clone(),
                    loaded,
                    dtype,
                    adapters,
                },
            );
        }
        Ok(Engine {
            models: out,
            cache: Mutex::new(cache),
        })
    }

    /// The served models.
    pub fn models(&self) -> impl Iterator<Item = &ServedModel> {
        self.models.values()
    }

    /// The content digest of every served model and adapter directory (sorted): the gateway's
    /// routing hint.
    pub fn served_digests(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self
            .models
            .iter()
            .flat_map(|(d, m)| {
                std::iter::once(d.0.0.to_vec()).chain(m.adapters.keys().map(|a| a.0.0.to_vec()))
            })
            .collect();
        out.sort();
        out
    }

    /// The model with `digest`.
    pub fn model(&self, digest: &ModelDigest) -> Result<&ServedModel, Failure> {
        self.models
            .get(digest)
            .ok_or_else(|| Failure::UnknownModel(digest.to_string()))
    }

    /// The adapter with `digest` for `model`, from the cache (loaded again from its measured
    /// directory if it was evicted; the digest is checked on load).
    pub fn adapter(
        &self,
        model: &ServedModel,
        digest: &AdapterDigest,
    ) -> Result<Arc<Adapter>, Failure> {
        let Some((_, dir)) = model.adapters.get(digest) else {
            return Err(Failure::UnknownAdapter {
                adapter: digest.to_string(),
                model: model.loaded.digest.to_string(),
            });
        };
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get_or_try_insert_with(*digest, || {
            let la = load_adapter(dir, model.loaded.model.config(), model.dtype, &Device::Cpu)
                .map_err(|_| Failure::Internal("reloading an evicted adapter failed".into()))?;
            if la.digest != *digest {
                return Err(Failure::Internal(
                    "an adapter file changed on disk since start-up".into(),
                ));
            }
            Ok(la.adapter)
        })
    }
}

/// A request ready to run.
#[derive(Debug)]
pub struct Job {
    /// The model.
    pub model: ModelDigest,
    /// The adapter and its digest.
    pub adapter: Option<(AdapterDigest, Arc<Adapter>)>,
    /// Prompt token ids (zeroized on drop).
    pub prompt_ids: Zeroizing<Vec<u32>>,
    /// Most new tokens.
    pub max_new_tokens: u32,
    /// Sampling.
    pub sampling: SamplingParams,
}

/// How a run ended (for the log event; no content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// `stop`, `length`, or the failure kind.
    pub finish: &'static str,
    /// Sequences decoded together with this one (1: alone).
    pub batch: usize,
}

/// Where a request's reply messages go.
pub type Tx = mpsc::Sender<Result<SubmitReply, Status>>;

/// Why a response stream stopped taking chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client went away (its stream was dropped or reset).
    Gone,
    /// The client took no chunk for longer than `limits.stall_timeout_ms` (for example an
    /// HTTP/2 client that keeps its flow-control window at zero).
    Stalled,
}

impl Ended {
    /// The `finish` of the request's log event.
    pub fn kind(self) -> &'static str {
        match self {
            Ended::Gone => "client_gone",
            Ended::Stalled => "client_stalled",
        }
    }
}

/// One request's outgoing sealed chunks.
///
/// Generation never waits on the client: [`Sink::push`] hands a chunk to the response stream if
/// it has room and otherwise holds it (at most one chunk per generated piece, so bounded by
/// `max_new_tokens`). A stream whose held chunks made no progress for `stall` is ended
/// ([`Ended::Stalled`]); the generation stops and its slot is freed. So a reader that is slow or
/// never reads costs at most `stall` of generation and never blocks a generation thread, a batch
/// worker or its batch-mates. What is still held when generation ends is sent by
/// [`Sink::finish`] on the async runtime, after the generation slot was released.
#[derive(Debug)]
pub struct Sink {
    tx: Tx,
    held: VecDeque<Result<SubmitReply, Status>>,
    stall: Duration,
    /// When the oldest held chunk started waiting (reset whenever a held chunk goes out).
    waiting_since: Option<Instant>,
    ended: Option<Ended>,
}

impl Sink {
    /// A sink over `tx` that ends the stream when it takes no chunk for `stall`.
    pub fn new(tx: Tx, stall: Duration) -> Self {
        Sink {
            tx,
            held: VecDeque::new(),
            stall,
            waiting_since: None,
            ended: None,
        }
    }

    fn end(&mut self, why: Ended) -> Ended {
        self.held.clear();
        self.ended = Some(why);
        why
    }

    /// Moves held chunks into the stream while it has room, then checks the stall bound.
    /// Never blocks.
    pub fn poll(&mut self) -> Result<(), Ended> {
        if let Some(e) = self.ended {
            return Err(e);
        }
        while let Some(m) = self.held.pop_front() {
            match self.tx.try_send(m) {
                Ok(()) => self.waiting_since = None,
                Err(TrySendError::Full(m)) => {
                    self.held.push_front(m);
                    break;
                }
                Err(TrySendError::Closed(_)) => return Err(self.end(Ended::Gone)),
            }
        }
        if self.held.is_empty() {
            self.waiting_since = None;
            return Ok(());
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.stall {
            return Err(self.end(Ended::Stalled));
        }
        Ok(())
    }

    /// Queues `m` after what is held and sends what the stream has room for. Never blocks;
    /// `Err` once the stream has ended (gone, or stalled past the bound).
    pub fn push(&mut self, m: SubmitReply) -> Result<(), Ended> {
        if let Some(e) = self.ended {
            return Err(e);
        }
        self.held.push_back(Ok(m));
        self.poll()
    }

    /// Sends every held chunk, waiting at most the stall bound for each one and never past
    /// `deadline` plus that bound (room for a final deadline error); returns `out` with
    /// `finish` set to why the stream ended if it did.
    pub async fn finish(mut self, out: Outcome, deadline: Instant) -> Outcome {
        let ended = |e: Ended| Outcome {
            finish: e.kind(),
            ..out
        };
        if let Some(e) = self.ended {
            return ended(e);
        }
        let last = deadline.checked_add(self.stall).unwrap_or(deadline);
        while let Some(m) = self.held.pop_front() {
            let wait = self
                .stall
                .min(last.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.tx.send(m)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return ended(Ended::Gone),
                Err(_) => return ended(Ended::Stalled),
            }
        }
        out
    }
}

fn sealed(plain: &[u8], sealer: &mut ChunkSealer) -> Option<SubmitReply> {
    sealer.seal(plain).ok().map(|c| SubmitReply {
        part: Some(submit_reply::Part::Chunk(c)),
    })
}

fn encode(ev: response_event::Event) -> Zeroizing<Vec<u8>> {
    let msg = v1::ResponseEvent { event: Some(ev) };
    let mut buf = Zeroizing::new(Vec::with_capacity(msg.encoded_len()));
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = msg.encode(&mut *buf);
    buf
}

/// Seals `failure` as the final chunk.
pub fn send_error(sealer: ChunkSealer, sink: &mut Sink, failure: &Failure) {
    let plain = encode(response_event::Event::Error(v1::NodeError {
        code: failure.code() as u32,
        message: failure.to_string(),
    }));
    if let Ok(c) = sealer.seal_final(&plain) {
        let _ = sink.push(SubmitReply {
            part: Some(submit_reply::Part::Chunk(c)),
        });
    }
}

/// Seals and queues one delta; `Break` (with why) if the stream ended or sealing failed.
pub fn send_delta(
    sealer: &mut ChunkSealer,
    sink: &mut Sink,
    text: &str,
    ids: &[u32],
) -> ControlFlow<Ended> {
    let plain = encode(response_event::Event::Delta(v1::TextDelta {
        text: text.to_owned(),
        token_ids: ids.to_vec(),
    }));
    let Some(reply) = sealed(&plain, sealer) else {
        return ControlFlow::Break(Ended::Gone);
    };
    match sink.push(reply) {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => ControlFlow::Break(e),
    }
}

/// Seals the receipt as the final chunk.
pub fn send_receipt(
    sealer: ChunkSealer,
    sink: &mut Sink,
    job: &Job,
    release_digest: [u8; 32],
    prompt_tokens: usize,
    completion_tokens: usize,
    finish: FinishReason,
) -> Outcome {
    let finish = match finish {
        FinishReason::Eos | FinishReason::StopString => v1::FinishReason::Stop,
        FinishReason::Length | FinishReason::Cancelled => v1::FinishReason::Length,
    };
    let plain = encode(response_event::Event::Receipt(v1::Receipt {
        release_digest: release_digest.to_vec(),
        model_digest: job.model.0.0.to_vec(),
        adapter_digest: job
            .adapter
            .as_ref()
            .map(|(d, _)| d.0.0.to_vec())
            .unwrap_or_default(),
        prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
        completion_tokens: u32::try_from(completion_tokens).unwrap_or(u32::MAX),
        finish_reason: finish as i32,
    }));
    let sent = match sealer.seal_final(&plain) {
        Ok(c) => sink.push(SubmitReply {
            part: Some(submit_reply::Part::Chunk(c)),
        }),
        Err(_) => Err(Ended::Gone),
    };
    Outcome {
        prompt_tokens,
        completion_tokens,
        finish: match (sent, finish) {
            (Err(e), _) => e.kind(),
            (Ok(()), v1::FinishReason::Stop) => "stop",
            (Ok(()), _) => "length",
        },
        batch: 1,
    }
}

/// Runs `job` and queues sealed deltas, then the receipt (or an error) as the final chunk, on
/// `sink` (which never blocks; [`Sink::finish`] sends what it still holds). The deadline is
/// checked after every generated piece, whatever the client does. Blocking: call it on a
/// blocking thread.
pub fn run(
    engine: &Engine,
    job: Job,
    mut sealer: ChunkSealer,
    sink: &mut Sink,
    deadline: Instant,
    deadline_secs: u64,
    release_digest: [u8; 32],
) -> Outcome {
    let model = match engine.model(&job.model) {
        Ok(m) => m,
        Err(f) => {
            send_error(sealer, sink, &f);
            return Outcome {
                prompt_tokens: 0,
                completion_tokens: 0,
                finish: "unknown_model",
                batch: 1,
            };
        }
    };
    let params = GenerateParams {
        max_tokens: job.max_new_tokens as usize,
        sampling: job.sampling.clone(),
        stop_strings: Vec::new(),
        eos_token_ids: None,
    };
    let mut timed_out = false;
    let mut gone = None;
    let mut completion = 0usize;
    let result = model.loaded.model.generate_with_tokens(
        &model.loaded.tokenizer,
        &job.prompt_ids,
        job.adapter.as_ref().map(|(_, a)| a.as_ref()),
        &params,
        |text, ids| {
            completion += ids.len();
            if let ControlFlow::Break(e) = send_delta(&mut sealer, sink, text, ids) {
                gone = Some(e);
                return ControlFlow::Break(());
            }
            if Instant::now() > deadline {
                timed_out = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    );
    let prompt_tokens = job.prompt_ids.len();
    let fail = |f: Failure, sealer: ChunkSealer, sink: &mut Sink| {
        send_error(sealer, sink, &f);
        Outcome {
            prompt_tokens,
            completion_tokens: completion,
            finish: f.kind(),
            batch: 1,
        }
    };
    if let Some(e) = gone {
        return Outcome {
            prompt_tokens,
            completion_tokens: completion,
            finish: e.kind(),
            batch: 1,
        };
    }
    if timed_out {
        return fail(Failure::Deadline(deadline_secs), sealer, sink);
    }
    let generation = match result {
        Ok(g) => g,
        Err(_) => {
            return fail(
                Failure::Internal("the model failed during generation".into()),
                sealer,
                sink,
            );
        }
    };
    // The generated text is not needed; zeroize the copy the model kept.
    let mut text = generation.text;
    zeroize::Zeroize::zeroize(&mut text);
    send_receipt(
        sealer,
        sink,
        &job,
        release_digest,
        generation.prompt_tokens,
        generation.tokens.len(),
        generation.finish,
    )
}
