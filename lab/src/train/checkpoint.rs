//! Training checkpoints: everything needed to resume a run exactly.
//!
//! A checkpoint directory holds
//! - `weights.safetensors`: the trainable variables under their model names (HF names for a base
//!   model, PEFT names for an adapter);
//! - `optimizer.safetensors`: AdamW moments (`NAME.exp_avg`, `NAME.exp_avg_sq`);
//! - `trainer_state.json`: step, tokens seen, the [`TrainConfig`] and caller metadata (e.g. the
//!   model config). Batches are derived from `(seed, step)`, so the step *is* the RNG state.
//!
//! Writes go to `DIR.tmp` which is then renamed over `DIR`, so a crash leaves the previous
//! checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TrainError;
use super::trainer::{TrainConfig, Trainer};
use crate::{Error, Result};

const WEIGHTS: &str = "weights.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "trainer_state.json";

/// The JSON part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Target tokens trained on.
    pub tokens_seen: u64,
    /// The run's settings.
    pub config: TrainConfig,
    /// Caller data (model config, data fingerprint, …), checked by the caller on resume.
    pub meta: Value,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| {
        tandem_model::Error::Write {
            path: path.to_owned(),
            source,
        }
        .into()
    }
}

fn ckpt_err(m: String) -> Error {
    TrainError::Checkpoint(m).into()
}

