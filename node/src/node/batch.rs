//! Batched decoding (opt-in: `limits.max_batch > 1`): requests for the same model and adapter
//! that are waiting together run as one batch — one left-padded prefill
//! (`Model::prefill_batch`) and one `[batch, 1]` forward pass per decoding step — instead of one
//! forward pass per request. Each sequence keeps its own sampler, stream decoder, sealed chunk
//! stream and limits; a sequence that ends stops streaming while the rest continue.
//!
//! Per sequence this follows `Model::generate_with_tokens` step for step (same sampler, same
//! context, same EOS rule, same delta grouping), and the model keeps each sequence's RoPE
//! positions and masks its padding, so greedy tokens equal the single-sequence path up to
//! floating-point summation order (tested on the embedded model in `serve_batch.rs`).
//!
//! Static batches: a request arriving within `GATHER` (3 ms) of a batch's first request joins it;
//! one arriving later, while the batch runs, waits for the next one.
//!
//! No sequence waits on its client: chunks go through each request's non-blocking
//! [`engine::Sink`], a sequence whose client takes no chunk within `limits.stall_timeout_ms` is
//! ended on its own (the others keep decoding), and what a finished sequence's stream still
//! holds is sent on the async runtime while the worker starts its next batch.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tandem_model::{Cache, Sampler, StreamDecoder};
use tandem_proto::ChunkSealer;

use super::engine::{self, Ended, Engine, Job, Outcome, Sink};
use super::status::Failure;

/// One request waiting for a batch.
pub struct Pending {
    /// The request.
    pub job: Job,
    /// Its response stream.
    pub sealer: ChunkSealer,
    /// Where chunks go (never blocks).
    pub sink: Sink,
    /// Its deadline.
    pub deadline: Instant,
    /// Called once with the outcome (releases the queue place, logs the event).
    pub done: Box<dyn FnOnce(Outcome) + Send>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

/// How long a batch waits, after its first request, for more requests to join it: clients
/// that finished a stream together send their next requests a few milliseconds apart, and a
/// batch started without them leaves them for a second batch run after it.
const GATHER: Duration = Duration::from_millis(3);

/// The batch queue and its worker threads.
#[derive(Debug)]
pub struct Batcher {
    queue: Mutex<VecDeque<Pending>>,
    ready: Condvar,
}

impl Batcher {
    /// Starts `workers` threads running batches of at most `max_batch` sequences; what a
    /// finished stream still holds is sent on `runtime`.
    pub fn start(
        engine: Arc<Engine>,
        workers: usize,
        max_batch: usize,
        deadline_secs: u64,
        release_digest: [u8; 32],
        runtime: tokio::runtime::Handle,
    ) -> Arc<Batcher> {
        let b = Arc::new(Batcher {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        });
        for i in 0..workers {
            let b = b.clone();
            let engine = engine.clone();
            let runtime = runtime.clone();
            let _ = std::thread::Builder::new()
                .name(format!("batch-{i}"))
                .spawn(move || {
                    loop {
                        let batch = b.next_batch(&engine, max_batch);
                        run_batch(&engine, batch, deadline_secs, release_digest, &runtime);
                    }
                });
        }
        b
    }

    /// Queues a request.
    pub fn submit(&self, p: Pending) {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(p);
        self.ready.notify_one();
    }

