//! AdamW with inspectable state, and gradient clipping by global norm.
//!
//! The update is exactly `candle_nn::AdamW`'s (Loshchilov & Hutter, "Decoupled Weight Decay
//! Regularization", ICLR 2019, Algorithm 2 with bias correction; a test checks the two agree).
//! It is re-implemented because `candle_nn::AdamW` keeps its moments and step count private, so
//! a checkpoint could not store them and a resumed run would restart Adam from zero moments.
//! Two more differences: weight decay applies only to matrices (rank >= 2), never to RMSNorm
//! gains (as in GPT-2 / nanoGPT), and gradients can be scaled (clipping) without copying the
//! gradient store.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::Result;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (applied to rank >= 2 parameters only).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

#[derive(Debug)]
struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW over named variables.
#[derive(Debug)]
pub struct AdamW {
    slots: BTreeMap<String, Slot>,
    step: u64,
    params: AdamWParams,
}

impl AdamW {
    /// An optimizer for `vars` (name → variable) with zero moments.
    pub fn new(vars: impl IntoIterator<Item = (String, Var)>, params: AdamWParams) -> Result<Self> {
        let mut slots = BTreeMap::new();
        for (name, var) in vars {
            let m = var.as_tensor().zeros_like()?;
            let v = var.as_tensor().zeros_like()?;
            let decay = var.as_tensor().rank() >= 2;
            slots.insert(name, Slot { var, m, v, decay });
        }
        Ok(Self {
            slots,
            step: 0,
            params,
        })
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Number of parameters (scalars) optimized.
    pub fn num_params(&self) -> usize {
        self.slots
            .values()
            .map(|s| s.var.as_tensor().elem_count())
            .sum()
    }

    /// Global L2 norm of the gradients of the optimized variables (missing gradients count 0).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for s in self.slots.values() {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        Ok(sq.sqrt())
    }

