//! Palletizing a whole model against calibration text, layer by layer (GPTQ's sequential
//! scheme, Frantar et al. 2023 §4 "Step 3"): the calibration tokens run through the model; at
//! each layer the inputs of its projections (already passed through the layers palletized
//! before it) give the Gram matrices `H = XᵀX` that [`gptq_palletize`] minimises the output
//! error against; the layer's outputs are then recomputed with its palletized weights and feed
//! the next layer. The tied embedding / output head goes last, against the final normed
//! hidden states (the head's inputs), with a ridge for its use as a lookup table.
//!
//! The forward pass here is a second, plain implementation of the runtime's Llama
//! ([`tandem_model::Model::forward_train`]: pre-norm, RoPE "rotate_half", grouped-query
//! attention, SwiGLU) over the model's dense tensors, because the runtime model does not expose
//! the inputs of its projections; a test checks both give the same loss.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use tandem_model::pallet::{Bits, PalletMatrix};
use tandem_model::{Model, UsageError};

use super::gptq::{GptqOptions, gptq_palletize};
use super::kmeans::quantize_matrix;
use super::plan::PalletPlan;
use crate::Result;

/// Name of the embedding in the checkpoint.
pub const EMBED: &str = "model.embed_tokens.weight";
/// Name of an untied output head.
pub const LM_HEAD: &str = "lm_head.weight";

/// Options of [`palletize_calibrated`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibOptions {
    /// How each matrix is fitted.
    pub gptq: GptqOptions,
    /// For a tied embedding, the ridge added to the head's Gram matrix, as a fraction of its
    /// mean diagonal: the same matrix is also a lookup table, where every column counts alike.
    pub embed_ridge: f64,
    /// Rows per table of the embedding (and an untied head) instead of the plan's group size:
    /// an 8-bit table of 256 entries per row would cost more than the indices.
    pub embed_group_size: Option<usize>,
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions {
            gptq: GptqOptions::default(),
            embed_ridge: 0.1,
            embed_group_size: None,
        }
    }
}

/// What palletizing one operation did to its output on the calibration tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpFit {
    /// `‖Ŷ − Y‖² / ‖Y‖²` of the operation's output on its (palletized-model) inputs.
    pub relative_error: f64,
}

/// The model's dense weights (f32) and the calibration forward pass over them.
struct Calib {
    w: BTreeMap<String, Tensor>,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    cfg: tandem_model::Config,
}

fn layer_name(i: usize, what: &str) -> String {
    format!("model.layers.{i}.{what}.weight")
}

impl Calib {
    fn new(model: &Model, seq: usize) -> Result<Self> {
        let cfg = model.config().clone();
        let dev = Device::Cpu;
        let w = model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.to_device(&dev)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let half = cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.head_dim as f32))
            .collect();
        let angles: Vec<f32> = (0..seq)
            .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (seq, half), &dev)?;
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        Ok(Calib {
            w,
            cos: angles.cos()?,
            sin: angles.sin()?,
            mask: Tensor::from_vec(mask, (1, 1, 1, seq, seq), &dev)?,
            cfg,
        })
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.w
            .get(name)
            .ok_or_else(|| UsageError::Pallet(format!("the model has no weight `{name}`")).into())
    }

    fn rms(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            self.get(name)?,
            self.cfg.rms_norm_eps as f32,
        )?)
    }

    /// `x Wᵀ` for `x` `[b, t, in]`.
    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        linear(x, self.get(name)?)
    }

    /// Attention of layer `i` up to (not including) `o_proj`: `[b, t, heads·head_dim]`.
    fn attention(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let (hd, nh, nkv) = (
            self.cfg.head_dim,
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
        );
        let split = |y: Tensor, heads: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let q = split(self.linear(h, &layer_name(i, "self_attn.q_proj"))?, nh)?;
        let k = split(self.linear(h, &layer_name(i, "self_attn.k_proj"))?, nkv)?;
        let v = split(self.linear(h, &layer_name(i, "self_attn.v_proj"))?, nkv)?;
        let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
        let group = nh / nkv;
        let q = q.reshape((b, nkv, group * t, hd))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?
            .reshape((b, nkv, group, t, t))?
            .broadcast_add(&self.mask.narrow(3, 0, t)?.narrow(4, 0, t)?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, nkv, group * t, t))?;
        Ok(probs
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?)
    }

    fn embed(&self, windows: &[&[u32]]) -> Result<Tensor> {
        let t = windows[0].len();
        let ids: Vec<u32> = windows.iter().flat_map(|w| w.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, windows.len() * t, &Device::Cpu)?;
        Ok(self.get(EMBED)?.index_select(&ids, 0)?.reshape((
            windows.len(),
            t,
            self.cfg.hidden_size,
        ))?)
    }

    /// Logits of the final hidden states.
    #[cfg(test)]
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.rms(x, "model.norm.weight")?;
        let head = if self.cfg.tie_word_embeddings {
            EMBED
        } else {
            LM_HEAD
        };
        self.linear(&h, head)
    }
}

fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, t, din) = x.dims3()?;
    let dout = w.dim(0)?;
    Ok(x.reshape((b * t, din))?
        .matmul(&w.t()?)?
        .reshape((b, t, dout))?)
}

/// `XᵀX` over all tokens of `x` (`[b, t, c]`), row-major f64.
fn gram(x: &Tensor) -> Result<Vec<f64>> {
    let (b, t, c) = x.dims3()?;
    let x2 = x.reshape((b * t, c))?;
    let g = x2.t()?.matmul(&x2)?;
    Ok(g.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Mean next-token loss (nats) of `windows` (each `t + 1` tokens) under the calibration
/// forward pass: checks it against the runtime model.
#[cfg(test)]
fn loss(c: &Calib, windows: &[&[u32]]) -> Result<f64> {
    let inputs: Vec<&[u32]> = windows.iter().map(|w| &w[..w.len() - 1]).collect();
    let mut x = c.embed(&inputs)?;
    for i in 0..c.cfg.num_hidden_layers {
        let h = c.rms(&x, &layer_name(i, "input_layernorm"))?;
        let a = c.attention(i, &h)?;
        x = (x + c.linear(&a, &layer_name(i, "self_attn.o_proj"))?)?;
        let h = c.rms(&x, &layer_name(i, "post_attention_layernorm"))?;
        let g = c.linear(&h, &layer_name(i, "mlp.gate_proj"))?.silu()?;
        let u = c.linear(&h, &layer_name(i, "mlp.up_proj"))?;
        x = (x + c.linear(&(g * u)?, &layer_name(i, "mlp.down_proj"))?)?;
    }
    let logits = c.logits(&x)?;
    let (b, t, v) = logits.dims3()?;
    let lsm = candle_nn::ops::log_softmax(&logits.reshape((b * t, v))?, candle_core::D::Minus1)?;
    let targets: Vec<u32> = windows
        .iter()
        .flat_map(|w| w[1..].iter().copied())
        .collect();
    let targets = Tensor::from_vec(targets, (b * t, 1), &Device::Cpu)?;
    let picked = lsm.gather(&targets, 1)?;
    Ok(-f64::from(picked.mean_all()?.to_scalar::<f32>()?))
}

/// Palletizes the operations of `plan` against the calibration `windows` (all the same length),
/// layer by layer (see the module docs). Operations not in `plan` stay dense. Returns the
/// model with the palletized matrices and, per palletized operation, its fit; `progress` is
/// called after each operation.
pub fn palletize_calibrated(
    model: &Model,
    windows: &[&[u32]],
    plan: &PalletPlan,
    opts: &CalibOptions,
    mut progress: impl FnMut(&str),
) -> Result<(Model, BTreeMap<String, OpFit>)> {
    let Some(t) = windows.first().map(|w| w.len()) else {
        return Err(UsageError::Pallet("no calibration windows".into()).into());
    };
    if t == 0 || windows.iter().any(|w| w.len() != t) {
        return Err(UsageError::Pallet(
            "calibration windows must be non-empty and of one length".into(),
        )
        .into());
    }
    let ops: BTreeMap<String, [usize; 2]> = model.palletizable_ops().into_iter().collect();
    if let Some(n) = plan.bits.keys().find(|n| !ops.contains_key(*n)) {
        return Err(UsageError::Pallet(format!(
            "`{n}` is not a palletizable weight of this model"
        ))
        .into());
    }
    let mut run = Run {
        c: Calib::new(model, t)?,
        plan,
        opts,
        ops: &ops,
        out: BTreeMap::new(),
        fits: BTreeMap::new(),
        progress: &mut progress,
    };
    let mut x = run.c.embed(windows)?;
    for i in 0..run.c.cfg.num_hidden_layers {
        // Attention: q, k, v share their input.
        let h = run.c.rms(&x, &layer_name(i, "input_layernorm"))?;
        let g = gram(&h)?;
        for p in ["q_proj", "k_proj", "v_proj"] {
            run.fit(&layer_name(i, &format!("self_attn.{p}")), &h, &g)?;
        }
        let a = run.c.attention(i, &h)?;
        let g = gram(&a)?;
        let o = run.fit(&layer_name(i, "self_attn.o_proj"), &a, &g)?;
        x = (x + o)?;
        // MLP: gate and up share their input.
        let h = run.c.rms(&x, &layer_name(i, "post_attention_layernorm"))?;
        let g = gram(&h)?;
        let gate = run.fit(&layer_name(i, "mlp.gate_proj"), &h, &g)?.silu()?;
        let up = run.fit(&layer_name(i, "mlp.up_proj"), &h, &g)?;
        let act = (gate * up)?;
        let g = gram(&act)?;
        let d = run.fit(&layer_name(i, "mlp.down_proj"), &act, &g)?;
        x = (x + d)?;
    }
    // The output head against the final normed states; a tied embedding also serves lookups.
    let hf = run.c.rms(&x, "model.norm.weight")?;
    let mut g = gram(&hf)?;
    let cols = run.c.cfg.hidden_size;
    if run.c.cfg.tie_word_embeddings {
        let mean = (0..cols).map(|j| g[j * cols + j]).sum::<f64>() / cols as f64;
        for j in 0..cols {
            g[j * cols + j] += opts.embed_ridge * mean;
        }
        run.fit(EMBED, &hf, &g)?;
    } else {
        run.fit(LM_HEAD, &hf, &g)?;
        // An untied embedding is only looked up: plain k-means.
        if let Some(&bits) = plan.bits.get(EMBED) {
            let [rows, cols] = ops[EMBED];
            let values = run.c.get(EMBED)?.flatten_all()?.to_vec1::<f32>()?;
            let gs = opts.embed_group_size.unwrap_or(plan.group_size);
            let m = quantize_matrix(&values, rows, cols, bits, gs, None)?;
            run.out.insert(EMBED.to_string(), m);
            (run.progress)(EMBED);
        }
    }
    let Run { out, fits, .. } = run;
    Ok((model.with_pallet_matrices(out)?, fits))
}

/// The state of one [`palletize_calibrated`] pass.
struct Run<'a, P: FnMut(&str)> {
    c: Calib,
    plan: &'a PalletPlan,
    opts: &'a CalibOptions,
    ops: &'a BTreeMap<String, [usize; 2]>,
    out: BTreeMap<String, PalletMatrix>,
    fits: BTreeMap<String, OpFit>,
    progress: &'a mut P,
}

impl<P: FnMut(&str)> Run<'_, P> {
    /// Fits `name` against inputs `x` with Gram matrix `h` if it is planned, swaps its
    /// palletized values into the forward pass, and returns the operation's output on `x`
    /// (with the palletized values if it was fitted).
    fn fit(&mut self, name: &str, x: &Tensor, h: &[f64]) -> Result<Tensor> {
        let w = self.c.get(name)?.clone();
        let Some(&bits) = self.plan.bits.get(name) else {
            return linear(x, &w);
        };
        let [rows, cols] = self.ops[name];
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        let group_size = match self.opts.embed_group_size {
            Some(g) if name == EMBED || name == LM_HEAD => g,
            _ => self.plan.group_size,
        };
        let m = gptq_palletize(&values, rows, cols, bits, group_size, h, &self.opts.gptq)
            .map_err(|e| UsageError::Pallet(format!("`{name}`: {e}")))?;
        let q = Tensor::from_vec(m.dequantize(), (rows, cols), &Device::Cpu)?;
        let y = linear(x, &w)?;
        let yq = linear(x, &q)?;
        let num = (&yq - &y)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let den = y.sqr()?.sum_all()?.to_scalar::<f32>()?;
        self.fits.insert(
            name.to_string(),
            OpFit {
                relative_error: f64::from(num) / f64::from(den).max(1e-30),
            },
        );
        self.c.w.insert(name.to_string(), q);
        self.out.insert(name.to_string(), m);
        (self.progress)(name);
        Ok(yq)
    }
}

