//! `tandem model generate | inspect | import`.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use serde_json::json;
use tandem_model::{
    DType, Device, GenerateParams, ImportProgress, LoadedAdapter, LoadedModel, PromptLookup,
    SamplingParams, load_adapter, load_model,
};

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
    /// Generate text from a prompt, streaming it to the terminal.
    Generate {
        /// Model directory.
        #[arg(long)]
        model: PathBuf,
        /// LoRA adapter directory.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Most new tokens.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Keep only the k most likely tokens.
        #[arg(long)]
        top_k: Option<usize>,
        /// Nucleus sampling threshold in (0, 1].
        #[arg(long)]
        top_p: Option<f64>,
        /// Repetition penalty (1.0 is none).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f64,
        /// RNG seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop when this string appears (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Compute precision.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Precision,
        /// Prompt-lookup speculative decoding with up to N draft tokens per step (greedy
        /// only; the output is that of plain greedy decoding). 0 is off.
        #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
        speculate: u16,
        /// Print exactly one JSON object at the end instead of streaming.
        #[arg(long)]
        json: bool,
    },
    /// Prefill and decode speed, time to first token and peak RSS on this machine (one JSON
    /// object per run with --json); what `scripts/anchors/compare.sh` runs beside llama-bench.
    Bench(crate::bench_cmd::BenchArgs),
    /// A conversation rendered with the model's chat template: the exact prompt it sees.
    ChatTemplate(crate::chat_template_cmd::ChatTemplateArgs),
    /// Architecture, parameter count, dtype, bytes and digest of a model directory.
    Inspect {
        /// Model directory (or a `.gguf` file, imported into the cache on first use).
        dir: PathBuf,
        /// Print exactly one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Convert a GGUF file (llama.cpp's format) into a Hugging Face model directory:
    /// config.json, generation_config.json, model.safetensors, tokenizer.json and
    /// tokenizer_config.json (with the chat template).
    Import {
        /// The GGUF file.
        file: PathBuf,
        /// The directory to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Weight precision on disk.
        #[arg(long, value_enum, default_value = "f16")]
        dtype: Precision,
        /// Print exactly one JSON object at the end (no progress bar).
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub fn run(self) -> Result<()> {
        match self {
            Cmd::Generate {
                model,
                adapter,
                prompt,
                max_tokens,
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                seed,
                stop,
                dtype,
                speculate,
                json,
            } => {
                let params = GenerateParams {
                    max_tokens,
                    sampling: SamplingParams {
                        temperature,
                        top_k,
                        top_p,
                        repetition_penalty,
                        seed,
                    },
                    stop_strings: stop,
                    eos_token_ids: None,
                };
                let speculate = (speculate > 0).then(|| PromptLookup {
                    max_draft: usize::from(speculate),
                    ..PromptLookup::default()
                });
                generate(
                    &model,
                    adapter.as_deref(),
                    &prompt,
                    &params,
                    speculate,
                    dtype,
                    json,
                )
            }
            Cmd::Inspect { dir, json } => inspect(&dir, json),
            Cmd::Import {
                file,
                out,
                dtype,
                json,
            } => import(&file, &out, dtype, json),
            Cmd::ChatTemplate(a) => crate::chat_template_cmd::run(a),
            Cmd::Bench(a) => crate::bench_cmd::run(a),
        }
    }
}

fn load(
    model: &Path,
    adapter: Option<&Path>,
    dtype: Precision,
) -> Result<(LoadedModel, Option<LoadedAdapter>)> {
    let dir = resolve(model)?;
    let m = load_model(&dir, dtype.dtype(), &Device::Cpu)
        .with_context(|| format!("loading model {}", model.display()))?;
    let a = adapter
        .map(|a| {
            load_adapter(a, m.model.config(), dtype.dtype(), &Device::Cpu)
                .with_context(|| format!("loading adapter {}", a.display()))
        })
        .transpose()?;
    Ok((m, a))
}

fn generate(
    model: &Path,
    adapter: Option<&Path>,
    prompt: &str,
    params: &GenerateParams,
    speculate: Option<PromptLookup>,
    dtype: Precision,
    json: bool,
) -> Result<()> {
    let (m, a) = load(model, adapter, dtype)?;
    let ids = m.tokenizer.encode(prompt)?;
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    let (g, stats) = m.model.generate_speculative(
        &m.tokenizer,
        &ids,
        a.as_ref().map(|a| &a.adapter),
        params,
        speculate,
        |d, _| {
            if !json {
                let _ = out.write_all(d.as_bytes());
                let _ = out.flush();
            }
            ControlFlow::Continue(())
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    if json {
        writeln!(
            out,
            "{}",
            json!({
                "text": g.text,
                "tokens": g.tokens.len(),
                "token_ids": g.tokens,
                "prompt_tokens": g.prompt_tokens,
                "finish_reason": g.finish.as_str(),
                "seconds": secs,
                "draft_tokens": stats.proposed,
                "accepted_draft_tokens": stats.accepted,
                "model_digest": m.digest.to_string(),
                "adapter_digest": a.as_ref().map(|a| a.digest.to_string()),
            })
        )?;
    } else {
        writeln!(out)?;
        eprintln!(
            "[{} tokens in {secs:.2}s, {:.1} tok/s, finish: {}]",
            g.tokens.len(),
            g.tokens.len() as f64 / secs.max(1e-9),
            g.finish.as_str()
        );
    }
    Ok(())
}

fn inspect(dir: &Path, json: bool) -> Result<()> {
    let resolved = resolve(dir)?;
    let m = load_model(&resolved, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let c = m.model.config();
    let dtypes: Vec<&String> = m.stored_dtypes.iter().collect();
    let v = json!({
        "architecture": "llama",
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "attention_heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "tied_embeddings": c.tie_word_embeddings,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "parameters": c.parameter_count(),
        "stored_dtypes": dtypes,
        "file_bytes": m.file_bytes,
        "tokenizer_vocab": m.tokenizer.vocab_size(),
        "eos_token_ids": c.eos_token_ids,
        "digest": m.digest.to_string(),
    });
    if json {
        println!("{v}");
    } else if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            println!("{k:<24} {val}");
        }
    }
    Ok(())
}

/// A progress bar over the tensors of a GGUF import (hidden when stderr is not a terminal).
fn import_bar(what: String) -> (indicatif::ProgressBar, impl FnMut(ImportProgress<'_>)) {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} tensors ({elapsed}) {prefix}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what);
    let bar = pb.clone();
    (pb, move |p: ImportProgress<'_>| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_prefix(p.tensor.to_string());
    })
}

/// The model directory for `path`: itself, or for a `.gguf` file its import (f16) in the cache,
/// made on first use with a progress bar.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !tandem_model::gguf::is_gguf(path) {
        return Ok(path.to_owned());
    }
    let cache = tandem_device::models::cache_dir();
    let (pb, mut progress) = import_bar(format!("importing {} (first use)", path.display()));
    let dir = tandem_model::resolve_model_path(path, &cache, DType::F16, &mut progress)
        .with_context(|| format!("importing {} into {}", path.display(), cache.display()))?;
    pb.finish_and_clear();
    Ok(dir)
}

