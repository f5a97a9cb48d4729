//! The Llama-family decoder: config → cache → layers → model, top to bottom.
//!
//! Weights are immutable once built; every forward pass takes the per-sequence state (the
//! [`Cache`]) and the LoRA adapter (if any) as arguments, so one loaded [`Model`] serves many
//! sequences with different adapters at once.
//!
//! # Batching design: left padding
//!
//! A batch of sequences of different lengths is left-padded to a common length. The cache records
//! each sequence's padding; slot `s` of sequence `b` holds position `s - pad[b]`, so RoPE sees the
//! same positions as when the sequence runs alone. The attention mask hides padding slots from
//! real queries (padding queries attend only to themselves, which keeps softmax finite; their
//! outputs are never read). Because all sequences share one write offset, a decode step appends
//! one token to every sequence with a single in-place `slice_set` per layer.
//!
//! # Two forward paths
//!
//! * [`Model::forward`] / [`Model::forward_last`]: inference with the preallocated [`Cache`],
//!   updated in place; fused candle kernels (RMSNorm, RoPE, softmax) that have no backward pass.
//! * [`Model::forward_train`]: one full causal pass with no cache and only differentiable ops, for
//!   `candle_core::backprop`.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::Config;
use crate::error::{Result, UsageError};
use crate::lora::{Adapter, LayerAdapter, LoraPair, Target};
use crate::pallet::{PalletMatrix, kernel};

/// Standard deviation of the random init used when a `VarBuilder` creates fresh weights
/// (transformers' `initializer_range` default for Llama).
const INIT_STD: f64 = 0.02;

// ---------------------------------------------------------------------------------------------
// Rotary position embedding table
// ---------------------------------------------------------------------------------------------

/// Precomputed RoPE cos/sin, `[max_position_embeddings, head_dim / 2]`, in the compute dtype.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// RoFormer (Su et al. 2021) §3.4.2 with θ_i = base^(-2i/d), the non-interleaved
    /// ("rotate_half") layout used by transformers' Llama.
    fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        // transformers computes inv_freq and the angles in float32; do the same.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.head_dim as f32))
            .collect();
        let n = cfg.max_position_embeddings;
        let mut angles = Vec::with_capacity(n * half);
        for p in 0..n {
            angles.extend(inv_freq.iter().map(|f| p as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (n, half), device)?;
        Ok(Rope {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// cos/sin for the given positions: `[seq, half]` when every sequence shares them,
    /// `[batch, seq, half]` otherwise.
    fn select(&self, positions: &Positions) -> Result<(Tensor, Tensor)> {
        match positions {
            Positions::Shared { start, len } => Ok((
                self.cos.narrow(0, *start, *len)?,
                self.sin.narrow(0, *start, *len)?,
            )),
            Positions::PerSequence { ids, batch, len } => {
                let cos = self.cos.index_select(ids, 0)?;
                let sin = self.sin.index_select(ids, 0)?;
                let half = cos.dim(1)?;
                Ok((
                    cos.reshape((*batch, *len, half))?,
                    sin.reshape((*batch, *len, half))?,
                ))
            }
        }
    }
}

/// Positions of the tokens of one forward call.
enum Positions {
    /// All sequences at positions `start..start + len`.
    Shared { start: usize, len: usize },
    /// Flattened `[batch * len]` u32 position ids (left-padded batch).
    PerSequence {
        ids: Tensor,
        batch: usize,
        len: usize,
    },
}

/// Rotates `x` (`[b, heads, seq, head_dim]`) by the angles in `cos`/`sin`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable {
        return Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?);
    }
    // x·cos + rotate_half(x)·sin, from composable (differentiable) ops.
    let (cos, sin) = match cos.rank() {
        2 => (cos.unsqueeze(0)?, sin.unsqueeze(0)?),
        _ => (cos.clone(), sin.clone()),
    };
    let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?.unsqueeze(1)?;
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// RMSNorm (Zhang & Sennrich 2019), computed in f32 as transformers does.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        return Ok(candle_nn::ops::rms_norm_slow(x, weight, eps as f32)?);
    }
    Ok(candle_nn::ops::rms_norm(
        &x.contiguous()?,
        weight,
        eps as f32,
    )?)
}

// ---------------------------------------------------------------------------------------------
// KV cache
// ---------------------------------------------------------------------------------------------

/// Largest KV cache [`Cache::new`] allocates (keys and values of every layer): 64 GiB. Sizes
/// come from `config.json` and the request, so they are checked before allocating.
pub const MAX_KV_CACHE_BYTES: usize = 64 << 30;