/// Writes `trainer`'s state to `dir` (replacing a previous checkpoint there).
pub fn save(dir: &Path, trainer: &Trainer, meta: Value) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", dir.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(write_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(write_err(&tmp))?;
    let weights: HashMap<String, Tensor> = trainer
        .vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let path = tmp.join(WEIGHTS);
    candle_core::safetensors::save(&weights, &path)?;
    let opt: HashMap<String, Tensor> = trainer.opt.state_tensors().into_iter().collect();
    candle_core::safetensors::save(&opt, tmp.join(OPTIMIZER))?;
    let state = TrainerState {
        step: trainer.step(),
        tokens_seen: trainer.tokens_seen,
        config: trainer.config.clone(),
        meta,
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| ckpt_err(e.to_string()))?;
    let path = tmp.join(STATE);
    std::fs::write(&path, json).map_err(write_err(&path))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(write_err(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(write_err(dir))?;
    Ok(())
}

/// Reads only the JSON state of the checkpoint in `dir`.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE);
    let bytes = std::fs::read(&path).map_err(|e| {
        ckpt_err(format!(
            "cannot read {}: {e}; is {} a training checkpoint?",
            path.display(),
            dir.display()
        ))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ckpt_err(format!("{}: {e}", path.display())))
}

/// Restores weights, optimizer moments and counters from `dir` into `trainer`, which must have
/// been built with the same variables. The checkpoint's `TrainConfig` replaces the trainer's,
/// except `schedule.total_steps`: the caller's value is kept, so a run can be lengthened or
/// shortened on resume (the cosine then continues on the new length). Returns the stored
/// metadata.
pub fn load(dir: &Path, trainer: &mut Trainer) -> Result<Value> {
    let state = read_state(dir)?;
    let device = trainer
        .vars
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let weights = candle_core::safetensors::load(dir.join(WEIGHTS), &device)
        .map_err(|e| ckpt_err(format!("{}: {e}", dir.join(WEIGHTS).display())))?;
    if weights.len() != trainer.vars.len() {
        return Err(ckpt_err(format!(
            "{} holds {} tensors but the model being trained has {} variables; was it made for another config?",
            dir.display(),
            weights.len(),
            trainer.vars.len()
        )));
    }
    for (name, var) in &trainer.vars {
        let t = weights
            .get(name)
            .ok_or_else(|| ckpt_err(format!("{} lacks `{name}`", dir.join(WEIGHTS).display())))?;
        if t.dims() != var.as_tensor().dims() {
            return Err(ckpt_err(format!(
                "`{name}` has shape {:?} in the checkpoint but {:?} in the model",
                t.dims(),
                var.as_tensor().dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    let opt = candle_core::safetensors::load(dir.join(OPTIMIZER), &device)
        .map_err(|e| ckpt_err(format!("{}: {e}", dir.join(OPTIMIZER).display())))?;
    trainer.opt.load_state(&opt, state.step)?;
    trainer.tokens_seen = state.tokens_seen;
    let total = trainer.config.schedule.total_steps;
    trainer.config = state.config;
    trainer.config.schedule.total_steps = total;
    Ok(state.meta)
}

/// Writes a model in the Hugging Face layout (`config.json`, `model.safetensors`,
/// `tokenizer.json`) with weights converted to `dtype`, so it loads with
/// [`tandem_model::load_model`] and any tool that reads that layout.
pub fn export_pretrained(
    model: &tandem_model::Model,
    tokenizer_json: &[u8],
    dtype: candle_core::DType,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut config = model.config().to_hf_json();
    let name = match dtype {
        candle_core::DType::F16 => "float16",
        candle_core::DType::BF16 => "bfloat16",
        _ => "float32",
    };
    config["torch_dtype"] = Value::from(name);
    let tensors = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
        .collect::<Result<Vec<_>>>()?;
    let files = [
        (
            "config.json",
            serde_json::to_vec_pretty(&config).map_err(|e| ckpt_err(e.to_string()))?,
        ),
        (
            "model.safetensors",
            tandem_model::weights::to_bytes(&tensors)?,
        ),
        ("tokenizer.json", tokenizer_json.to_vec()),
    ];
    for (f, bytes) in files {
        let path = dir.join(f);
        std::fs::write(&path, bytes).map_err(write_err(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::AdamWParams;
    use crate::train::schedule::CosineSchedule;
    use candle_core::{DType, Var};

    fn cfg() -> TrainConfig {
        TrainConfig {
            seed: 5,
            batch_size: 1,
            seq_len: 1,
            schedule: CosineSchedule {
                peak_lr: 0.05,
                min_lr: 0.001,
                warmup_steps: 2,
                total_steps: 8,
            },
            adamw: AdamWParams::default(),
            grad_clip: 1.0,
        }
    }

    fn step(t: &mut Trainer, x: &Tensor) -> Result<()> {
        let w = t.vars()[0].1.as_tensor().clone();
        let loss = (w.matmul(x)? - 1.0)?.sqr()?.sum_all()?;
        t.apply(&loss, 1)?;
        Ok(())
    }

    #[test]
    fn resume_matches_uninterrupted_run() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32], [2.0], [-1.0]], &dev)?;
        let init = Tensor::new(&[[0.1f32, 0.2, 0.3]], &dev)?;
        let dir = tempfile::tempdir().map_err(|e| ckpt_err(e.to_string()))?;
        let ck = dir.path().join("ckpt");

        let w = Var::from_tensor(&init)?;
        let mut a = Trainer::new(vec![("w".into(), w.clone())], cfg())?;
        for _ in 0..3 {
            step(&mut a, &x)?;
        }
        save(&ck, &a, serde_json::json!({"k": 1}))?;
        for _ in 3..8 {
            step(&mut a, &x)?;
        }

        let w2 = Var::zeros((1, 3), DType::F32, &dev)?;
        let mut b = Trainer::new(vec![("w".into(), w2.clone())], cfg())?;
        let meta = load(&ck, &mut b)?;
        assert_eq!(meta["k"], 1);
        assert_eq!(b.step(), 3);
        assert_eq!(b.tokens_seen(), 3);
        while !b.finished() {
            step(&mut b, &x)?;
        }
        assert_eq!(
            w.as_tensor().to_vec2::<f32>()?,
            w2.as_tensor().to_vec2::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn mismatched_or_missing_checkpoints_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().map_err(|e| ckpt_err(e.to_string()))?;
        let ck = dir.path().join("ckpt");
        let w = Var::zeros((1, 3), DType::F32, &dev)?;
        let a = Trainer::new(vec![("w".into(), w)], cfg())?;
        let mut other = Trainer::new(
            vec![("w".into(), Var::zeros((2, 3), DType::F32, &dev)?)],
            cfg(),
        )?;
        assert!(load(&ck, &mut other).is_err());
        save(&ck, &a, Value::Null)?;
        assert!(load(&ck, &mut other).is_err());
        let mut renamed = Trainer::new(
            vec![("v".into(), Var::zeros((1, 3), DType::F32, &dev)?)],
            cfg(),
        )?;
        assert!(load(&ck, &mut renamed).is_err());
        // Corrupt the weights file.
        std::fs::write(ck.join(WEIGHTS), b"garbage").map_err(|e| ckpt_err(e.to_string()))?;
        let mut same = Trainer::new(
            vec![("w".into(), Var::zeros((1, 3), DType::F32, &dev)?)],
            cfg(),
        )?;
        assert!(load(&ck, &mut same).is_err());
        Ok(())
    }
}
