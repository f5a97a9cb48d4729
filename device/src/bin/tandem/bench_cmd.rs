//! `tandem model bench`: prefill and decode speed of a model on this machine, the way
//! llama.cpp's `llama-bench` measures it, so the two can be compared side by side
//! (`scripts/anchors/compare.sh`, BENCHMARKS.md).
//!
//! One run: a fresh KV cache; a prompt of `--prompt-tokens` pseudo-random token ids goes through
//! one forward pass (prefill), the first token is picked greedily from its logits (time to first
//! token); then `--new-tokens` decode steps each feed the previous token and pick the next from
//! the logits, so decoding happens at context `--prompt-tokens`. These are the calls
//! `Model::generate` makes (`Cache::new`, `Model::forward_last`, `Sampler::sample`); end-of-text
//! is ignored so every run does the same work. A short warm-up pass precedes the first run.
//!
//! `--threads N` sets `RAYON_NUM_THREADS` before the model is loaded: candle's matmuls
//! (`candle_core::utils::get_num_threads`), its rayon pool, and the palletized kernels all take
//! their thread count from it. Each run records the OS threads the process has
//! (`/proc/self/status` `Threads:`), peak RSS (`VmHWM:`) and `/proc/loadavg`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tandem_model::{Cache, DType, Device, Sampler, SamplingParams, load_model};

use crate::model_cmd::{Precision, resolve};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model directory, or a `.gguf` file (imported as f16 into the cache on first use).
    #[arg(long)]
    model: PathBuf,
    /// Prompt length in tokens (prefill size; decoding then runs at this context).
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    /// Decode steps after the prompt.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Compute threads (sets RAYON_NUM_THREADS); default: RAYON_NUM_THREADS, else all CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Runs (one result each).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Compute precision (the device computes in f32).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Print one JSON object per run, one per line, and nothing else on stdout.
    #[arg(long)]
    json: bool,
}

fn proc_status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn os_threads() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Deterministic pseudo-random token ids in `0..vocab` (llama-bench also feeds random ids).
fn prompt_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32 % vocab as u32
        })
        .collect()
}

struct Run {
    prefill_s: f64,
    ttft_s: f64,
    decode_s: f64,
}

