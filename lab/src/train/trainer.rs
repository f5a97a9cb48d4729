//! The training loop: loss, one optimizer step, deterministic initialisation.
//!
//! The same loop trains a base model (all weights trainable) and a LoRA adapter (only the
//! adapter's `lora_A` / `lora_B` are variables; the base weights are plain tensors, so backprop
//! computes no gradient for them and they stay frozen).

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::optim::{AdamW, AdamWParams, clip_scale};
use super::rng::SplitMix64;
use super::schedule::CosineSchedule;
use crate::Result;

/// Hyper-parameters of one training run (stored in every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Seed of every random choice (init, batches).
    pub seed: u64,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Learning-rate schedule (its `total_steps` is the run's length).
    pub schedule: CosineSchedule,
    /// AdamW settings.
    pub adamw: AdamWParams,
    /// Clip gradients to this global L2 norm (0 disables).
    pub grad_clip: f64,
}

impl TrainConfig {
    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| -> Result<()> { Err(TrainError::Setting(m).into()) };
        if self.batch_size == 0 || self.seq_len == 0 {
            return bad(format!(
                "batch size {} and sequence length {} must be positive",
                self.batch_size, self.seq_len
            ));
        }
        if !(self.schedule.peak_lr > 0.0 && self.schedule.peak_lr.is_finite())
            || self.schedule.min_lr < 0.0
        {
            return bad(format!(
                "learning rates must be positive (peak {}, min {})",
                self.schedule.peak_lr, self.schedule.min_lr
            ));
        }
        if self.schedule.total_steps == 0 {
            return bad("total steps must be positive".into());
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The step just completed (1-based: after the first update this is 1).
    pub step: u64,
    /// Loss before the update.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient global norm before clipping.
    pub grad_norm: f64,
}

/// Mean next-token cross-entropy of `logits` `[batch, seq, vocab]` against `targets`
/// `[batch, seq]` (u32). With `mask` (`[batch, seq]`, f32 0/1) only positions with 1 count —
/// task adapters learn the answer, not the prompt.
pub fn lm_loss(logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let logits = logits.to_dtype(DType::F32)?.reshape((b * t, v))?;
    let targets = targets.reshape(b * t)?;
    match mask {
        None => Ok(candle_nn::loss::cross_entropy(&logits, &targets)?),
        Some(mask) => {
            let logp = candle_nn::ops::log_softmax(&logits, 1)?;
            let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
            let mask = mask.to_dtype(DType::F32)?.reshape(b * t)?;
            let count = mask.sum_all()?.to_scalar::<f32>()?;
            if count <= 0.0 {
                return Err(TrainError::Data(
                    "a batch has no target positions (mask is all zero)".into(),
                )
                .into());
            }
            Ok(((picked * mask)?.sum_all()?.neg()? / f64::from(count))?)
        }
    }
}

/// Mean next-token loss (nats per token) of `model` over `windows` (each `seq_len + 1`
/// tokens, all the same length), computed in batches of 8. Perplexity is `exp` of this.
pub fn eval_loss(
    model: &tandem_model::Model,
    windows: &[&[u32]],
    adapter: Option<&tandem_model::Adapter>,
) -> Result<f64> {
    let mut total = 0.0;
    let mut count = 0usize;
    for chunk in windows.chunks(8) {
        let t = chunk[0].len().saturating_sub(1);
        if t == 0 || chunk.iter().any(|w| w.len() != t + 1) {
            return Err(TrainError::Data(
                "evaluation windows must share one length of at least 2".into(),
            )
            .into());
        }
        let mut x = Vec::with_capacity(chunk.len() * t);
        let mut y = Vec::with_capacity(chunk.len() * t);
        for w in chunk {
            x.extend_from_slice(&w[..t]);
            y.extend_from_slice(&w[1..]);
        }
        let x = Tensor::from_vec(x, (chunk.len(), t), model.device())?;
        let y = Tensor::from_vec(y, (chunk.len(), t), model.device())?;
        let logits = model.forward_train(&x, adapter)?;
        let l = lm_loss(&logits, &y, None)?.to_scalar::<f32>()?;
        total += f64::from(l) * (chunk.len() * t) as f64;
        count += chunk.len() * t;
    }
    if count == 0 {
        return Err(TrainError::Data(
            "no evaluation windows: the text is shorter than one sequence".into(),
        )
        .into());
    }
    Ok(total / count as f64)
}

/// Re-initialises `vars` deterministically from `seed`, keyed by name, so the same seed gives
/// the same starting weights (candle's CPU random initialisers cannot be seeded).
///
/// - names containing `norm` or `lora_B`: left as built (constant 1 / 0);
/// - `lora_A`: U(-1/sqrt(in), 1/sqrt(in)) (PEFT's Kaiming-uniform with a = sqrt(5));
/// - `o_proj` / `down_proj`: N(0, 0.02 / sqrt(2 · layers)) (GPT-2's residual scaling);
/// - everything else: N(0, 0.02).
pub fn init_deterministic(vars: &[(String, Var)], seed: u64, num_layers: usize) -> Result<()> {
    let resid_std = 0.02 / (2.0 * num_layers.max(1) as f64).sqrt();
    for (name, var) in vars {
        if name.contains("norm") || name.contains("lora_B") {
            continue;
        }
        let t = var.as_tensor();
        let n = t.elem_count();
        let mut rng = SplitMix64::derive(seed, &format!("init:{name}"), 0);
        let values: Vec<f32> = if name.contains("lora_A") {
            let fan_in = t.dims().last().copied().unwrap_or(1).max(1) as f64;
            let bound = 1.0 / fan_in.sqrt();
            (0..n)
                .map(|_| ((rng.unit_f64() * 2.0 - 1.0) * bound) as f32)
                .collect()
        } else {
            let std = if name.contains("o_proj") || name.contains("down_proj") {
                resid_std
            } else {
                0.02
            };
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        };
        let fresh = Tensor::from_vec(values, t.shape(), t.device())?.to_dtype(t.dtype())?;
        var.set(&fresh)?;
    }
    Ok(())
}

/// Optimizer state plus progress counters.
#[derive(Debug)]
pub struct Trainer {
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) opt: AdamW,
    pub(crate) config: TrainConfig,
    pub(crate) tokens_seen: u64,
}

