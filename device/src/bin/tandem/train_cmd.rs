//! `tandem model train-tokenizer | train | train-adapter`: training the embedded models.
//!
//! The loop, optimizer, schedule, checkpoints and task data live in `tandem_model::train` and
//! `tandem_model::tasks`; this file parses flags, reads and writes the files, and shows progress.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tandem_model::train::checkpoint;
use tandem_model::train::data::{TokenStream, split_documents};
use tandem_model::train::optim::AdamWParams;
use tandem_model::train::schedule::CosineSchedule;
use tandem_model::train::tokenizer::{EOT, train_bpe};
use tandem_model::train::trainer::{StepStats, TrainConfig, Trainer, init_deterministic, lm_loss};
use tandem_model::{Config, DType, Device, Model, Tokenizer, VarBuilder, VarMap};

/// `tandem model train-tokenizer`
#[derive(Debug, Args)]
pub struct TrainTokenizerArgs {
    /// Corpus text (documents separated by `<|endoftext|>` lines).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Vocabulary size, including the 256 byte tokens and `<|endoftext|>`.
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// Where to write `tokenizer.json`.
    #[arg(long)]
    pub out: PathBuf,
}

/// `tandem model train`
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// `device`, `server`, or a path to a `config.json` (Hugging Face Llama layout).
    #[arg(long)]
    pub config: String,
    /// Training corpus (documents separated by `<|endoftext|>` lines).
    #[arg(long)]
    pub data: PathBuf,
    /// `tokenizer.json` to tokenize with (copied into the exported model).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Run directory: `checkpoint/` (resumable state) and `model/` (exported weights).
    #[arg(long)]
    pub out: PathBuf,
    /// Total optimizer steps (the cosine schedule ends here).
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Resume from this checkpoint directory (usually OUT/checkpoint).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Seed for initialisation and batch sampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Compute threads (sets RAYON_NUM_THREADS for candle; the process re-executes itself if needed).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per sequence (at most the config's context).
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Save a checkpoint (and export the model) every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Held-out text to report loss on at each checkpoint.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Stop after this many steps in this invocation (the schedule still spans --steps).
    #[arg(long)]
    pub max_steps_now: Option<u64>,
}

/// Size presets. Both use the tokenizer's vocabulary and a 256-token context.
pub fn preset(name: &str, vocab: usize) -> Option<Config> {
    let (hidden, layers, heads, kv, inter) = match name {
        // ≈ 4.0 M parameters with a 4096 vocabulary.
        "device" => (256, 4, 4, 2, 688),
        // ≈ 4x the device model.
        "server" => (384, 8, 6, 2, 1024),
        _ => return None,
    };
    Some(Config {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        eos_token_ids: vec![0],
        bos_token_id: None,
    })
}