/// The per-sequence state of inference: keys and values of every layer, preallocated to a fixed
/// capacity and written in place, plus the left padding of each sequence in the batch.
///
/// One cache belongs to one batch of sequences; the model it runs with is passed to every call.
#[derive(Debug)]
pub struct Cache {
    /// Per layer keys and values, each `[batch, kv_heads, capacity, head_dim]`, contiguous.
    kv: Vec<LayerKv>,
    /// Slots filled so far (shared by all sequences of the batch).
    len: usize,
    capacity: usize,
    /// Leading padding slots of each sequence.
    pad: Vec<usize>,
}

impl Cache {
    /// A cache for `batch` sequences of up to `capacity` tokens each (padding included).
    pub fn new(model: &Model, batch: usize, capacity: usize) -> Result<Self> {
        Self::with_format(model, batch, capacity, KvFormat::Dense)
    }

    /// [`Cache::new`] with keys and values stored as `format` says.
    pub fn with_format(
        model: &Model,
        batch: usize,
        capacity: usize,
        format: KvFormat,
    ) -> Result<Self> {
        let cfg = &model.cfg;
        if batch == 0 || capacity == 0 {
            return Err(UsageError::Empty("cache batch and capacity must be non-zero").into());
        }
        if capacity > cfg.max_position_embeddings {
            return Err(UsageError::CacheFull {
                used: 0,
                capacity: cfg.max_position_embeddings,
                requested: capacity,
            }
            .into());
        }
        // Keys and values of every layer, in bytes, checked before any allocation.
        let elem = match format {
            KvFormat::Dense => model.dtype.size_in_bytes(),
            // One u8 per value and one f32 scale per head_dim values.
            KvFormat::Int8 => 1,
        };
        let bytes = [
            batch,
            cfg.num_key_value_heads,
            capacity,
            cfg.head_dim,
            elem,
            2,
        ]
        .into_iter()
        .try_fold(cfg.num_hidden_layers, usize::checked_mul)
        .filter(|&b| b <= MAX_KV_CACHE_BYTES);
        if bytes.is_none() {
            return Err(UsageError::CacheTooLarge {
                batch,
                capacity,
                max: MAX_KV_CACHE_BYTES,
            }
            .into());
        }
        let shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim);
        let scales = (batch, cfg.num_key_value_heads, capacity, 1);
        let dev = &model.device;
        let kv = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok(match format {
                    KvFormat::Dense => LayerKv::Dense {
                        k: Tensor::zeros(shape, model.dtype, dev)?,
                        v: Tensor::zeros(shape, model.dtype, dev)?,
                    },
                    KvFormat::Int8 => LayerKv::Int8 {
                        k: Tensor::zeros(shape, DType::U8, dev)?,
                        k_scale: Tensor::zeros(scales, DType::F32, dev)?,
                        v: Tensor::zeros(shape, DType::U8, dev)?,
                        v_scale: Tensor::zeros(scales, DType::F32, dev)?,
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Cache {
            kv,
            len: 0,
            capacity,
            pad: vec![0; batch],
        })
    }

    /// How keys and values are stored.
    pub fn format(&self) -> KvFormat {
        match self.kv.first() {
            Some(LayerKv::Int8 { .. }) => KvFormat::Int8,
            _ => KvFormat::Dense,
        }
    }

    /// Bytes the stored keys and values (and their scales) take.
    pub fn bytes(&self) -> usize {
        self.kv.iter().map(LayerKv::bytes).sum()
    }

    /// Slots used so far (the longest sequence's length, padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.pad.len()
    }

    /// Left padding of each sequence.
    pub fn padding(&self) -> &[usize] {
        &self.pad
    }

    /// Forgets every token after the first `len` (keeps the allocation and the padding): the
    /// next `forward` writes from slot `len` on. Used to drop speculative tokens that were not
    /// accepted. A `len` beyond the current length changes nothing.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Forgets all tokens (keeps the allocation) and clears the padding.
    pub fn reset(&mut self) {
        self.len = 0;
        self.pad.iter_mut().for_each(|p| *p = 0);
    }

    /// Declares that the next `forward` call's first `pad[b]` tokens of sequence `b` are
    /// padding. Only valid on an empty cache.
    pub fn set_left_padding(&mut self, pad: &[usize]) -> Result<()> {
        if pad.len() != self.pad.len() {
            return Err(UsageError::BatchMismatch {
                input: pad.len(),
                cache: self.pad.len(),
            }
            .into());
        }
        if self.len != 0 {
            return Err(UsageError::Empty("padding can only be set on an empty cache").into());
        }
        self.pad.copy_from_slice(pad);
        Ok(())
    }

