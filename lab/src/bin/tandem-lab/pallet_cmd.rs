//! `tandem-lab palletize | palletize-report`: mixed 2/4-bit palletized weights (issue 5).
//!
//! The quantizer, the bit allocation and the sensitivity measurement live in
//! `tandem_lab::pallet` (the file format and kernels in `tandem_model::pallet`); this file reads and writes the files, shows progress and times the
//! kernels for the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tandem_lab::pallet::{
    CalibOptions, PalletPlan, Palletize, allocate_bits, calib, palletize_calibrated, plan_except,
    sensitivities,
};
use tandem_lab::train::tokenizer::end_of_text_id;
use tandem_lab::train::trainer::eval_loss;
use tandem_model::pallet::{Bits, OpInfo, PalletFile, kernel};
use tandem_model::{DType, Device, Tensor, load_model};

use crate::train_cmd::{ensure_threads, load_tokens};

/// The palletization subcommands of `tandem-lab`.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Palletize a model: per-operation 2- or 4-bit lookup tables chosen by measured
    /// sensitivity to hit a target average bits per weight.
    Palletize(PalletizeArgs),
    /// Per operation of a palletized model: bits, bytes, sensitivity and measured decode
    /// latency share.
    PalletizeReport(ReportArgs),
    /// Train an accuracy-recovery LoRA adapter on a frozen palletized model (next-token loss
    /// on a corpus, or distillation from the uncompressed model), saved in the PEFT format with
    /// 16-bit values.
    PalletizeRecover(RecoverArgs),
}

impl Cmd {
    pub fn run(self) -> Result<()> {
        match self {
            Cmd::Palletize(a) => palletize(&a),
            Cmd::PalletizeReport(a) => report(&a),
            Cmd::PalletizeRecover(a) => recover(&a),
        }
    }
}