/// Makes candle use `threads` compute threads. candle reads `RAYON_NUM_THREADS` when it first
/// needs it and environment changes are not safe in a running process, so when the variable
/// differs the process re-runs itself with it set and exits with the child's status.
pub fn ensure_threads(threads: Option<usize>) -> Result<()> {
    let Some(n) = threads else { return Ok(()) };
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    if std::env::var("RAYON_NUM_THREADS").ok().as_deref() == Some(&n.to_string()) {
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the running executable to re-run it")?;
    let status = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", n.to_string())
        .status()
        .context("re-running with RAYON_NUM_THREADS set")?;
    std::process::exit(status.code().unwrap_or(1));
}

pub fn train_tokenizer(a: &TrainTokenizerArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.corpus).with_context(|| format!("reading {}", a.corpus.display()))?;
    let docs = split_documents(&text);
    if docs.is_empty() {
        bail!("{} holds no text", a.corpus.display());
    }
    let spinner = ProgressBar::new_spinner().with_message(format!("training BPE on {} documents", docs.len()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let json = train_bpe(docs.iter().copied(), a.vocab_size)?;
    spinner.finish_and_clear();
    std::fs::write(&a.out, &json).with_context(|| format!("writing {}", a.out.display()))?;
    let tk = Tokenizer::from_bytes(json.as_bytes(), &a.out)?;
    println!("wrote {} (vocabulary {}, {EOT} = {:?})", a.out.display(), tk.vocab_size(), tk.token_to_id(EOT));
    Ok(())
}

/// Tokenizes `path` once and caches the ids next to it (`PATH.<tokenizer digest>.u16`).
pub fn load_tokens(path: &Path, tokenizer: &Tokenizer, tokenizer_bytes: &[u8]) -> Result<TokenStream> {
    // FNV-1a of the tokenizer file: a cache key, not a security check.
    let digest = format!(
        "{:016x}",
        tokenizer_bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
    );
    let cache = PathBuf::from(format!("{}.{digest}.u16", path.display()));
    let vocab = tokenizer.vocab_size();
    if let Ok(bytes) = std::fs::read(&cache) {
        let meta_ok = std::fs::metadata(&cache)
            .and_then(|c| Ok(c.modified()? >= std::fs::metadata(path)?.modified()?))
            .unwrap_or(false);
        if meta_ok {
            return Ok(TokenStream::from_u16_le(&bytes, vocab)?);
        }
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs = split_documents(&text);
    let eos = tokenizer.token_to_id(EOT).with_context(|| format!("the tokenizer has no {EOT} token"))?;
    let bar = ProgressBar::new(docs.len() as u64).with_style(
        ProgressStyle::with_template("tokenizing {bar:30} {pos}/{len} documents {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut ids = Vec::with_capacity(docs.len());
    for d in &docs {
        ids.push(tokenizer.encode(d)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let stream = TokenStream::from_documents(ids, eos);
    // A failed cache write only costs time on the next run.
    let _ = std::fs::write(&cache, stream.to_u16_le()?);
    Ok(stream)
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta_precise}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Mean next-token loss over `windows` (each `seq_len + 1` tokens), batched by 8.
pub fn eval_loss(model: &Model, windows: &[&[u32]], adapter: Option<&tandem_model::Adapter>) -> Result<f64> {
    let mut total = 0.0;
    let mut count = 0usize;
    for chunk in windows.chunks(8) {
        let t = chunk[0].len() - 1;
        let mut x = Vec::with_capacity(chunk.len() * t);
        let mut y = Vec::with_capacity(chunk.len() * t);
        for w in chunk {
            x.extend_from_slice(&w[..t]);
            y.extend_from_slice(&w[1..]);
        }
        let x = tandem_model::Tensor::from_vec(x, (chunk.len(), t), model.device())?;
        let y = tandem_model::Tensor::from_vec(y, (chunk.len(), t), model.device())?;
        let logits = model.forward_train(&x, adapter)?;
        let l = lm_loss(&logits, &y, None)?.to_scalar::<f32>()?;
        total += f64::from(l) * (chunk.len() * t) as f64;
        count += chunk.len() * t;
    }
    if count == 0 {
        bail!("no evaluation windows: the held-out text is shorter than one sequence");
    }
    Ok(total / count as f64)
}

pub fn train(a: &TrainArgs) -> Result<()> {
    ensure_threads(a.threads)?;
    let dev = Device::Cpu;
    let tok_bytes = std::fs::read(&a.tokenizer).with_context(|| format!("reading {}", a.tokenizer.display()))?;
    let tokenizer = Tokenizer::from_bytes(&tok_bytes, &a.tokenizer)?;
    let cfg = match preset(&a.config, tokenizer.vocab_size()) {
        Some(c) => c,
        None => {
            let p = Path::new(&a.config);
            let bytes = std::fs::read(p).with_context(|| format!("--config {}: not `device`, `server` or a readable config.json", a.config))?;
            Config::from_json(&bytes, p)?
        }
    };
    if cfg.vocab_size != tokenizer.vocab_size() {
        bail!("config vocabulary {} differs from the tokenizer's {}", cfg.vocab_size, tokenizer.vocab_size());
    }
    if a.seq_len > cfg.max_position_embeddings {
        bail!("--seq-len {} exceeds the model context {}", a.seq_len, cfg.max_position_embeddings);
    }
    let stream = load_tokens(&a.data, &tokenizer, &tok_bytes)?;
    let eval = match &a.eval_data {
        Some(p) => Some(load_tokens(p, &tokenizer, &tok_bytes)?),
        None => None,
    };

    let varmap = VarMap::new();
    let model = Model::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let vars: Vec<_> = varmap.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let tc = TrainConfig {
        seed: a.seed,
        batch_size: a.batch,
        seq_len: a.seq_len,
        schedule: CosineSchedule { peak_lr: a.lr, min_lr: a.lr / 10.0, warmup_steps: a.warmup, total_steps: a.steps },
        adamw: AdamWParams::default(),
        grad_clip: 1.0,
    };
    let mut trainer = Trainer::new(vars, tc)?;
    init_deterministic(trainer.vars(), a.seed, cfg.num_hidden_layers)?;
    let meta = json!({ "model_config": cfg.to_hf_json(), "data": a.data.display().to_string() });
    if let Some(r) = &a.resume {
        let m = checkpoint::load(r, &mut trainer)?;
        if m["model_config"] != meta["model_config"] {
            bail!("{} was made for a different model config", r.display());
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    println!(
        "model: {} parameters ({} layers, hidden {}); corpus {} tokens; {} tokens/step; steps {}..{}",
        trainer.num_params(), cfg.num_hidden_layers, cfg.hidden_size, stream.len(), a.batch * a.seq_len, trainer.step(), a.steps
    );
    let eval_windows: Vec<&[u32]> = eval.as_ref().map(|e| e.eval_windows(a.seq_len, 32)).unwrap_or_default();
    let stop_at = a.max_steps_now.map(|n| trainer.step() + n).unwrap_or(a.steps).min(a.steps);
    let bar = ProgressBar::new(a.steps).with_style(bar_style());
    bar.set_position(trainer.step());
    let start = Instant::now();
    let start_tokens = trainer.tokens_seen();
    let mut ema: Option<f64> = None;
    while trainer.step() < stop_at {
        let (x, y) = stream.batch(a.seed, trainer.step(), a.batch, a.seq_len, &dev)?;
        let logits = model.forward_train(&x, None)?;
        let loss = lm_loss(&logits, &y, None)?;
        let s: StepStats = trainer.apply(&loss, (a.batch * a.seq_len) as u64)?;
        ema = Some(ema.map_or(s.loss, |e| 0.95 * e + 0.05 * s.loss));
        let tps = (trainer.tokens_seen() - start_tokens) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(s.step);
        bar.set_message(format!("loss {:.3} lr {:.2e} |g| {:.2} {:.0} tok/s", ema.unwrap_or(s.loss), s.lr, s.grad_norm, tps));
        if s.step % a.checkpoint_every == 0 || s.step == stop_at {
            checkpoint::save(&a.out.join("checkpoint"), &trainer, meta.clone())?;
            checkpoint::export_pretrained(&model, &tok_bytes, DType::F32, &a.out.join("model"))?;
            let ev = if eval_windows.is_empty() { String::new() } else {
                let l = eval_loss(&model, &eval_windows, None)?;
                format!(" heldout loss {l:.4} ppl {:.2}", l.exp())
            };
            bar.println(format!(
                "step {} loss {:.4} tokens {} {:.0} tok/s{ev}",
                s.step, ema.unwrap_or(s.loss), trainer.tokens_seen(), tps
            ));
        }
    }
    bar.finish();
    println!("done: step {} tokens seen {}; model in {}", trainer.step(), trainer.tokens_seen(), a.out.join("model").display());
    Ok(())
}