    fn positions(&self, seq: usize, device: &Device) -> Result<Positions> {
        if self.pad.iter().all(|&p| p == 0) {
            return Ok(Positions::Shared {
                start: self.len,
                len: seq,
            });
        }
        let ids: Vec<u32> = self
            .pad
            .iter()
            .flat_map(|&p| (self.len..self.len + seq).map(move |s| s.saturating_sub(p) as u32))
            .collect();
        Ok(Positions::PerSequence {
            ids: Tensor::from_vec(ids, self.pad.len() * seq, device)?,
            batch: self.pad.len(),
            len: seq,
        })
    }

    /// Additive mask `[batch, 1, 1, seq, kv_len]` (0 or -inf), or `None` when every new query
    /// may see every slot (one new token, no padding).
    fn mask(&self, seq: usize, device: &Device) -> Result<Option<Tensor>> {
        let padded = self.pad.iter().any(|&p| p > 0);
        if seq == 1 && !padded {
            return Ok(None);
        }
        let kv_len = self.len + seq;
        let mut m = Vec::with_capacity(self.pad.len() * seq * kv_len);
        for &p in &self.pad {
            for i in 0..seq {
                let slot = self.len + i;
                m.extend((0..kv_len).map(|j| {
                    let visible = j <= slot && (j >= p || j == slot);
                    if visible { 0f32 } else { f32::NEG_INFINITY }
                }));
            }
        }
        Ok(Some(Tensor::from_vec(
            m,
            (self.pad.len(), 1, 1, seq, kv_len),
            device,
        )?))
    }
}

/// How a [`Cache`] stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvFormat {
    /// In the model's compute dtype (exact).
    #[default]
    Dense,
    /// 8-bit: each key and value vector (one position of one head) as bytes with its own f32
    /// scale (symmetric, `absmax / 127`), dequantized when attention reads it. A quarter of
    /// the f32 cache's bytes (plus one scale per vector); the activation quantization of the
    /// seed's on-device optimizations.
    Int8,
}

impl KvFormat {
    /// The name `FromStr` reads and `Display` writes.
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::Dense => "dense",
            KvFormat::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [KvFormat::Dense, KvFormat::Int8]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown KV cache format `{s}`: expected `dense` or `int8`"))
    }
}

/// One layer's cached keys and values.
#[derive(Debug)]
enum LayerKv {
    Dense {
        k: Tensor,
        v: Tensor,
    },
    Int8 {
        k: Tensor,
        k_scale: Tensor,
        v: Tensor,
        v_scale: Tensor,
    },
}

/// Quantizes `[b, h, seq, hd]` to bytes (offset 128) and per-vector f32 scales `[b, h, seq, 1]`.
fn quantize_int8(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let x = x.to_dtype(DType::F32)?;
    let scale = (x.abs()?.max_keepdim(D::Minus1)? / 127.0)?.maximum(f32::MIN_POSITIVE)?;
    let q = x
        .broadcast_div(&scale)?
        .round()?
        .affine(1.0, 128.0)?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?;
    Ok((q, scale))
}

fn dequantize_int8(q: &Tensor, scale: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(q.to_dtype(DType::F32)?
        .affine(1.0, -128.0)?
        .broadcast_mul(scale)?
        .to_dtype(dtype)?)
}

impl LayerKv {
    fn bytes(&self) -> usize {
        let b = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            LayerKv::Dense { k, v } => b(k) + b(v),
            LayerKv::Int8 {
                k,
                k_scale,
                v,
                v_scale,
            } => b(k) + b(k_scale) + b(v) + b(v_scale),
        }
    }

    /// Writes this call's `k`, `v` (`[b, h, seq, hd]`) at `offset` and returns slots
    /// `0..offset + seq` in `dtype`.
    fn append(
        &self,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let seq = k.dim(2)?;
        let len = offset + seq;
        match self {
            LayerKv::Dense { k: kc, v: vc } => {
                // In-place append: no re-concatenation per token.
                kc.slice_set(&k.contiguous()?, 2, offset)?;
                vc.slice_set(&v.contiguous()?, 2, offset)?;
                Ok((kc.narrow(2, 0, len)?, vc.narrow(2, 0, len)?))
            }
            LayerKv::Int8 {
                k: kc,
                k_scale,
                v: vc,
                v_scale,
            } => {
                let (kq, ks) = quantize_int8(k)?;
                let (vq, vs) = quantize_int8(v)?;
                kc.slice_set(&kq.contiguous()?, 2, offset)?;
                k_scale.slice_set(&ks.contiguous()?, 2, offset)?;
                vc.slice_set(&vq.contiguous()?, 2, offset)?;
                v_scale.slice_set(&vs.contiguous()?, 2, offset)?;
                Ok((
                    dequantize_int8(&kc.narrow(2, 0, len)?, &k_scale.narrow(2, 0, len)?, dtype)?,
                    dequantize_int8(&vc.narrow(2, 0, len)?, &v_scale.narrow(2, 0, len)?, dtype)?,
                ))
            }
        }
    }
}

