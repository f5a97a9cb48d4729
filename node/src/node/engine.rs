//! The model side of the node: the served models and adapters (measured at start-up), and one
//! generation run on a blocking thread, streaming sealed chunks.
//!
//! Generation is `tandem_model::Model::generate_with_tokens`, the same call the device's local
//! path makes, with the same sampling parameters, so greedy outputs match token for token.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message as _;
use tandem_model::{
    Adapter, AdapterCache, AdapterDigest, DType, Device, FinishReason, GenerateParams, LoadedModel,
    ModelDigest, SamplingParams, load_adapter, load_model,
};
use tandem_proto::ChunkSealer;
use tandem_proto::v1::{self, SubmitReply, response_event, submit_reply};
use tokio::sync::mpsc;
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
pub fn send_error(sealer: ChunkSealer, tx: &Tx, failure: &Failure) {
    let plain = encode(response_event::Event::Error(v1::NodeError {
        code: failure.code() as u32,
        message: failure.to_string(),
    }));
    if let Ok(c) = sealer.seal_final(&plain) {
        let _ = tx.blocking_send(Ok(SubmitReply {
            part: Some(submit_reply::Part::Chunk(c)),
        }));
    }
}

/// Seals and sends one delta; `Break` if the client went away or sealing failed.
pub fn send_delta(sealer: &mut ChunkSealer, tx: &Tx, text: &str, ids: &[u32]) -> ControlFlow<()> {
    let plain = encode(response_event::Event::Delta(v1::TextDelta {
        text: text.to_owned(),
        token_ids: ids.to_vec(),
    }));
    let Some(reply) = sealed(&plain, sealer) else {
        return ControlFlow::Break(());
    };
    if tx.blocking_send(Ok(reply)).is_err() {
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// Seals the receipt as the final chunk.
pub fn send_receipt(
    sealer: ChunkSealer,
    tx: &Tx,
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
        Ok(c) => tx
            .blocking_send(Ok(SubmitReply {
                part: Some(submit_reply::Part::Chunk(c)),
            }))
            .is_ok(),
        Err(_) => false,
    };
    Outcome {
        prompt_tokens,
        completion_tokens,
        finish: match (sent, finish) {
            (false, _) => "client_gone",
            (true, v1::FinishReason::Stop) => "stop",
            (true, _) => "length",
        },
        batch: 1,
    }
}

/// Runs `job` and streams sealed deltas, then the receipt (or an error) as the final chunk.
/// Blocking: call it on a blocking thread.
pub fn run(
    engine: &Engine,
    job: Job,
    mut sealer: ChunkSealer,
    tx: &Tx,
    deadline: Instant,
    deadline_secs: u64,
    release_digest: [u8; 32],
) -> Outcome {
    let model = match engine.model(&job.model) {
        Ok(m) => m,
        Err(f) => {
            send_error(sealer, tx, &f);
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
    let mut gone = false;
    let mut completion = 0usize;
    let result = model.loaded.model.generate_with_tokens(
        &model.loaded.tokenizer,
        &job.prompt_ids,
        job.adapter.as_ref().map(|(_, a)| a.as_ref()),
        &params,
        |text, ids| {
            completion += ids.len();
            if send_delta(&mut sealer, tx, text, ids).is_break() {
                gone = true;
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
    let fail = |f: Failure, sealer: ChunkSealer| {
        send_error(sealer, tx, &f);
        Outcome {
            prompt_tokens,
            completion_tokens: completion,
            finish: f.kind(),
            batch: 1,
        }
    };
    if gone {
        return Outcome {
            prompt_tokens,
            completion_tokens: completion,
            finish: "client_gone",
            batch: 1,
        };
    }
    if timed_out {
        return fail(Failure::Deadline(deadline_secs), sealer);
    }
    let generation = match result {
        Ok(g) => g,
        Err(_) => {
            return fail(
                Failure::Internal("the model failed during generation".into()),
                sealer,
            );
        }
    };
    // The generated text is not needed; zeroize the copy the model kept.
    let mut text = generation.text;
    zeroize::Zeroize::zeroize(&mut text);
    send_receipt(
        sealer,
        tx,
        &job,
        release_digest,
        generation.prompt_tokens,
        generation.tokens.len(),
        generation.finish,
    )
}