/// `tandem-lab palletize`
#[derive(Debug, Args)]
pub struct PalletizeArgs {
    /// Model directory (dense weights).
    #[arg(long)]
    pub model: PathBuf,
    /// Target average index bits per weight, in [2, 4] (2 and 4 need no calibration).
    #[arg(long, default_value_t = 3.5)]
    pub bpw: f64,
    /// Output rows sharing one lookup table (must divide every matrix's row count).
    #[arg(long, default_value_t = 16)]
    pub group_size: usize,
    /// Keep operations whose name contains this text dense (repeatable), e.g.
    /// `--dense embed_tokens` to measure the effect of palletizing the embedding.
    #[arg(long)]
    pub dense: Vec<String>,
    /// Fit every matrix against its inputs on the calibration text, layer by layer
    /// (activation-weighted tables, GPTQ error feedback, table refit); needs --calibration.
    /// For a mix, each operation's sensitivity is then its relative output error at 2 bits
    /// from one calibrated 2-bit pass (minutes) instead of a loss evaluation per operation.
    #[arg(long)]
    pub calibrated: bool,
    /// With --calibrated: ridge on the tied embedding's Gram matrix (fraction of its mean
    /// diagonal), for its use as a lookup table.
    #[arg(long, default_value_t = 0.1)]
    pub embed_ridge: f64,
    /// With --calibrated: index bits of the embedding / output head (2, 4 or 8) instead of
    /// the plan's; it is then left out of the bit allocation.
    #[arg(long)]
    pub embed_bits: Option<u64>,
    /// With --calibrated: rows per table of the embedding / output head.
    #[arg(long)]
    pub embed_group_size: Option<usize>,
    /// Calibration text for the sensitivity measurement (documents separated by
    /// `<|endoftext|>` lines; use training text, not the held-out split).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Calibration windows (evenly spread over the text).
    #[arg(long, default_value_t = 16)]
    pub windows: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Output directory (created; must not hold a model already).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print exactly one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `tandem-lab palletize-report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Palletized model directory.
    pub dir: PathBuf,
    /// Time each operation for at least this many milliseconds.
    #[arg(long, default_value_t = 50)]
    pub millis: u64,
    /// Print exactly one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `tandem-lab palletize-recover`
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Palletized model directory (its weights stay frozen).
    #[arg(long)]
    pub model: PathBuf,
    /// Training text (documents separated by `<|endoftext|>` lines; never the held-out split).
    #[arg(long)]
    pub data: PathBuf,
    /// Output adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// The uncompressed model to match: with it the loss is distillation (KL divergence from
    /// its next-token distribution) instead of next-token loss on the text, so the adapter
    /// recovers the original model rather than training further on the corpus.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// LoRA alpha (scale = alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    /// Peak learning rate (warm-up 10 % of the steps, cosine to a tenth).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed (adapter init, batches).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also make the adapter part of the model: copy it to MODEL/recovery/ and name it in
    /// MODEL/config.json (`tandem_base_adapter`), so it is applied whenever no task adapter is,
    /// task adapters trained on MODEL start from it, and the model digest covers it.
    #[arg(long)]
    pub install: bool,
    /// Print exactly one JSON object at the end.
    #[arg(long)]
    pub json: bool,
}

/// The directory name `palletize-recover --install` gives the recovery adapter in the model.
const RECOVERY_DIR: &str = "recovery";

fn recover(a: &RecoverArgs) -> Result<()> {
    use tandem_lab::train::optim::AdamWParams;
    use tandem_lab::train::schedule::CosineSchedule;
    use tandem_lab::train::trainer::{TrainConfig, Trainer, init_deterministic, lm_loss};
    use tandem_model::{Adapter, AdapterConfig, Target, VarBuilder, VarMap};
    ensure_threads(a.threads)?;
    let dev = Device::Cpu;
    let base = load_model(&a.model, DType::F32, &dev)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    if !base.stored_dtypes.iter().any(|d| d.starts_with("PALLET")) {
        bail!(
            "{} is not palletized; run `tandem-lab palletize` first",
            a.model.display()
        );
    }
    let cfg = base.model.config().clone();
    let tok_bytes =
        std::fs::read(a.model.join("tokenizer.json")).context("reading tokenizer.json")?;
    let eos = end_of_text_id(&cfg, &base.tokenizer)?;
    let stream = load_tokens(&a.data, &base.tokenizer, &tok_bytes, eos)?;
    let teacher = match &a.teacher {
        Some(t) => {
            let m = load_model(t, DType::F32, &dev)
                .with_context(|| format!("loading teacher {}", t.display()))?;
            if m.model.config() != &cfg {
                bail!(
                    "--teacher {} has another architecture than {}",
                    t.display(),
                    a.model.display()
                );
            }
            Some(m)
        }
        None => None,
    };
    let avm = VarMap::new();
    let adapter = Adapter::new(
        AdapterConfig::new(a.rank, a.alpha, &Target::ALL),
        &cfg,
        VarBuilder::from_varmap(&avm, DType::F32, &dev),
    )?;
    let vars: Vec<(String, tandem_model::Var)> = avm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tc = TrainConfig {
        seed: a.seed,
        batch_size: a.batch,
        seq_len: a.seq_len,
        schedule: CosineSchedule {
            peak_lr: a.lr,
            min_lr: a.lr / 10.0,
            warmup_steps: (a.steps / 10).max(1),
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
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let pb = bar(a.json, a.steps as usize, "recovery");
    let start = Instant::now();
    let mut ema: Option<f64> = None;
    while trainer.step() < a.steps {
        let (x, y) = stream.batch(a.seed, trainer.step(), a.batch, a.seq_len, &dev)?;
        let logits = base.model.forward_train(&x, Some(&adapter))?;
        let loss = match &teacher {
            // KL(p_teacher ‖ p_student), mean over positions (Hinton et al. 2015, T = 1).
            Some(t) => {
                let pt = log_softmax(&t.model.forward_train(&x, None)?.detach())?;
                let ps = log_softmax(&logits)?;
                let kl = (pt.exp()? * (pt - ps)?)?.sum(VOCAB_DIM)?;
                kl.mean_all()?
            }
            None => lm_loss(&logits, &y, None)?,
        };
        let s = trainer.apply(&loss, (a.batch * a.seq_len) as u64)?;
        ema = Some(ema.map_or(s.loss, |e| 0.9 * e + 0.1 * s.loss));
        pb.set_position(s.step);
        pb.set_message(format!("loss {:.3}", ema.unwrap_or(s.loss)));
    }
    pb.finish_and_clear();
    // Saved with 16-bit values (the seed's recovery adapters are 16-bit); `load_adapter`
    // converts them to the compute dtype.
    let half: Vec<(String, Tensor)> = adapter
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F16)?)))
        .collect::<Result<_>>()?;
    std::fs::write(
        a.out.join("adapter_config.json"),
        serde_json::to_vec_pretty(&adapter.config().to_peft_json())?,
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
    std::fs::write(
        a.out.join("adapter_model.safetensors"),
        tandem_model::weights::to_bytes(&half)?,
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
    let installed = if a.install {
        tandem_model::install_base_adapter(&a.model, &a.out, RECOVERY_DIR).with_context(|| {
            format!(
                "installing {} as the base adapter of {}",
                a.out.display(),
                a.model.display()
            )
        })?;
        Some(tandem_model::model_digest(&a.model)?.to_string())
    } else {
        None
    };
    let v = json!({
        "out": a.out.display().to_string(),
        "installed_model_digest": installed,
        "base": base.digest.to_string(),
        "steps": trainer.step(),
        "tokens": trainer.tokens_seen(),
        "final_loss_ema": ema,
        "loss": if teacher.is_some() { "kl_to_teacher" } else { "next_token" },
        "trainable_parameters": trainer.num_params(),
        "seconds": start.elapsed().as_secs_f64(),
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "recovery adapter in {} ({} parameters, rank {}, {} steps, loss {:.4})",
            a.out.display(),
            trainer.num_params(),
            a.rank,
            trainer.step(),
            ema.unwrap_or(f64::NAN)
        );
        if let Some(d) = &installed {
            println!(
                "installed as {}/{RECOVERY_DIR} (the base adapter); model digest now {d}",
                a.model.display()
            );
        }
    }
    Ok(())
}

/// The vocabulary dimension of `[batch, seq, vocab]` logits.
const VOCAB_DIM: usize = 2;

/// Log-softmax over the vocabulary, from differentiable ops.
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(VOCAB_DIM)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(VOCAB_DIM)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

fn bar(json: bool, len: usize, what: &str) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} {{msg}} {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

fn palletize(a: &PalletizeArgs) -> Result<()> {
    ensure_threads(a.threads)?;
    if !(2.0..=4.0).contains(&a.bpw) {
        bail!(
            "--bpw {} is outside [2, 4]: operations are palletized at 2 or 4 bits",
            a.bpw
        );
    }
    if a.out.join("model.safetensors").exists() {
        bail!(
            "{} already holds a model.safetensors; choose an empty --out",
            a.out.display()
        );
    }
    let start = Instant::now();
    let dev = Device::Cpu;
    let m = load_model(&a.model, DType::F32, &dev)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let model = &m.model;
    let ops: Vec<(String, [usize; 2])> = model
        .palletizable_ops()
        .into_iter()
        .filter(|(n, _)| !a.dense.iter().any(|d| n.contains(d.as_str())))
        .collect();
    let shapes: BTreeMap<String, [usize; 2]> = ops.iter().cloned().collect();

    // Calibration windows (only needed for a mix).
    let mixed = a.bpw > 2.0 && a.bpw < 4.0;
    let tok_bytes =
        std::fs::read(a.model.join("tokenizer.json")).context("reading tokenizer.json")?;
    let stream = match &a.calibration {
        Some(p) => Some(load_tokens(
            p,
            &m.tokenizer,
            &tok_bytes,
            end_of_text_id(model.config(), &m.tokenizer)?,
        )?),
        None if mixed || a.calibrated => bail!(
            "--bpw {} mixes 2- and 4-bit operations by measured sensitivity: pass --calibration FILE (training text, e.g. data/corpus/train.txt)",
            a.bpw
        ),
        None => None,
    };
    let windows: Vec<&[u32]> = stream
        .as_ref()
        .map(|s| s.eval_windows(a.seq_len, a.windows))
        .unwrap_or_default();
    if stream.is_some() && windows.is_empty() {
        bail!(
            "the calibration text is shorter than one window of {} tokens",
            a.seq_len + 1
        );
    }

    // 1. Sensitivities, 2. allocation.
    let mut info: BTreeMap<String, OpInfo> = BTreeMap::new();
    let mut base_loss = None;
    let copts = CalibOptions {
        embed_ridge: a.embed_ridge,
        embed_group_size: a.embed_group_size,
        ..CalibOptions::default()
    };
    let embed_bits = match a.embed_bits {
        None => None,
        Some(b) if a.calibrated => {
            Some(Bits::from_bits(b).with_context(|| format!("--embed-bits {b}: use 2, 4 or 8"))?)
        }
        Some(_) => bail!("--embed-bits needs --calibrated"),
    };
    let is_embed = |n: &str| n == calib::EMBED || n == calib::LM_HEAD;
    // The operations the bit allocation decides.
    let ops: Vec<(String, [usize; 2])> = ops
        .into_iter()
        .filter(|(n, _)| embed_bits.is_none() || !is_embed(n))
        .collect();
    let bits = if mixed && a.calibrated {
        let pb = bar(a.json, ops.len(), "sensitivity (2-bit pass)");
        let mut all2 = plan_except(model, Bits::B2, a.group_size, &a.dense);
        all2.bits
            .retain(|n, _| embed_bits.is_none() || !is_embed(n));
        let (_, fits) = palletize_calibrated(model, &windows, &all2, &copts, |name| {
            pb.set_message(name.to_string());
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        let sens: Vec<(String, usize, f64)> = ops
            .iter()
            .map(|(n, [r, c])| {
                let e = fits.get(n).map_or(0.0, |f| f.relative_error);
                (n.clone(), r * c, e * (r * c) as f64)
            })
            .collect();
        for (n, _, s) in &sens {
            info.insert(
                n.clone(),
                OpInfo {
                    sensitivity: Some(*s),
                },
            );
        }
        allocate_bits(&sens, a.bpw)?
    } else if mixed {
        let pb = bar(a.json, ops.len(), "sensitivity");
        let (base, sens) = sensitivities(model, &windows, a.group_size, |name| {
            pb.set_message(name.to_string());
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        base_loss = Some(base);
        for (n, _, s) in &sens {
            info.insert(
                n.clone(),
                OpInfo {
                    sensitivity: Some(*s),
                },
            );
        }
        allocate_bits(&sens, a.bpw)?
    } else {
        let b = if a.bpw >= 4.0 { Bits::B4 } else { Bits::B2 };
        ops.iter().map(|(n, _)| (n.clone(), b)).collect()
    };
    let mut bits = bits;
    if let Some(b) = embed_bits {
        for n in [calib::EMBED, calib::LM_HEAD] {
            if shapes.contains_key(n) {
                bits.insert(n.to_string(), b);
            }
        }
    }
    let plan = PalletPlan {
        bits,
        group_size: a.group_size,
    };

    // 3. Quantize everything by the plan.
    let spinner = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner().with_message(format!("palletizing {} operations", ops.len()))
    };
    spinner.enable_steady_tick(Duration::from_millis(200));
    let pm = if a.calibrated {
        palletize_calibrated(model, &windows, &plan, &copts, |name| {
            spinner.set_message(name.to_string())
        })?
        .0
    } else {
        model.palletize(&plan, &BTreeMap::new())?
    };
    spinner.finish_and_clear();
    let calib_loss = if windows.is_empty() {
        None
    } else {
        let base = match base_loss {
            Some(b) => b,
            None => eval_loss(model, &windows, None)?,
        };
        base_loss = Some(base);
        Some(eval_loss(&pm, &windows, None)?)
    };

    // 4. Write.
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    pm.save_palletized(&a.out, info)?;
    std::fs::copy(a.model.join("tokenizer.json"), a.out.join("tokenizer.json"))
        .context("copying tokenizer.json")?;
    let out = load_model(&a.out, DType::F32, &dev).context("re-loading the palletized model")?;
    // Bits per palletized weight, tables included (dense operations are not counted).
    let pallets = out.model.pallet_matrices();
    let params: usize = pallets.values().map(|m| m.rows() * m.cols()).sum();
    let pallet_bytes: usize = pallets.values().map(|m| m.byte_size()).sum();
    let n2 = plan.bits.values().filter(|b| **b == Bits::B2).count();
    let f16_bytes = 2 * model.config().parameter_count();
    let v = json!({
        "out": a.out.display().to_string(),
        "digest": out.digest.to_string(),
        "target_bpw": a.bpw,
        "index_bpw": plan.average_bits(&shapes),
        "effective_bpw": 8.0 * pallet_bytes as f64 / params.max(1) as f64,
        "group_size": a.group_size,
        "ops": plan.bits.len(),
        "ops_2bit": n2,
        "ops_4bit": plan.bits.len() - n2,
        "file_bytes": out.file_bytes,
        "f16_bytes": f16_bytes,
        "size_vs_f16": out.file_bytes as f64 / f16_bytes as f64,
        "calibration_loss_before": base_loss,
        "calibration_loss_after": calib_loss,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "wrote {} ({} bytes, {:.1}% of f16): {} ops ({} at 2 bits, {} at 4), {:.3} index bits/weight ({:.3} with tables), group size {}",
            a.out.display(),
            out.file_bytes,
            100.0 * out.file_bytes as f64 / f16_bytes as f64,
            plan.bits.len(),
            n2,
            plan.bits.len() - n2,
            v["index_bpw"].as_f64().unwrap_or(f64::NAN),
            v["effective_bpw"].as_f64().unwrap_or(f64::NAN),
            a.group_size
        );
        if let (Some(b), Some(c)) = (base_loss, calib_loss) {
            println!(
                "calibration loss {b:.4} -> {c:.4} nats/token (perplexity {:.2} -> {:.2})",
                b.exp(),
                c.exp()
            );
        }
    }
    Ok(())
}

/// Mean time of `f` over at least `min` wall time (and 3 runs).
fn time_it(min: Duration, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?;
    let start = Instant::now();
    let mut n = 0u32;
    while n < 3 || start.elapsed() < min {
        f()?;
        n += 1;
    }
    Ok(start.elapsed() / n)
}

fn report(a: &ReportArgs) -> Result<()> {
    let path = a.dir.join("model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let file = PalletFile::from_bytes(&bytes, &path)?;
    drop(bytes);
    let dev = Device::Cpu;
    let min = Duration::from_millis(a.millis);
    // (name, bits label, [rows, cols], bytes, sensitivity, decode time)
    let mut rows = Vec::new();
    for (name, m) in &file.matrices {
        let m = std::sync::Arc::new(m.clone());
        let x = Tensor::randn(0f32, 1.0, (1, m.cols()), &dev)?;
        let t = time_it(min, || Ok(kernel::matmul(&x, &m).map(|_| ())?))?;
        rows.push((
            name.clone(),
            m.bits().get().to_string(),
            [m.rows(), m.cols()],
            m.byte_size(),
            file.ops.get(name).and_then(|o| o.sensitivity),
            t,
        ));
    }
    for (name, d) in &file.dense {
        let [r, c] = d.shape[..] else { continue };
        let dtype = match d.dtype.as_str() {
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            _ => DType::F32,
        };
        let w = Tensor::randn(0f32, 1.0, (r, c), &dev)?.to_dtype(dtype)?;
        let x = Tensor::randn(0f32, 1.0, (1, c), &dev)?.to_dtype(dtype)?;
        let t = time_it(min, || Ok(x.matmul(&w.t()?).map(|_| ())?))?;
        rows.push((
            name.clone(),
            d.dtype.to_lowercase(),
            [r, c],
            d.data.len(),
            file.ops.get(name).and_then(|o| o.sensitivity),
            t,
        ));
    }
    let total_t: f64 = rows.iter().map(|r| r.5.as_secs_f64()).sum();
    let total_b: usize = rows.iter().map(|r| r.3).sum();
    if a.json {
        let ops: Vec<_> = rows
            .iter()
            .map(|(n, b, s, by, sens, t)| {
                json!({"op": n, "bits": b, "shape": s, "bytes": by, "byte_share": *by as f64 / total_b as f64,
                       "sensitivity": sens, "decode_us": t.as_secs_f64() * 1e6,
                       "latency_share": t.as_secs_f64() / total_t})
            })
            .collect();
        println!(
            "{}",
            json!({"dir": a.dir.display().to_string(), "ops": ops, "total_bytes": total_b,
                   "total_decode_us": total_t * 1e6,
                   "threads": std::env::var("RAYON_NUM_THREADS").ok()})
        );
        return Ok(());
    }
    println!(
        "{:<44} {:>5} {:>12} {:>10} {:>7} {:>12} {:>10} {:>8}",
        "operation", "bits", "shape", "bytes", "bytes%", "sensitivity", "decode µs", "time%"
    );
    for (n, b, s, by, sens, t) in &rows {
        println!(
            "{:<44} {:>5} {:>12} {:>10} {:>6.1}% {:>12} {:>10.1} {:>7.1}%",
            n,
            b,
            format!("{}x{}", s[0], s[1]),
            by,
            100.0 * *by as f64 / total_b as f64,
            sens.map_or("-".to_string(), |s| format!("{s:+.5}")),
            t.as_secs_f64() * 1e6,
            100.0 * t.as_secs_f64() / total_t
        );
    }
    println!(
        "total: {total_b} bytes, {:.1} µs per decoded token in these matmuls (sensitivity: calibration loss increase, nats/token, with only that operation at 2 bits)",
        total_t * 1e6
    );
    Ok(())
}