/// Where a layer's keys and values go in one call.
enum Kv<'a> {
    /// Written into the cache at `offset`; attention reads slots `0..offset + seq`.
    Cached { layer: &'a LayerKv, offset: usize },
    /// No cache: attention reads only this call's keys (training).
    Fresh,
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// Palletized weights by checkpoint name, handed to [`Model::new_palletized`].
pub(crate) type Pallets = BTreeMap<String, Arc<PalletMatrix>>;

/// A `[rows, cols]` weight matrix: a dense tensor in the compute dtype, or palletized
/// ([`crate::pallet`]; multiplied by [`kernel::matmul`] without dequantizing it).
#[derive(Debug, Clone)]
pub(crate) enum Weight {
    Dense(Tensor),
    Pallet(Arc<PalletMatrix>),
}

impl Weight {
    /// Loads `name` (`[rows, cols]`) from `pallets` if it is there, else from `vb`.
    fn load(
        vb: &VarBuilder,
        (rows, cols): (usize, usize),
        init: Init,
        pallets: &Pallets,
    ) -> Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        match pallets.get(&name) {
            Some(p) if (p.rows(), p.cols()) == (rows, cols) => Ok(Weight::Pallet(p.clone())),
            Some(p) => Err(crate::error::LoadError::WrongShape {
                name,
                expected: vec![rows, cols],
                actual: vec![p.rows(), p.cols()],
            }
            .into()),
            None => Ok(Weight::Dense(vb.get_with_hints(
                (rows, cols),
                "weight",
                init,
            )?)),
        }
    }

    /// `(rows, cols)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        match self {
            Weight::Dense(t) => match t.dims() {
                [r, c] => (*r, *c),
                [r] => (*r, 1),
                _ => (t.elem_count(), 1),
            },
            Weight::Pallet(p) => (p.rows(), p.cols()),
        }
    }

    /// Bytes held in memory.
    pub(crate) fn byte_size(&self) -> usize {
        match self {
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Pallet(p) => p.byte_size(),
        }
    }

    /// Row-major f32 values (dequantized if palletized).
    pub(crate) fn to_f32_vec(&self) -> Result<Vec<f32>> {
        match self {
            Weight::Dense(t) => Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
            Weight::Pallet(p) => Ok(p.dequantize()),
        }
    }

    /// A dense tensor in `dtype` (dequantized if palletized).
    pub(crate) fn to_dense(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Pallet(p) => {
                Ok(
                    Tensor::from_vec(p.dequantize(), (p.rows(), p.cols()), device)?
                        .to_dtype(dtype)?,
                )
            }
        }
    }

    /// `x Wᵀ` for 2-D `x` `[n, cols]`; `decode`: each row is a different sequence's newest
    /// token (a palletized weight then keeps up to [`kernel::DECODE_MAX_ROWS`] rows on its
    /// decode path, see [`kernel::matmul_decode`]).
    fn matmul_t(&self, x: &Tensor, decode: bool) -> Result<Tensor> {
        match self {
            Weight::Dense(w) => Ok(x.matmul(&w.t()?)?),
            Weight::Pallet(p) if decode => Ok(kernel::matmul_decode(x, p)?),
            Weight::Pallet(p) => Ok(kernel::matmul(x, p)?),
        }
    }
}

/// A bias-free linear projection, `y = x Wᵀ`, plus an optional LoRA update.
#[derive(Debug, Clone)]
pub(crate) struct Proj {
    /// `[out, in]`, as stored by transformers.
    pub(crate) weight: Weight,
}

impl Proj {
    fn load(vb: &VarBuilder, din: usize, dout: usize, pallets: &Pallets) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        Ok(Proj {
            weight: Weight::load(vb, (dout, din), init, pallets)?,
        })
    }

    /// `x`: `[.., in]` → `[.., out]`. LoRA (Hu et al. 2021, eq. 3): `h = W₀x + (α/r)·B A x`.
    fn forward(&self, x: &Tensor, lora: Option<&LoraPair>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let din = dims[dims.len() - 1];
        let rows = x.elem_count() / din;
        let x2 = x.reshape((rows, din))?;
        // `[batch, 1, in]`: one position per sequence (a decode step, or the last position).
        let decode = dims.len() >= 3 && dims[dims.len() - 2] == 1;
        let mut y = self.weight.matmul_t(&x2, decode)?;
        if let Some(l) = lora {
            let delta = x2.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
            y = (y + delta.affine(l.scale, 0.0)?)?;
        }
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dims().0;
        Ok(y.reshape(out)?)
    }
}

