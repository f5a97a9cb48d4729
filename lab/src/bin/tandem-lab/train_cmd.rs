//! `tandem-lab train-tokenizer | train | train-adapter`: training the embedded models.
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
use tandem_lab::train::checkpoint;
use tandem_lab::train::data::{TokenStream, split_documents};
use tandem_lab::train::grow::grow_depth;
use tandem_lab::train::optim::AdamWParams;
use tandem_lab::train::schedule::CosineSchedule;
use tandem_lab::train::tokenizer::{EOT, end_of_text_id, train_bpe};
use tandem_lab::train::trainer::{
    StepStats, TrainConfig, Trainer, eval_loss, init_deterministic, lm_loss,
};
use tandem_model::{Config, DType, Device, Model, Tokenizer, VarBuilder, VarMap};

/// The training subcommands of `tandem-lab`.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Train a byte-level BPE tokenizer on a corpus.
    TrainTokenizer(TrainTokenizerArgs),
    /// Pre-train a base model (AdamW, warm-up + cosine, checkpoints, resume).
    Train(TrainArgs),
    /// Train a LoRA task adapter on a frozen base model.
    TrainAdapter(TrainAdapterArgs),
}

impl Cmd {
    pub fn run(self) -> Result<()> {
        match self {
            Cmd::TrainTokenizer(a) => train_tokenizer(&a),
            Cmd::Train(a) => train(&a),
            Cmd::TrainAdapter(a) => train_adapter(&a),
        }
    }
}

/// `tandem-lab train-tokenizer`
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

/// `tandem-lab train`
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
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Tokens per sequence (at most the config's context).
    #[arg(long, default_value_t = 128)]
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
    /// Initialise from a trained model directory of the same width; a shallower model is grown
    /// to this config's depth with function-preserving identity blocks (see
    /// `tandem_lab::train::grow`).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Dtype of the exported weights in OUT/model (`f32` or `f16`).
    #[arg(long, default_value = "f32")]
    pub export_dtype: String,
    /// Stop after this many steps in this invocation (the schedule still spans --steps).
    #[arg(long)]
    pub max_steps_now: Option<u64>,
}

/// Size presets. Both use the tokenizer's vocabulary, its end-of-text id and a 256-token
/// context.
pub fn preset(name: &str, vocab: usize, eos: Option<u32>) -> Option<Config> {
    let (hidden, layers, heads, kv, inter) = match name {
        // ≈ 4.0 M parameters with a 4096 vocabulary.
        "device" => (256, 4, 4, 2, 688),
        // ≈ 12.7 M parameters, 3.2x the device model: the same width, four times the depth, so
        // it can be grown from a trained device model (`--init-from`).
        "server" => (256, 16, 4, 2, 688),
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
        eos_token_ids: eos.into_iter().collect(),
        bos_token_id: None,
        base_adapter: None,
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
    let text = std::fs::read_to_string(&a.corpus)
        .with_context(|| format!("reading {}", a.corpus.display()))?;
    let docs = split_documents(&text);
    if docs.is_empty() {
        bail!("{} holds no text", a.corpus.display());
    }
    let spinner = ProgressBar::new_spinner()
        .with_message(format!("training BPE on {} documents", docs.len()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let json = train_bpe(docs.iter().copied(), a.vocab_size)?;
    spinner.finish_and_clear();
    std::fs::write(&a.out, &json).with_context(|| format!("writing {}", a.out.display()))?;
    let tk = Tokenizer::from_bytes(json.as_bytes(), &a.out)?;
    println!(
        "wrote {} (vocabulary {}, {EOT} = {:?})",
        a.out.display(),
        tk.vocab_size(),
        tk.token_to_id(EOT)
    );
    Ok(())
}

/// Tokenizes `path` once, each document followed by `eos` (the model's end-of-text id, see
/// [`end_of_text_id`]), and caches the ids next to it (`PATH.<tokenizer digest>-<eos>.u16`).
pub fn load_tokens(
    path: &Path,
    tokenizer: &Tokenizer,
    tokenizer_bytes: &[u8],
    eos: u32,
) -> Result<TokenStream> {
    // FNV-1a of the tokenizer file: a cache key, not a security check.
    let digest = format!(
        "{:016x}",
        tokenizer_bytes
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b))
                .wrapping_mul(0x0000_0100_0000_01b3))
    );
    let cache = PathBuf::from(format!("{}.{digest}-{eos}.u16", path.display()));
    let vocab = tokenizer.vocab_size();
    if let Ok(bytes) = std::fs::read(&cache) {
        let meta_ok = std::fs::metadata(&cache)
            .and_then(|c| Ok(c.modified()? >= std::fs::metadata(path)?.modified()?))
            .unwrap_or(false);
        if meta_ok {
            return Ok(TokenStream::from_u16_le(&bytes, vocab)?);
        }
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs = split_documents(&text);
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

/// Prints above the progress bar, or plainly when the bar is hidden (output not a terminal,
/// e.g. a background run logging to a file).
pub fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta_precise}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn export_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        other => bail!("--export-dtype {other}: use f32 or f16"),
    }
}

