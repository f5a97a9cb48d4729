//! `tandem-lab perplexity`: perplexity of a text file under a model (and adapter).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tandem_model::{Cache, DType, Device, LoadedAdapter, LoadedModel, load_adapter, load_model};

/// Compute precision.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Precision {
    /// 32-bit float.
    F32,
    /// 16-bit float (half the memory traffic).
    F16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Perplexity of a text file over its tokens 2..n (long texts are chunked by the context
    /// length; context restarts at each chunk boundary).
    Perplexity {
        /// Model directory (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// LoRA adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// UTF-8 text file.
        #[arg(long)]
        text: PathBuf,
        /// Chunk length in tokens (default: the model's max_position_embeddings, at most 2048).
        #[arg(long)]
        context: Option<usize>,
        /// Compute precision.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Precision,
        /// Feed the tokens one at a time through the KV cache (the decode path generation
        /// uses, e.g. the int8 palletized decode kernel) instead of one pass per chunk.
        #[arg(long)]
        token_by_token: bool,
        /// KV cache storage: `dense` (compute dtype) or `int8` (one byte per value plus a
        /// scale per vector). Only matters with --token-by-token, where the cache is re-read.
        #[arg(long, default_value = "dense")]
        kv_cache: tandem_model::KvFormat,
        /// Print exactly one JSON object.
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub fn run(self) -> Result<()> {
        match self {
            Cmd::Perplexity {
                model,
                adapter,
                text,
                context,
                dtype,
                token_by_token,
                kv_cache,
                json,
            } => perplexity(
                &model,
                adapter.as_deref(),
                &text,
                dtype,
                Scoring {
                    context,
                    token_by_token,
                    kv_cache,
                },
                json,
            ),
        }
    }
}

fn load(
    model: &Path,
    adapter: Option<&Path>,
    dtype: Precision,
) -> Result<(LoadedModel, Option<LoadedAdapter>)> {
    let m = load_model(model, dtype.dtype(), &Device::Cpu)
        .with_context(|| format!("loading model {}", model.display()))?;
    let a = adapter
        .map(|a| {
            load_adapter(a, m.model.config(), dtype.dtype(), &Device::Cpu)
                .with_context(|| format!("loading adapter {}", a.display()))
        })
        .transpose()?;
    Ok((m, a))
}

/// How `tandem-lab perplexity` feeds the text through the model.
struct Scoring {
    /// Window length (default: the model's context).
    context: Option<usize>,
    /// One token per forward pass through the KV cache (the decode path).
    token_by_token: bool,
    kv_cache: tandem_model::KvFormat,
}

fn perplexity(
    model: &Path,
    adapter: Option<&Path>,
    text: &Path,
    dtype: Precision,
    scoring: Scoring,
    json: bool,
) -> Result<()> {
    let Scoring {
        context,
        token_by_token,
        kv_cache,
    } = scoring;
    let (m, a) = load(model, adapter, dtype)?;
    let text = std::fs::read_to_string(text)
        .with_context(|| format!("reading {} (must be UTF-8 text)", text.display()))?;
    let ids = m.tokenizer.encode(&text)?;
    if ids.len() < 2 {
        bail!(
            "the text has {} token(s); perplexity needs at least 2",
            ids.len()
        );
    }
    let max = m.model.config().max_position_embeddings;
    let ctx = context.unwrap_or(max.min(2048)).min(max);
    if ctx < 2 {
        bail!("--context must be at least 2");
    }
    // Windows of `ctx` tokens overlapping by one, so every token 2..n is predicted once.
    let step = ctx - 1;
    let starts: Vec<usize> = (0..ids.len() - 1).step_by(step).collect();
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(starts.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} chunks {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let (mut nll, mut scored) = (0f64, 0usize);
    let mut cache = Cache::with_format(&m.model, 1, ctx, kv_cache)?;
    for &s in &starts {
        let window = &ids[s..(s + ctx).min(ids.len())];
        cache.reset();
        let adapter = a.as_ref().map(|a| &a.adapter);
        let logits = if token_by_token {
            let rows = window[..window.len() - 1]
                .iter()
                .map(|&t| {
                    m.model
                        .forward_last(&m.model.tokens_tensor(&[t])?, adapter, &mut cache)
                })
                .collect::<tandem_model::Result<Vec<_>>>()?;
            tandem_model::Tensor::cat(&rows, 0)?
        } else {
            m.model
                .forward(&m.model.tokens_tensor(window)?, adapter, &mut cache)?
                .squeeze(0)?
        };
        let logp = candle_nn_log_softmax(&logits)?;
        for (i, &t) in window.iter().enumerate().skip(1) {
            nll -= f64::from(logp[i - 1][t as usize]);
            scored += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ppl = (nll / scored as f64).exp();
    if json {
        println!(
            "{}",
            json!({
                "perplexity": ppl,
                "tokens": ids.len(),
                "scored_tokens": scored,
                "mean_nll": nll / scored as f64,
                "context": ctx,
                "chunks": starts.len(),
                "token_by_token": token_by_token,
                "kv_cache": kv_cache.name(),
                "kv_cache_bytes": cache.bytes(),
                "model_digest": m.digest.to_string(),
                "adapter_digest": a.as_ref().map(|a| a.digest.to_string()),
            })
        );
    } else {
        println!(
            "perplexity {ppl:.4} over {scored} predicted tokens ({} tokens, {} chunk(s) of ≤{ctx})",
            ids.len(),
            starts.len()
        );
    }
    Ok(())
}

/// Row-wise log-softmax of `[seq, vocab]` f32 logits.
fn candle_nn_log_softmax(logits: &tandem_model::Tensor) -> Result<Vec<Vec<f32>>> {
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + r.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            r.into_iter().map(|x| x - lse).collect()
        })
        .collect())
}