fn one_run(model: &tandem_model::Model, prompt: &[u32], new_tokens: usize) -> Result<(Run, usize)> {
    let mut sampler = Sampler::new(SamplingParams::default())?;
    let mut cache = Cache::new(model, 1, prompt.len() + new_tokens + 1)?;
    let mut context = prompt.to_vec();
    let start = Instant::now();
    let ids = model.tokens_tensor(prompt)?;
    let logits = model.forward_last(&ids, None, &mut cache)?;
    let logits = logits.squeeze(0)?.to_vec1::<f32>()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut next = sampler.sample(&logits, &context)?;
    let ttft_s = start.elapsed().as_secs_f64();
    context.push(next);
    let t = Instant::now();
    for _ in 0..new_tokens {
        let ids = model.tokens_tensor(&[next])?;
        let logits = model
            .forward_last(&ids, None, &mut cache)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        next = sampler.sample(&logits, &context)?;
        context.push(next);
    }
    let decode_s = t.elapsed().as_secs_f64();
    Ok((
        Run {
            prefill_s,
            ttft_s,
            decode_s,
        },
        cache.bytes(),
    ))
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // SAFETY: the bench runs on the main thread before anything has started a thread
        // (no model is loaded yet, so neither candle nor rayon has started its pool).
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string())
        };
    }
    if a.prompt_tokens == 0 {
        bail!("--prompt-tokens must be at least 1 (prefill needs a prompt)");
    }
    if a.new_tokens == 0 {
        bail!("--new-tokens must be at least 1 (decode speed needs a decode step)");
    }
    if a.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if !a.model.exists() {
        bail!(
            "model {} does not exist: pass a model directory (config.json, model.safetensors, \
             tokenizer.json) or a .gguf file",
            a.model.display()
        );
    }
    let threads: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let dir = resolve(&a.model)?;
    let t = Instant::now();
    let dtype = match a.dtype {
        Precision::F32 => DType::F32,
        Precision::F16 => DType::F16,
    };
    let m = load_model(&dir, dtype, &Device::Cpu)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_after_load_kb = proc_status_kb("VmRSS:");
    let model = &m.model;
    let cfg = model.config();
    let ctx = cfg.max_position_embeddings;
    let needed = a.prompt_tokens + a.new_tokens + 1;
    if needed > ctx {
        bail!(
            "--prompt-tokens {} + --new-tokens {} (+1 for the first token) = {needed} tokens, \
             but the model's context is {ctx} tokens: make them smaller",
            a.prompt_tokens,
            a.new_tokens
        );
    }
    let prompt = prompt_ids(a.prompt_tokens, cfg.vocab_size, 0x9E37_79B9_7F4A_7C15);

    // Warm-up: page in every weight and let the thread pool start.
    one_run(model, &prompt[..a.prompt_tokens.min(8)], 2).context("warm-up run")?;

    let weight_bytes = model.weight_bytes();
    let mut decode_rates = Vec::with_capacity(a.repeat);
    let mut prefill_rates = Vec::with_capacity(a.repeat);
    for i in 0..a.repeat {
        let load_before = loadavg();
        let (r, kv_bytes) = one_run(model, &prompt, a.new_tokens)
            .with_context(|| format!("run {} of {}", i + 1, a.repeat))?;
        let prefill_tok_s = a.prompt_tokens as f64 / r.prefill_s;
        let decode_tok_s = a.new_tokens as f64 / r.decode_s;
        prefill_rates.push(prefill_tok_s);
        decode_rates.push(decode_tok_s);
        let peak_rss_bytes = proc_status_kb("VmHWM:").map(|k| k * 1024);
        let v = json!({
            "run": i,
            "model": a.model.display().to_string(),
            "model_dir": dir.display().to_string(),
            "model_digest": m.digest.to_string(),
            "stored_dtypes": m.stored_dtypes.iter().collect::<Vec<_>>(),
            "dtype": format!("{:?}", model.dtype()).to_lowercase(),
            "threads": threads,
            "os_threads": os_threads(),
            "cpus": cpus,
            "prompt_tokens": a.prompt_tokens,
            "new_tokens": a.new_tokens,
            "prefill_s": r.prefill_s,
            "prefill_tok_s": prefill_tok_s,
            "ttft_s": r.ttft_s,
            "decode_s": r.decode_s,
            "decode_tok_s": decode_tok_s,
            "peak_rss_bytes": peak_rss_bytes,
            "rss_after_load_bytes": rss_after_load_kb.map(|k| k * 1024),
            "weight_bytes": weight_bytes,
            "kv_cache_bytes": kv_bytes,
            "load_s": load_s,
            "loadavg_before": load_before,
            "loadavg": loadavg(),
        });
        if a.json {
            println!("{v}");
        } else {
            eprintln!(
                "run {}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens at \
                 context {}), first token {:.0} ms, peak RSS {:.1} MB",
                i + 1,
                prefill_tok_s,
                a.prompt_tokens,
                decode_tok_s,
                a.new_tokens,
                a.prompt_tokens,
                r.ttft_s * 1e3,
                peak_rss_bytes.unwrap_or(0) as f64 / 1e6
            );
        }
    }
    if !a.json {
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{}: {} threads, {:?}; prefill {:.1} tok/s, decode {:.1} tok/s (median of {}); \
             weights {:.1} MB; load average {}",
            a.model.display(),
            threads,
            model.dtype(),
            median(&mut prefill_rates),
            median(&mut decode_rates),
            a.repeat,
            weight_bytes as f64 / 1e6,
            loadavg().map_or("unknown".into(), |l| format!("{} {} {}", l[0], l[1], l[2])),
        );
    }
    Ok(())
}