/// The palletizable operations of `model` at `bits`, except those whose names contain one of
/// `dense`.
pub fn plan_except(model: &Model, bits: Bits, group_size: usize, dense: &[String]) -> PalletPlan {
    PalletPlan {
        bits: model
            .palletizable_ops()
            .into_iter()
            .filter(|(n, _)| !dense.iter().any(|d| n.contains(d.as_str())))
            .map(|(n, _)| (n, bits))
            .collect(),
        group_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::{VarBuilder, VarMap};

    fn tiny(tied: bool) -> Model {
        let cfg = tandem_model::Config {
            vocab_size: 61,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: tied,
            eos_token_ids: vec![0],
            bos_token_id: None,
            base_adapter: None,
        };
        let vm = VarMap::new();
        Model::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).expect("model")
    }

    fn windows() -> Vec<Vec<u32>> {
        (0..3)
            .map(|w| (0..17).map(|i| ((i * 7 + w * 13) % 61) as u32).collect())
            .collect()
    }

    #[test]
    fn calibration_forward_matches_the_runtime() {
        for tied in [true, false] {
            let m = tiny(tied);
            let ws = windows();
            let ws: Vec<&[u32]> = ws.iter().map(Vec::as_slice).collect();
            let want = crate::train::trainer::eval_loss(&m, &ws, None).expect("runtime");
            let c = Calib::new(&m, 16).expect("calib");
            let got = loss(&c, &ws).expect("calib loss");
            assert!((got - want).abs() < 1e-4, "tied {tied}: {got} vs {want}");
        }
    }

    #[test]
    fn palletizes_every_planned_op() {
        for tied in [true, false] {
            let m = tiny(tied);
            let ws = windows();
            let ws: Vec<&[u32]> = ws.iter().map(Vec::as_slice).collect();
            let plan = plan_except(&m, Bits::B4, 1, &[]);
            let (pm, fits) = palletize_calibrated(&m, &ws, &plan, &CalibOptions::default(), |_| {})
                .expect("palletize");
            assert_eq!(pm.pallet_matrices().len(), plan.bits.len());
            assert!(fits.values().all(|f| f.relative_error.is_finite()));
            let plan = plan_except(&m, Bits::B2, 1, &["embed_tokens".into()]);
            let (pm, _) = palletize_calibrated(&m, &ws, &plan, &CalibOptions::default(), |_| {})
                .expect("palletize");
            assert!(!pm.pallet_matrices().contains_key(EMBED));
        }
    }
}