/// Grouped-query self-attention (Ainslie et al. 2023).
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) q: Proj,
    pub(crate) k: Proj,
    pub(crate) v: Proj,
    pub(crate) o: Proj,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: &VarBuilder, cfg: &Config, pallets: &Pallets) -> Result<Self> {
        let proj = |t: Target, name: &str| {
            let (din, dout) = cfg.projection_dims(t);
            Proj::load(&vb.pp(name), din, dout, pallets)
        };
        Ok(Attention {
            q: proj(Target::Q, "q_proj")?,
            k: proj(Target::K, "k_proj")?,
            v: proj(Target::V, "v_proj")?,
            o: proj(Target::O, "o_proj")?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        kv: Kv<'_>,
        lora: Option<&LayerAdapter>,
        differentiable: bool,
    ) -> Result<Tensor> {
        let (b, seq, _) = x.dims3()?;
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let slot = |t| lora.and_then(|l| l.get(t));
        let split = |y: Tensor, heads: usize| -> Result<Tensor> {
            Ok(y.reshape((b, seq, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q.forward(x, slot(Target::Q))?, nh)?;
        let k = split(self.k.forward(x, slot(Target::K))?, nkv)?;
        let v = split(self.v.forward(x, slot(Target::V))?, nkv)?;
        let q = apply_rope(&q, cos, sin, differentiable)?;
        let k = apply_rope(&k, cos, sin, differentiable)?;

        let (k, v) = match kv {
            Kv::Cached { layer, offset } => layer.append(&k, &v, offset, q.dtype())?,
            Kv::Fresh => (k, v),
        };
        let kv_len = k.dim(2)?;

        // GQA without copying K/V per query head: query head h uses kv head h / group, so
        // [b, nh, seq, hd] regroups to [b, nkv, group·seq, hd] with a free reshape.
        let group = nh / nkv;
        let q = q.reshape((b, nkv, group * seq, hd))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        // Softmax in f32, as transformers does.
        let mut scores = scores
            .reshape((b, nkv, group, seq, kv_len))?
            .to_dtype(DType::F32)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = probs
            .to_dtype(v.dtype())?
            .reshape((b, nkv, group * seq, kv_len))?;
        let out = probs
            .matmul(&v)?
            .reshape((b, nh, seq, hd))?
            .transpose(1, 2)?
            .reshape((b, seq, nh * hd))?;
        self.o.forward(&out, slot(Target::O))
    }
}

/// SwiGLU feed-forward (Shazeer 2020): `down(silu(gate(x)) · up(x))`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    pub(crate) gate: Proj,
    pub(crate) up: Proj,
    pub(crate) down: Proj,
}

impl Mlp {
    fn load(vb: &VarBuilder, cfg: &Config, pallets: &Pallets) -> Result<Self> {
        let proj = |t: Target, name: &str| {
            let (din, dout) = cfg.projection_dims(t);
            Proj::load(&vb.pp(name), din, dout, pallets)
        };
        Ok(Mlp {
            gate: proj(Target::Gate, "gate_proj")?,
            up: proj(Target::Up, "up_proj")?,
            down: proj(Target::Down, "down_proj")?,
        })
    }

    fn forward(&self, x: &Tensor, lora: Option<&LayerAdapter>) -> Result<Tensor> {
        let slot = |t| lora.and_then(|l| l.get(t));
        let gate = self.gate.forward(x, slot(Target::Gate))?.silu()?;
        let up = self.up.forward(x, slot(Target::Up))?;
        self.down.forward(&(gate * up)?, slot(Target::Down))
    }
}

/// One pre-norm decoder layer.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) input_norm: Tensor,
    pub(crate) attn: Attention,
    pub(crate) post_norm: Tensor,
    pub(crate) mlp: Mlp,
}

impl Layer {
    fn load(vb: &VarBuilder, cfg: &Config, pallets: &Pallets) -> Result<Self> {
        let norm = |name: &str| {
            vb.pp(name)
                .get_with_hints(cfg.hidden_size, "weight", Init::Const(1.0))
        };
        Ok(Layer {
            input_norm: norm("input_layernorm")?,
            attn: Attention::load(&vb.pp("self_attn"), cfg, pallets)?,
            post_norm: norm("post_attention_layernorm")?,
            mlp: Mlp::load(&vb.pp("mlp"), cfg, pallets)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// Which positions to compute logits for.
#[derive(Clone, Copy, PartialEq)]
enum Logits {
    All,
    Last,
}

/// A Llama-family causal language model with immutable weights.
#[derive(Debug, Clone)]
pub struct Model {
    pub(crate) cfg: Config,
    pub(crate) embed: Weight,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    /// `None` when tied to `embed`.
    pub(crate) lm_head: Option<Weight>,
    rope: Rope,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// Applied whenever a forward pass is given no adapter (see [`Config::base_adapter`]).
    base_adapter: Option<std::sync::Arc<Adapter>>,
}

impl Model {
    /// Builds the model from a `VarBuilder` whose names follow transformers'
    /// `LlamaForCausalLM` (`model.layers.N.self_attn.q_proj.weight`, …). The builder's dtype is
    /// the compute dtype. A `VarMap`-backed builder creates trainable weights (random normal
    /// init, std 0.02; norms at 1) for names it does not hold.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::new_palletized(cfg, vb, &Pallets::new())
    }

    /// [`Model::new`] with the weights named in `pallets` taken from there (palletized)
    /// instead of from `vb`.
    pub(crate) fn new_palletized(cfg: &Config, vb: VarBuilder, pallets: &Pallets) -> Result<Self> {
        let dtype = vb.dtype();
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(UsageError::ComputeDtype(dtype).into());
        }
        let device = vb.device().clone();
        let m = vb.pp("model");
        let randn = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let embed = Weight::load(
            &m.pp("embed_tokens"),
            (cfg.vocab_size, cfg.hidden_size),
            randn,
            pallets,
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&m.pp("layers").pp(i), cfg, pallets))
            .collect::<Result<Vec<_>>>()?;
        let norm = m
            .pp("norm")
            .get_with_hints(cfg.hidden_size, "weight", Init::Const(1.0))?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Weight::load(
                &vb.pp("lm_head"),
                (cfg.vocab_size, cfg.hidden_size),
                randn,
                pallets,
            )?)
        };
        Ok(Model {
            rope: Rope::new(cfg, dtype, &device)?,
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            dtype,
            device,
            base_adapter: None,
        })
    }

    /// The adapter applied when a forward pass is given none: the model directory's base
    /// adapter (an accuracy-recovery adapter), if it has one. A task adapter replaces it (task
    /// adapters of such a model are trained starting from it).
    pub fn base_adapter(&self) -> Option<&Adapter> {
        self.base_adapter.as_deref()
    }

    /// Sets (or clears) the base adapter. It must fit this architecture.
    pub fn set_base_adapter(&mut self, adapter: Option<Adapter>) {
        self.base_adapter = adapter.map(std::sync::Arc::new);
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Inference forward pass over `tokens` (`[batch, seq]`, u32), appending to `cache`.
    /// Returns f32 logits `[batch, seq, vocab]`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        adapter: Option<&Adapter>,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        self.forward_cached(tokens, adapter, cache, Logits::All)
    }

    /// Like [`Model::forward`] but computes logits only for the last position: `[batch, vocab]`.
    /// This is what generation needs, and it skips most of the output projection.
    pub fn forward_last(
        &self,
        tokens: &Tensor,
        adapter: Option<&Adapter>,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        self.forward_cached(tokens, adapter, cache, Logits::Last)
    }

    /// Runs a batch of prompts of different lengths through an empty `cache` (left-padded, see
    /// the module docs). Returns f32 logits `[batch, longest, vocab]`; sequence `b`'s real
    /// tokens are at positions `longest - len(b)..`, so every sequence's last token is at the
    /// last position.
    pub fn prefill_batch(
        &self,
        prompts: &[&[u32]],
        adapter: Option<&Adapter>,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
            return Err(UsageError::Empty("every prompt in a batch needs a token").into());
        }
        let mut ids = Vec::with_capacity(prompts.len() * longest);
        let mut pad = Vec::with_capacity(prompts.len());
        for p in prompts {
            self.check_ids(p)?;
            pad.push(longest - p.len());
            ids.extend(std::iter::repeat_n(0u32, longest - p.len()));
            ids.extend_from_slice(p);
        }
        cache.set_left_padding(&pad)?;
        let tokens = Tensor::from_vec(ids, (prompts.len(), longest), &self.device)?;
        self.forward(&tokens, adapter, cache)
    }

    /// Full-sequence causal forward for training: no cache, no in-place ops, differentiable by
    /// `candle_core::backprop`. `input_ids`: `[batch, seq]` u32. Returns logits
    /// `[batch, seq, vocab]` in the compute dtype.
    pub fn forward_train(&self, input_ids: &Tensor, adapter: Option<&Adapter>) -> Result<Tensor> {
        let (_, seq) = input_ids.dims2()?;
        if seq == 0 {
            return Err(UsageError::Empty("training input has no tokens").into());
        }
        if seq > self.cfg.max_position_embeddings {
            return Err(UsageError::CacheFull {
                used: 0,
                capacity: self.cfg.max_position_embeddings,
                requested: seq,
            }
            .into());
        }
        let (cos, sin) = self
            .rope
            .select(&Positions::Shared { start: 0, len: seq })?;
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, 1, seq, seq), &self.device)?;
        let adapter = adapter.or(self.base_adapter());
        let mut x = self.embed(input_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(
                layer,
                &x,
                (&cos, &sin),
                Some(&mask),
                Kv::Fresh,
                adapter.map(|a| a.layer(i)),
                true,
            )?;
        }
        let x = rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, true)?;
        self.output(&x)
    }

    fn forward_cached(
        &self,
        tokens: &Tensor,
        adapter: Option<&Adapter>,
        cache: &mut Cache,
        logits: Logits,
    ) -> Result<Tensor> {
        // Run the whole pass on a worker of the rayon pool candle and the palletized kernel
        // split their work over: the dozens of small parallel matmuls of a decode step then
        // fork and join as local jobs, instead of each handing a job to the pool and putting
        // this thread to sleep until it is done.
        if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
            return rayon::scope(|_| self.forward_cached_here(tokens, adapter, cache, logits));
        }
        self.forward_cached_here(tokens, adapter, cache, logits)
    }

    fn forward_cached_here(
        &self,
        tokens: &Tensor,
        adapter: Option<&Adapter>,
        cache: &mut Cache,
        logits: Logits,
    ) -> Result<Tensor> {
        let (b, seq) = tokens.dims2()?;
        if b != cache.batch() {
            return Err(UsageError::BatchMismatch {
                input: b,
                cache: cache.batch(),
            }
            .into());
        }
        if seq == 0 {
            return Err(UsageError::Empty("forward needs at least one token").into());
        }
        if cache.len + seq > cache.capacity {
            return Err(UsageError::CacheFull {
                used: cache.len,
                capacity: cache.capacity,
                requested: seq,
            }
            .into());
        }
        let (cos, sin) = self.rope.select(&cache.positions(seq, &self.device)?)?;
        let mask = cache.mask(seq, &self.device)?;
        let offset = cache.len;
        let adapter = adapter.or(self.base_adapter());
        let mut x = self.embed(tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_kv = &cache.kv[i];
            x = self.layer_forward(
                layer,
                &x,
                (&cos, &sin),
                mask.as_ref(),
                Kv::Cached {
                    layer: layer_kv,
                    offset,
                },
                adapter.map(|a| a.layer(i)),
                false,
            )?;
        }
        cache.len += seq;
        let x = match logits {
            Logits::All => x,
            Logits::Last => x.narrow(1, seq - 1, 1)?,
        };
        let x = rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, false)?;
        let out = self.output(&x)?.to_dtype(DType::F32)?;
        match logits {
            Logits::All => Ok(out),
            Logits::Last => Ok(out.squeeze(1)?),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        kv: Kv<'_>,
        lora: Option<&LayerAdapter>,
        differentiable: bool,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let h = rms_norm(x, &layer.input_norm, eps, differentiable)?;
        let h = layer
            .attn
            .forward(&h, cos, sin, mask, kv, lora, differentiable)?;
        let x = (x + h)?;
        let h = rms_norm(&x, &layer.post_norm, eps, differentiable)?;
        let h = layer.mlp.forward(&h, lora)?;
        Ok((x + h)?)
    }

    fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, seq) = tokens.dims2()?;
        let flat = tokens.flatten_all()?;
        let h = self.cfg.hidden_size;
        match &self.embed {
            Weight::Dense(e) => Ok(e.index_select(&flat, 0)?.reshape((b, seq, h))?),
            Weight::Pallet(p) => {
                // Only the looked-up rows are dequantized.
                let ids = flat.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let mut out = vec![0f32; ids.len() * h];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(h)) {
                    if id as usize >= p.rows() {
                        return Err(UsageError::TokenOutOfRange {
                            id,
                            vocab: p.rows(),
                        }
                        .into());
                    }
                    p.dequantize_row(id as usize, row);
                }
                Ok(Tensor::from_vec(out, (b, seq, h), &self.device)?.to_dtype(self.dtype)?)
            }
        }
    }

    fn output(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        Proj { weight: w.clone() }.forward(x, None)
    }

    /// Every weight matrix with its checkpoint name: embedding, projections, untied head.
    pub(crate) fn weights(&self) -> Vec<(String, &Weight)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed)];
        for (i, l) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                out.push((
                    format!("model.layers.{i}.{}.weight", t.module_path()),
                    &l.proj(t).weight,
                ));
            }
        }
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h));
        }
        out
    }

    /// [`Model::weights`], mutable.
    pub(crate) fn weights_mut(&mut self) -> Vec<(String, &mut Weight)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &mut self.embed)];
        for (i, l) in self.layers.iter_mut().enumerate() {
            let name = |t: Target| format!("model.layers.{i}.{}.weight", t.module_path());
            let (a, m) = (&mut l.attn, &mut l.mlp);
            out.push((name(Target::Q), &mut a.q.weight));
            out.push((name(Target::K), &mut a.k.weight));
            out.push((name(Target::V), &mut a.v.weight));
            out.push((name(Target::O), &mut a.o.weight));
            out.push((name(Target::Gate), &mut m.gate.weight));
            out.push((name(Target::Up), &mut m.up.weight));
            out.push((name(Target::Down), &mut m.down.weight));
        }
        if let Some(h) = &mut self.lm_head {
            out.push(("lm_head.weight".to_string(), h));
        }
        out
    }

    /// Every weight (matrices and norms) as stored: what a palletized checkpoint holds.
    pub(crate) fn named_weights(&self) -> Vec<(String, Weight)> {
        let mut out: Vec<(String, Weight)> = self
            .weights()
            .into_iter()
            .map(|(n, w)| (n, w.clone()))
            .collect();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                Weight::Dense(l.input_norm.clone()),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                Weight::Dense(l.post_norm.clone()),
            ));
        }
        out.push((
            "model.norm.weight".to_string(),
            Weight::Dense(self.norm.clone()),
        ));
        out
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            Some(&id) => Err(UsageError::TokenOutOfRange {
                id,
                vocab: self.cfg.vocab_size,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// Converts token ids to a `[1, n]` tensor after checking they are in the vocabulary.
    pub fn tokens_tensor(&self, ids: &[u32]) -> Result<Tensor> {
        self.check_ids(ids)?;
        Ok(Tensor::from_slice(ids, (1, ids.len()), &self.device)?)
    }

    /// Every weight with its transformers name (tied output projection not repeated), as
    /// dense tensors in the compute dtype: palletized weights are dequantized (their values, not
    /// the originals they were quantized from).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.named_weights()
            .into_iter()
            // Dequantizing cannot fail: a checked `PalletMatrix` has exactly rows·cols values.
            .filter_map(|(n, w)| w.to_dense(self.dtype, &self.device).ok().map(|t| (n, t)))
            .collect()
    }

    /// Bytes of all weights as held in memory (compute dtype; palletized weights at their packed
    /// size).
    pub fn weight_bytes(&self) -> usize {
        self.named_weights()
            .iter()
            .map(|(_, w)| w.byte_size())
            .sum()
    }

    /// A copy of this model with `adapter` folded into the weights (`W + scale·B·A`), for
    /// serving one adapter at full speed. Untouched weights are shared, not copied.
    pub fn merge_adapter(&self, adapter: &Adapter) -> Result<Model> {
        adapter.check_fits(&self.cfg)?;
        let mut merged = self.clone();
        // `adapter` replaces the base adapter (task adapters are trained starting from it).
        merged.base_adapter = None;
        for (i, layer) in merged.layers.iter_mut().enumerate() {
            for t in Target::ALL {
                if let Some(l) = adapter.layer(i).get(t) {
                    let p = layer.proj_mut(t);
                    let w = p
                        .weight
                        .to_dense(DType::F32, &self.device)?
                        .to_dtype(DType::F32)?;
                    let delta =
                        l.b.to_dtype(DType::F32)?
                            .matmul(&l.a.to_dtype(DType::F32)?)?
                            .affine(l.scale, 0.0)?;
                    p.weight = Weight::Dense((w + delta)?.to_dtype(self.dtype)?);
                }
            }
        }
        Ok(merged)
    }
}

impl Layer {
    pub(crate) fn proj(&self, t: Target) -> &Proj {
        match t {
            Target::Q => &self.attn.q,
            Target::K => &self.attn.k,
            Target::V => &self.attn.v,
            Target::O => &self.attn.o,
            Target::Gate => &self.mlp.gate,
            Target::Up => &self.mlp.up,
            Target::Down => &self.mlp.down,
        }
    }

    fn proj_mut(&mut self, t: Target) -> &mut Proj {
        match t {
            Target::Q => &mut self.attn.q,
            Target::K => &mut self.attn.k,
            Target::V => &mut self.attn.v,
            Target::O => &mut self.attn.o,
            Target::Gate => &mut self.mlp.gate,
            Target::Up => &mut self.mlp.up,
            Target::Down => &mut self.mlp.down,
        }
    }
}