pub fn train(a: &TrainArgs) -> Result<()> {
    export_dtype(&a.export_dtype)?;
    ensure_threads(a.threads)?;
    let dev = Device::Cpu;
    let tok_bytes = std::fs::read(&a.tokenizer)
        .with_context(|| format!("reading {}", a.tokenizer.display()))?;
    let tokenizer = Tokenizer::from_bytes(&tok_bytes, &a.tokenizer)?;
    let cfg = match preset(
        &a.config,
        tokenizer.vocab_size(),
        tokenizer.token_to_id(EOT),
    ) {
        Some(c) => c,
        None => {
            let p = Path::new(&a.config);
            let bytes = std::fs::read(p).with_context(|| {
                format!(
                    "--config {}: not `device`, `server` or a readable config.json",
                    a.config
                )
            })?;
            Config::from_json(&bytes, p)?
        }
    };
    if cfg.vocab_size != tokenizer.vocab_size() {
        bail!(
            "config vocabulary {} differs from the tokenizer's {}",
            cfg.vocab_size,
            tokenizer.vocab_size()
        );
    }
    if a.seq_len > cfg.max_position_embeddings {
        bail!(
            "--seq-len {} exceeds the model context {}",
            a.seq_len,
            cfg.max_position_embeddings
        );
    }
    let eos = end_of_text_id(&cfg, &tokenizer)?;
    let stream = load_tokens(&a.data, &tokenizer, &tok_bytes, eos)?;
    let eval = match &a.eval_data {
        Some(p) => Some(load_tokens(p, &tokenizer, &tok_bytes, eos)?),
        None => None,
    };

    let varmap = VarMap::new();
    let mut init_note = format!("random (seed {})", a.seed);
    if let Some(src) = &a.init_from {
        let loaded = tandem_model::load_model(src, DType::F32, &dev)?;
        let sc = loaded.model.config();
        let factor = cfg.num_hidden_layers / sc.num_hidden_layers.max(1);
        let same_width = Config {
            num_hidden_layers: cfg.num_hidden_layers,
            ..sc.clone()
        } == cfg;
        if !same_width || factor == 0 || factor * sc.num_hidden_layers != cfg.num_hidden_layers {
            bail!(
                "--init-from {}: its config must equal this one except for a depth that divides {}",
                src.display(),
                cfg.num_hidden_layers
            );
        }
        let named = grow_depth(&loaded.model.named_tensors(), sc.num_hidden_layers, factor)?;
        // Pre-fill the VarMap: `Model::new` then picks these up instead of creating new vars.
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
        for (n, t) in named {
            data.insert(n, tandem_model::Var::from_tensor(&t)?);
        }
        drop(data);
        init_note = format!("{} ({}) grown x{factor}", src.display(), loaded.digest);
    }
    let model = Model::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let vars = named_vars(&varmap)?;
    let tc = TrainConfig {
        seed: a.seed,
        batch_size: a.batch,
        seq_len: a.seq_len,
        schedule: CosineSchedule {
            peak_lr: a.lr,
            min_lr: a.lr / 10.0,
            warmup_steps: a.warmup,
            total_steps: a.steps,
        },
        adamw: AdamWParams::default(),
        grad_clip: 1.0,
    };
    let mut trainer = Trainer::new(vars, tc)?;
    if a.init_from.is_none() {
        init_deterministic(trainer.vars(), a.seed, cfg.num_hidden_layers)?;
    }
    let meta = json!({ "model_config": cfg.to_hf_json(), "data": a.data.display().to_string(), "init": init_note });
    if let Some(r) = &a.resume {
        let m = checkpoint::load(r, &mut trainer)?;
        if m["model_config"] != meta["model_config"] {
            bail!("{} was made for a different model config", r.display());
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    println!(
        "model: {} parameters ({} layers, hidden {}); init {init_note}; corpus {} tokens; {} tokens/step; steps {}..{}",
        trainer.num_params(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        stream.len(),
        a.batch * a.seq_len,
        trainer.step(),
        a.steps
    );
    let eval_windows: Vec<&[u32]> = eval
        .as_ref()
        .map(|e| e.eval_windows(a.seq_len, 32))
        .unwrap_or_default();
    let stop_at = a
        .max_steps_now
        .map(|n| trainer.step() + n)
        .unwrap_or(a.steps)
        .min(a.steps);
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
        let tps =
            (trainer.tokens_seen() - start_tokens) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(s.step);
        bar.set_message(format!(
            "loss {:.3} lr {:.2e} |g| {:.2} {:.0} tok/s",
            ema.unwrap_or(s.loss),
            s.lr,
            s.grad_norm,
            tps
        ));
        if s.step.is_multiple_of(a.checkpoint_every) || s.step == stop_at {
            checkpoint::save(&a.out.join("checkpoint"), &trainer, meta.clone())?;
            checkpoint::export_pretrained(&model, &tok_bytes, DType::F32, &a.out.join("model"))?;
            let ev = if eval_windows.is_empty() {
                String::new()
            } else {
                let l = eval_loss(&model, &eval_windows, None)?;
                format!(" heldout loss {l:.4} ppl {:.2}", l.exp())
            };
            say(
                &bar,
                format!(
                    "step {} loss {:.4} tokens {} {:.0} tok/s{ev}",
                    s.step,
                    ema.unwrap_or(s.loss),
                    trainer.tokens_seen(),
                    tps
                ),
            );
        }
    }
    bar.finish();
    checkpoint::export_pretrained(
        &model,
        &tok_bytes,
        export_dtype(&a.export_dtype)?,
        &a.out.join("model"),
    )?;
    println!(
        "done: step {} tokens seen {}; model in {}",
        trainer.step(),
        trainer.tokens_seen(),
        a.out.join("model").display()
    );
    Ok(())
}

/// `tandem-lab train-adapter`
#[derive(Debug, Args)]
pub struct TrainAdapterArgs {
    /// Base model directory (Hugging Face layout); its weights stay frozen.
    #[arg(long)]
    pub model: PathBuf,
    /// Task: `proofread` or `truecase`.
    #[arg(long)]
    pub task: String,
    /// Corpus text the training sentences are taken from (never the held-out split).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (PEFT layout: adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Examples per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// LoRA alpha (scale = alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Seed (adapter init, examples, batches).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Use at most this many training sentences.
    #[arg(long, default_value_t = 40_000)]
    pub max_sentences: usize,
    /// Save a checkpoint (and the adapter) every N steps.
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Resume from a checkpoint directory (usually OUT.ckpt).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

pub fn train_adapter(a: &TrainAdapterArgs) -> Result<()> {
    use tandem_lab::tasks::{
        Task, TaskBatcher, TokenizedExample, answer, extract_sentences, make_examples, prompt,
    };
    use tandem_model::{Adapter, AdapterConfig, Target};
    ensure_threads(a.threads)?;
    let dev = Device::Cpu;
    let task = Task::from_name(&a.task)?;
    let base = tandem_model::load_model(&a.model, DType::F32, &dev)?;
    let cfg = base.model.config().clone();
    let text = std::fs::read_to_string(&a.data)
        .with_context(|| format!("reading {}", a.data.display()))?;
    let mut sentences = extract_sentences(&text);
    // A deterministic subset spread over the whole corpus.
    if sentences.len() > a.max_sentences {
        let n = sentences.len();
        sentences = (0..a.max_sentences)
            .map(|i| sentences[i * n / a.max_sentences].clone())
            .collect();
    }
    let examples = make_examples(task, &sentences, a.seed);
    let eos = end_of_text_id(&cfg, &base.tokenizer)?;
    let bar = ProgressBar::new(examples.len() as u64).with_style(
        ProgressStyle::with_template("tokenizing {bar:30} {pos}/{len} examples")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut tokenized = Vec::with_capacity(examples.len());
    for e in &examples {
        let p = base.tokenizer.encode(&prompt(task, &e.input))?;
        let mut ans = base.tokenizer.encode(&answer(&e.target))?;
        ans.push(eos);
        if p.len() + ans.len() <= cfg.max_position_embeddings {
            tokenized.push(TokenizedExample {
                prompt: p,
                answer: ans,
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let batcher = TaskBatcher::new(tokenized, eos)?;

    let avm = VarMap::new();
    // A model with a base (accuracy-recovery) adapter: the task adapter replaces it when
    // applied, so it starts from it (as the seed's task adapters start from the recovery
    // adapter) and has its rank and targets.
    let start_from = base.model.base_adapter();
    let acfg = match start_from {
        Some(b) => {
            let c = b.config().clone();
            let rank = c.r;
            if rank != a.rank {
                bail!(
                    "{} has a base adapter of rank {rank}; task adapters start from it, so pass --rank {rank}",
                    a.model.display()
                );
            }
            c
        }
        None => AdapterConfig::new(a.rank, a.alpha, &Target::ALL),
    };
    let adapter = Adapter::new(acfg, &cfg, VarBuilder::from_varmap(&avm, DType::F32, &dev))?;
    let vars = named_vars(&avm)?;
    let tc = TrainConfig {
        seed: a.seed,
        batch_size: a.batch,
        seq_len: cfg.max_position_embeddings,
        schedule: CosineSchedule {
            peak_lr: a.lr,
            min_lr: a.lr / 10.0,
            warmup_steps: a.warmup,
            total_steps: a.steps,
        },
        adamw: AdamWParams {
            weight_decay: 0.0,
            ..AdamWParams::default()
        },
        grad_clip: 1.0,
    };
    let mut trainer = Trainer::new(vars, tc)?;
    init_deterministic(trainer.vars(), a.seed, cfg.num_hidden_layers)?;
    if let Some(b) = start_from {
        let from: std::collections::HashMap<String, tandem_model::Tensor> =
            b.named_tensors().into_iter().collect();
        for (name, var) in trainer.vars() {
            let t = from
                .get(name)
                .with_context(|| format!("the base adapter has no tensor `{name}`"))?;
            var.set(&t.to_dtype(DType::F32)?)?;
        }
    }
    let meta = json!({ "task": task.name(), "base": base.digest.to_string(), "rank": a.rank, "alpha": a.alpha });
    if let Some(r) = &a.resume {
        let m = checkpoint::load(r, &mut trainer)?;
        if m["base"] != meta["base"] || m["task"] != meta["task"] {
            bail!("{} was made for another base model or task", r.display());
        }
    }
    println!(
        "adapter `{}`: {} trainable parameters (rank {}, base {} frozen{}); {} training examples from {} sentences",
        task.name(),
        trainer.num_params(),
        a.rank,
        base.digest,
        if start_from.is_some() {
            ", starting from its base adapter"
        } else {
            ""
        },
        batcher.len(),
        sentences.len()
    );
    let ckpt = PathBuf::from(format!("{}.ckpt", a.out.display()));
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bar = ProgressBar::new(a.steps).with_style(bar_style());
    bar.set_position(trainer.step());
    let start = Instant::now();
    let start_tokens = trainer.tokens_seen();
    let mut ema: Option<f64> = None;
    while trainer.step() < a.steps {
        let b = batcher.batch(
            a.seed,
            trainer.step(),
            a.batch,
            cfg.max_position_embeddings,
            &dev,
        )?;
        let logits = base.model.forward_train(&b.inputs, Some(&adapter))?;
        let loss = lm_loss(&logits, &b.targets, Some(&b.mask))?;
        let s = trainer.apply(&loss, b.answer_tokens as u64)?;
        ema = Some(ema.map_or(s.loss, |e| 0.9 * e + 0.1 * s.loss));
        let tps =
            (trainer.tokens_seen() - start_tokens) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(s.step);
        bar.set_message(format!(
            "answer loss {:.3} lr {:.2e} {:.0} answer-tok/s",
            ema.unwrap_or(s.loss),
            s.lr,
            tps
        ));
        if s.step % a.checkpoint_every == 0 || s.step == a.steps {
            checkpoint::save(&ckpt, &trainer, meta.clone())?;
            adapter.save_pretrained(&a.out)?;
            say(
                &bar,
                format!(
                    "step {} answer loss {:.4} answer tokens {}",
                    s.step,
                    ema.unwrap_or(s.loss),
                    trainer.tokens_seen()
                ),
            );
        }
    }
    bar.finish();
    adapter.save_pretrained(&a.out)?;
    println!(
        "done: adapter in {} (step {}, {} answer tokens)",
        a.out.display(),
        trainer.step(),
        trainer.tokens_seen()
    );
    Ok(())
}

/// The trainable variables of a `VarMap`, with their names (for the optimizer and checkpoints).
fn named_vars(varmap: &VarMap) -> Result<Vec<(String, tandem_model::Var)>> {
    Ok(varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}