    /// Blocks for the oldest request, then takes every queued request that can share its
    /// batch: same model and adapter, and the longest prompt plus each one's new tokens fits
    /// the context.
    fn next_batch(&self, engine: &Engine, max_batch: usize) -> Vec<Pending> {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while q.is_empty() {
            q = self
                .ready
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let Some(first) = q.pop_front() else {
            return Vec::new();
        };
        let ctx = engine
            .model(&first.job.model)
            .map(|m| m.loaded.model.config().max_position_embeddings)
            .unwrap_or(0);
        let key = |p: &Pending| (p.job.model, p.job.adapter.as_ref().map(|(d, _)| *d));
        let k = key(&first);
        let mut longest = first.job.prompt_ids.len();
        let mut most_new = first.job.max_new_tokens as usize;
        let mut batch = vec![first];
        let until = Instant::now() + GATHER;
        loop {
            let mut i = 0;
            while i < q.len() && batch.len() < max_batch {
                let p = &q[i];
                let l = longest.max(p.job.prompt_ids.len());
                let n = most_new.max(p.job.max_new_tokens as usize);
                if key(p) == k && l + n <= ctx {
                    longest = l;
                    most_new = n;
                    if let Some(p) = q.remove(i) {
                        batch.push(p);
                    }
                } else {
                    i += 1;
                }
            }
            // Requests that arrive within `GATHER` of the first join its batch.
            let now = Instant::now();
            if batch.len() >= max_batch || now >= until {
                break;
            }
            q = self
                .ready
                .wait_timeout(q, until - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        batch
    }
}

/// One sequence's decoding state.
struct Seq<'t> {
    p: Option<Pending>,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    context: Vec<u32>,
    generated: Vec<u32>,
    pending: Vec<u32>,
    text_len: usize,
    finish: Option<tandem_model::FinishReason>,
    failure: Option<Failure>,
    /// The client's stream ended (went away, or stalled past the bound).
    gone: Option<Ended>,
}

/// Sends what `sink` still holds on `runtime`, then reports the outcome.
fn finish(
    runtime: &tokio::runtime::Handle,
    sink: Sink,
    deadline: Instant,
    done: Box<dyn FnOnce(Outcome) + Send>,
    out: Outcome,
) {
    runtime.spawn(async move { done(sink.finish(out, deadline).await) });
}

fn run_batch(
    engine: &Engine,
    batch: Vec<Pending>,
    deadline_secs: u64,
    release_digest: [u8; 32],
    runtime: &tokio::runtime::Handle,
) {
    if batch.is_empty() {
        return;
    }
    let model = match engine.model(&batch[0].job.model) {
        Ok(m) => m,
        Err(f) => {
            for mut p in batch {
                engine::send_error(p.sealer, &mut p.sink, &f);
                let out = Outcome {
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    finish: f.kind(),
                    batch: 1,
                };
                finish(runtime, p.sink, p.deadline, p.done, out);
            }
            return;
        }
    };
    let m = &model.loaded.model;
    let adapter = batch[0].job.adapter.as_ref().map(|(_, a)| a.clone());
    let eos = m.config().eos_token_ids.clone();
    let mut seqs: Vec<Seq> = Vec::with_capacity(batch.len());
    for mut p in batch {
        if Instant::now() > p.deadline {
            let f = Failure::Deadline(deadline_secs);
            engine::send_error(p.sealer, &mut p.sink, &f);
            let out = Outcome {
                prompt_tokens: p.job.prompt_ids.len(),
                completion_tokens: 0,
                finish: f.kind(),
                batch: 1,
            };
            finish(runtime, p.sink, p.deadline, p.done, out);
            continue;
        }
        let sampler = Sampler::new(p.job.sampling.clone());
        let (sampler, failure) = match sampler {
            Ok(s) => (Some(s), None),
            Err(_) => (None, Some(Failure::Malformed("sampling parameters".into()))),
        };
        let Some(sampler) = sampler else {
            let f = failure.unwrap_or(Failure::Internal("sampler".into()));
            engine::send_error(p.sealer, &mut p.sink, &f);
            let out = Outcome {
                prompt_tokens: p.job.prompt_ids.len(),
                completion_tokens: 0,
                finish: f.kind(),
                batch: 1,
            };
            finish(runtime, p.sink, p.deadline, p.done, out);
            continue;
        };
        seqs.push(Seq {
            context: p.job.prompt_ids.to_vec(),
            p: Some(p),
            sampler,
            decoder: StreamDecoder::new(&model.loaded.tokenizer),
            generated: Vec::new(),
            pending: Vec::new(),
            text_len: 0,
            finish: None,
            failure: None,
            gone: None,
        });
    }
    if seqs.is_empty() {
        return;
    }
    let longest = seqs.iter().map(|s| s.context.len()).max().unwrap_or(0);
    let most_new = seqs
        .iter()
        .filter_map(|s| s.p.as_ref().map(|p| p.job.max_new_tokens as usize))
        .max()
        .unwrap_or(0);
    let capacity = (longest + most_new).min(m.config().max_position_embeddings);
    let result = decode(
        m,
        adapter.as_deref(),
        &eos,
        &mut seqs,
        longest,
        capacity,
        deadline_secs,
    );
    if result.is_err() {
        for s in &mut seqs {
            if s.finish.is_none() && s.failure.is_none() {
                s.failure = Some(Failure::Internal(
                    "the model failed during generation".into(),
                ));
            }
        }
    }
    let n = seqs.len();
    for mut s in seqs {
        let Some(p) = s.p.take() else { continue };
        let mut sink = p.sink;
        let mut flush = |text: &str, ids: &[u32], sealer: &mut ChunkSealer| {
            engine::send_delta(sealer, &mut sink, text, ids)
        };
        let mut sealer = p.sealer;
        if s.gone.is_none() && s.failure.is_none() {
            // As generate_with_tokens: the decoder's held-back text, then leftover ids.
            if let Ok(Some(rest)) = s.decoder.finish()
                && !rest.is_empty()
            {
                let _ = flush(&rest, &s.pending, &mut sealer);
                s.pending.clear();
            }
            if !s.pending.is_empty() {
                let _ = flush("", &s.pending, &mut sealer);
            }
        }
        let prompt_tokens = p.job.prompt_ids.len();
        let outcome = if let Some(e) = s.gone {
            Outcome {
                prompt_tokens,
                completion_tokens: s.generated.len(),
                finish: e.kind(),
                batch: 1,
            }
        } else if let Some(f) = s.failure {
            engine::send_error(sealer, &mut sink, &f);
            Outcome {
                prompt_tokens,
                completion_tokens: s.generated.len(),
                finish: f.kind(),
                batch: 1,
            }
        } else {
            engine::send_receipt(
                sealer,
                &mut sink,
                &p.job,
                release_digest,
                prompt_tokens,
                s.generated.len(),
                s.finish.unwrap_or(tandem_model::FinishReason::Length),
            )
        };
        let out = Outcome {
            batch: n,
            ..outcome
        };
        finish(runtime, sink, p.deadline, p.done, out);
    }
}

fn decode(
    m: &tandem_model::Model,
    adapter: Option<&tandem_model::Adapter>,
    eos: &[u32],
    seqs: &mut [Seq],
    longest: usize,
    capacity: usize,
    deadline_secs: u64,
) -> tandem_model::Result<()> {
    let b = seqs.len();
    let mut cache = Cache::new(m, b, capacity)?;
    let prompts: Vec<&[u32]> = seqs.iter().map(|s| s.context.as_slice()).collect();
    let logits = m.prefill_batch(&prompts, adapter, &mut cache)?;
    let mut rows: Vec<Vec<f32>> = logits.narrow(1, longest - 1, 1)?.squeeze(1)?.to_vec2()?;
    loop {
        for (s, row) in seqs.iter_mut().zip(&rows) {
            if s.finish.is_some() || s.failure.is_some() || s.gone.is_some() {
                continue;
            }
            let Some(p) = s.p.as_mut() else { continue };
            // A stalled client is found even while its decoder holds text back.
            if let Err(e) = p.sink.poll() {
                s.gone = Some(e);
                continue;
            }
            let next = s.sampler.sample(row, &s.context)?;
            if eos.contains(&next) {
                s.finish = Some(tandem_model::FinishReason::Eos);
                continue;
            }
            s.generated.push(next);
            s.context.push(next);
            s.pending.push(next);
            if let Some(piece) = s.decoder.push(next)?
                && !piece.is_empty()
            {
                s.text_len += piece.len();
                if let std::ops::ControlFlow::Break(e) =
                    engine::send_delta(&mut p.sealer, &mut p.sink, &piece, &s.pending)
                {
                    s.gone = Some(e);
                    continue;
                }
                s.pending.clear();
            }
            if Instant::now() > p.deadline {
                s.failure = Some(Failure::Deadline(deadline_secs));
                continue;
            }
            if s.generated.len() >= p.job.max_new_tokens as usize {
                s.finish = Some(tandem_model::FinishReason::Length);
            }
        }
        let active = seqs
            .iter()
            .any(|s| s.finish.is_none() && s.failure.is_none() && s.gone.is_none());
        if !active || cache.len() >= capacity {
            for s in seqs.iter_mut() {
                if s.finish.is_none() && s.failure.is_none() && s.gone.is_none() {
                    s.finish = Some(tandem_model::FinishReason::Length);
                }
            }
            return Ok(());
        }
        let input: Vec<u32> = seqs
            .iter()
            .map(|s| s.context.last().copied().unwrap_or(0))
            .collect();
        let t = tandem_model::Tensor::from_vec(input, (b, 1), m.device())?;
        rows = m.forward_last(&t, adapter, &mut cache)?.to_vec2()?;
    }
}