impl Trainer {
    /// A trainer for `vars` (name → trainable variable), sorted by name for determinism.
    pub fn new(mut vars: Vec<(String, Var)>, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let opt = AdamW::new(vars.iter().cloned(), config.adamw)?;
        Ok(Self {
            vars,
            opt,
            config,
            tokens_seen: 0,
        })
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.opt.step_count()
    }

    /// Target tokens trained on so far.
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }

    /// Trainable parameter count.
    pub fn num_params(&self) -> usize {
        self.opt.num_params()
    }

    /// The trainable variables, sorted by name.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Whether the schedule's last step is done.
    pub fn finished(&self) -> bool {
        self.step() >= self.config.schedule.total_steps
    }

    /// Backpropagates `loss`, clips, and applies one AdamW update at the scheduled rate.
    /// `tokens` is the number of target tokens in the batch (for the counters).
    pub fn apply(&mut self, loss: &Tensor, tokens: u64) -> Result<StepStats> {
        let step = self.step();
        let loss_value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged {
                step,
                loss: loss_value,
            }
            .into());
        }
        let grads = loss.backward()?;
        let grad_norm = self.opt.grad_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(TrainError::Diverged {
                step,
                loss: grad_norm,
            }
            .into());
        }
        let lr = self.config.schedule.lr(step);
        self.opt
            .step(&grads, lr, clip_scale(grad_norm, self.config.grad_clip))?;
        self.tokens_seen += tokens;
        Ok(StepStats {
            step: step + 1,
            loss: loss_value,
            lr,
            grad_norm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn masked_loss_counts_only_masked_positions() -> Result<()> {
        let dev = Device::Cpu;
        // Two positions; position 0 predicts token 1 confidently, position 1 is wrong.
        let logits = Tensor::new(&[[[0f32, 10.0, 0.0], [10.0, 0.0, 0.0]]], &dev)?;
        let targets = Tensor::new(&[[1u32, 2]], &dev)?;
        let full = lm_loss(&logits, &targets, None)?.to_scalar::<f32>()?;
        let m0 = lm_loss(&logits, &targets, Some(&Tensor::new(&[[1f32, 0.0]], &dev)?))?
            .to_scalar::<f32>()?;
        let m1 = lm_loss(&logits, &targets, Some(&Tensor::new(&[[0f32, 1.0]], &dev)?))?
            .to_scalar::<f32>()?;
        assert!(m0 < 1e-3, "{m0}");
        assert!(m1 > 9.0, "{m1}");
        assert!((full - (m0 + m1) / 2.0).abs() < 1e-4);
        assert!(lm_loss(&logits, &targets, Some(&Tensor::new(&[[0f32, 0.0]], &dev)?)).is_err());
        Ok(())
    }

    #[test]
    fn init_is_deterministic_per_seed() -> Result<()> {
        let dev = Device::Cpu;
        let mk = || -> Result<Vec<(String, Var)>> {
            Ok(vec![
                (
                    "model.layers.0.self_attn.q_proj.weight".to_string(),
                    Var::zeros((8, 8), DType::F32, &dev)?,
                ),
                (
                    "model.norm.weight".to_string(),
                    Var::ones(8, DType::F32, &dev)?,
                ),
                (
                    "x.lora_A.weight".to_string(),
                    Var::zeros((2, 16), DType::F32, &dev)?,
                ),
            ])
        };
        let a = mk()?;
        let b = mk()?;
        let c = mk()?;
        init_deterministic(&a, 1, 2)?;
        init_deterministic(&b, 1, 2)?;
        init_deterministic(&c, 2, 2)?;
        let q = |v: &[(String, Var)], i: usize| {
            v[i].1
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
        };
        assert_eq!(q(&a, 0)?, q(&b, 0)?);
        assert_ne!(q(&a, 0)?, q(&c, 0)?);
        assert_eq!(q(&a, 1)?, vec![1.0; 8]);
        assert!(q(&a, 2)?.iter().all(|x| x.abs() <= 0.25));
        Ok(())
    }

    #[test]
    fn nan_loss_is_divergence_error() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::ones(2, DType::F32, &dev)?;
        let cfg = TrainConfig {
            seed: 0,
            batch_size: 1,
            seq_len: 1,
            schedule: CosineSchedule {
                peak_lr: 0.1,
                min_lr: 0.0,
                warmup_steps: 0,
                total_steps: 3,
            },
            adamw: AdamWParams::default(),
            grad_clip: 1.0,
        };
        let mut t = Trainer::new(vec![("w".into(), w.clone())], cfg)?;
        let nan = (w.as_tensor().sum_all()? * f64::NAN)?;
        assert!(matches!(
            t.apply(&nan, 1),
            Err(crate::Error::Train(TrainError::Diverged { .. }))
        ));
        let ok = w.as_tensor().sqr()?.sum_all()?;
        let s = t.apply(&ok, 1)?;
        assert_eq!(s.step, 1);
        assert!(w.as_tensor().to_vec1::<f32>()?[0] < 1.0);
        Ok(())
    }
}