    /// One update at learning rate `lr`, with every gradient multiplied by `grad_scale` first
    /// (use [`clip_scale`] for clipping by global norm).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let scale_m = 1.0 / (1.0 - beta1.powi(t));
        let scale_v = 1.0 / (1.0 - beta2.powi(t));
        for s in self.slots.values_mut() {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = if grad_scale == 1.0 {
                g.clone()
            } else {
                (g * grad_scale)?
            };
            let m = ((&s.m * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&s.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let theta = s.var.as_tensor();
            let theta = if s.decay && weight_decay != 0.0 {
                (theta * (1.0 - lr * weight_decay))?
            } else {
                theta.clone()
            };
            let update = ((&m * scale_m)? / ((&v * scale_v)?.sqrt()? + eps)?)?;
            let next = (theta - (update * lr)?)?;
            s.var.set(&next)?;
            s.m = m;
            s.v = v;
        }
        Ok(())
    }

    /// The moments as named tensors (`NAME.exp_avg`, `NAME.exp_avg_sq`, PyTorch's names) for a
    /// checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for (name, s) in &self.slots {
            out.push((format!("{name}.exp_avg"), s.m.clone()));
            out.push((format!("{name}.exp_avg_sq"), s.v.clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count. Every variable
    /// must have both moments with its own shape.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        for (name, s) in self.slots.iter_mut() {
            let get = |suffix: &str| -> Result<Tensor> {
                let key = format!("{name}.{suffix}");
                let t = tensors.get(&key).ok_or_else(|| TrainError::Checkpoint(format!(
                    "optimizer state lacks `{key}`; was the checkpoint made for another model config?"
                )))?;
                if t.dims() != s.var.as_tensor().dims() {
                    return Err(TrainError::Checkpoint(format!(
                        "optimizer state `{key}` has shape {:?} but the parameter has {:?}",
                        t.dims(),
                        s.var.as_tensor().dims()
                    ))
                    .into());
                }
                Ok(t.to_dtype(s.var.as_tensor().dtype())?)
            };
            s.m = get("exp_avg")?;
            s.v = get("exp_avg_sq")?;
        }
        self.step = step;
        Ok(())
    }
}

/// Multiplier that brings a gradient of global norm `norm` down to at most `max_norm`
/// (Pascanu et al. 2013, "On the difficulty of training RNNs", §3.2). 1.0 when no clipping is
/// needed or `max_norm <= 0` (clipping disabled).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 || !norm.is_finite() || norm <= max_norm {
        1.0
    } else {
        max_norm / (norm + 1e-6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;

    fn loss(w: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        w.matmul(x)?.sqr()?.sum_all()
    }

    #[test]
    fn matches_candle_nn_adamw() -> Result<()> {
        let dev = Device::Cpu;
        let init = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?;
        let x = Tensor::new(&[[0.5f32], [-1.0], [2.0]], &dev)?;
        let a = Var::from_tensor(&init)?;
        let b = Var::from_tensor(&init)?;
        let p = AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut ours = AdamW::new([("w".to_string(), a.clone())], p)?;
        let mut theirs = candle_nn::AdamW::new(
            vec![b.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.05,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
        )?;
        for _ in 0..5 {
            let ga = loss(a.as_tensor(), &x)?.backward()?;
            ours.step(&ga, 0.05, 1.0)?;
            let gb = loss(b.as_tensor(), &x)?.backward()?;
            theirs.step(&gb)?;
        }
        let d = (a.as_tensor() - b.as_tensor())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6, "diff {d}");
        assert_ne!(a.as_tensor().to_vec2::<f32>()?, init.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn vectors_are_not_decayed() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::ones(3, DType::F32, &dev)?;
        let mut opt = AdamW::new(
            [("norm".to_string(), v.clone())],
            AdamWParams {
                weight_decay: 0.5,
                ..Default::default()
            },
        )?;
        // Zero gradient: only weight decay could move the parameter.
        let g = (v.as_tensor() * 0.0)?.sum_all()?.backward()?;
        opt.step(&g, 0.1, 1.0)?;
        assert_eq!(v.as_tensor().to_vec1::<f32>()?, vec![1.0, 1.0, 1.0]);
        Ok(())
    }

    #[test]
    fn state_round_trip_resumes_identically() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.5f32], [-1.0], [2.0]], &dev)?;
        let init = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?;
        let run = |steps_before: usize, resume: bool| -> Result<Vec<Vec<f32>>> {
            let w = Var::from_tensor(&init)?;
            let mut opt = AdamW::new([("w".to_string(), w.clone())], AdamWParams::default())?;
            for _ in 0..steps_before {
                let g = loss(w.as_tensor(), &x)?.backward()?;
                opt.step(&g, 0.01, 1.0)?;
            }
            if resume {
                let saved: std::collections::HashMap<String, Tensor> =
                    opt.state_tensors().into_iter().collect();
                let w2 = Var::from_tensor(&w.as_tensor().copy()?)?;
                let mut opt2 = AdamW::new([("w".to_string(), w2.clone())], AdamWParams::default())?;
                opt2.load_state(&saved, opt.step_count())?;
                for _ in steps_before..6 {
                    let g = loss(w2.as_tensor(), &x)?.backward()?;
                    opt2.step(&g, 0.01, 1.0)?;
                }
                return Ok(w2.as_tensor().to_vec2::<f32>()?);
            }
            for _ in steps_before..6 {
                let g = loss(w.as_tensor(), &x)?.backward()?;
                opt.step(&g, 0.01, 1.0)?;
            }
            Ok(w.as_tensor().to_vec2::<f32>()?)
        };
        assert_eq!(run(3, true)?, run(3, false)?);
        Ok(())
    }

    #[test]
    fn load_state_rejects_missing_or_misshapen_moments() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::zeros((2, 2), DType::F32, &dev)?;
        let mut opt = AdamW::new([("w".to_string(), w)], AdamWParams::default())?;
        let mut m = std::collections::HashMap::new();
        assert!(opt.load_state(&m, 1).is_err());
        m.insert(
            "w.exp_avg".to_string(),
            Tensor::zeros((2, 2), DType::F32, &dev)?,
        );
        m.insert(
            "w.exp_avg_sq".to_string(),
            Tensor::zeros((3, 2), DType::F32, &dev)?,
        );
        assert!(opt.load_state(&m, 1).is_err());
        Ok(())
    }

    #[test]
    fn grad_norm_and_clipping() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[3f32, 4.0], &dev)?)?;
        let opt = AdamW::new([("w".to_string(), w.clone())], AdamWParams::default())?;
        // d/dw (0.5 * |w|^2) = w, norm 5.
        let g = (w.as_tensor().sqr()?.sum_all()? * 0.5)?.backward()?;
        let n = opt.grad_norm(&g)?;
        assert!((n - 5.0).abs() < 1e-5);
        assert!((clip_scale(n, 1.0) * n - 1.0).abs() < 1e-5);
        assert_eq!(clip_scale(n, 10.0), 1.0);
        assert_eq!(clip_scale(n, 0.0), 1.0);
        assert_eq!(clip_scale(f64::NAN, 1.0), 1.0);
        Ok(())
    }
}