fn import(file: &Path, out: &Path, dtype: Precision, json: bool) -> Result<()> {
    let start = Instant::now();
    let (pb, mut progress) = import_bar(format!("importing {}", file.display()));
    if json {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let report = tandem_model::import_gguf(file, out, dtype.dtype(), &mut progress)
        .with_context(|| format!("importing {} into {}", file.display(), out.display()))?;
    pb.finish_and_clear();
    let digest = tandem_model::model_digest(out)?;
    let c = &report.config;
    let v = json!({
        "source": file.display().to_string(),
        "out": out.display().to_string(),
        "dtype": format!("{:?}", dtype.dtype()).to_lowercase(),
        "tensors": report.tensors,
        "source_types": report.source_types,
        "parameters": c.parameter_count(),
        "weight_bytes": report.weight_bytes,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "eos_token_ids": c.eos_token_ids,
        "bos_token_id": c.bos_token_id,
        "digest": digest.to_string(),
        "seconds": start.elapsed().as_secs_f64(),
    });
    if json {
        println!("{v}");
    } else {
        eprintln!(
            "imported {} tensors ({} parameters, {:.1} MB) into {} in {:.1}s",
            report.tensors,
            c.parameter_count(),
            report.weight_bytes as f64 / 1e6,
            out.display(),
            start.elapsed().as_secs_f64()
        );
        println!("{}", digest);
    }
    Ok(())
}
