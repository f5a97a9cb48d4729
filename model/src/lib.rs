//! `tandem-model`: the model and LoRA adapter stack shared by the device and the nodes.
//!
//! A Llama-family decoder (grouped-query attention, RoPE, RMSNorm, SwiGLU, tied or untied
//! embeddings) on candle, loading the Hugging Face layout (`config.json` from transformers 4.x or
//! 5.x, `*.safetensors` incl. sharded index, `tokenizer.json`) and PEFT LoRA adapters. The crate
//! does no I/O beyond reading the paths handed to it (and writing the directory handed to a
//! `save_pretrained`).
//!
//! # Inference
//!
//! ```text
//! let m = load_model(dir, DType::F16, &Device::Cpu)?;            // LoadedModel {model, tokenizer, digest}
//! let a = load_adapter(adir, m.model.config(), DType::F16, &dev)?; // LoadedAdapter {adapter, digest}
//! let mut cache = Cache::new(&m.model, batch, capacity)?;         // per sequence(s), preallocated
//! let logits = m.model.forward(&tokens, Some(&a.adapter), &mut cache)?;  // [b, seq, vocab] f32
//! m.model.generate(&m.tokenizer, &prompt_ids, None, &params, |delta| { print!("{delta}"); ControlFlow::Continue(()) })?;
//! ```
//! The adapter is an argument of each call, so one `Model` serves requests with different
//! adapters (or none) concurrently; `Model::merge_adapter` makes a merged copy for speed.
//!
//! # Training API (for the `tandem-lab` crate: `tandem-lab train`, `train-adapter`)
//!
//! * Build trainable weights: `let vm = VarMap::new(); let vb = VarBuilder::from_varmap(&vm,
//!   DType::F32, &dev); let model = Model::new(&cfg, vb)?;` — names follow transformers
//!   (`model.layers.N.self_attn.q_proj.weight`), missing ones are created (normal std 0.02, norms
//!   1). To start from a checkpoint, `load_model` it and copy `model.named_tensors()` into the
//!   `VarMap` (`vm.set_one(name, tensor)`) before calling `Model::new` — or fill the VarMap with
//!   `vm.load(path)` from a `model.safetensors`.
//! * LoRA with the base frozen: load the base with `load_model` (plain tensors, not Vars), then
//!   `Adapter::new(AdapterConfig::new(r, alpha, &Target::ALL), model.config(),
//!   VarBuilder::from_varmap(&avm, DType::F32, &dev))`; A starts Kaiming-uniform, B at zero (PEFT
//!   init). Optimise `avm.all_vars()` only.
//! * Differentiable forward: `model.forward_train(&input_ids /*[b, seq] u32*/, adapter)` →
//!   logits `[b, seq, vocab]` in the compute dtype; full causal attention, no cache, no in-place
//!   ops, so `loss.backward()` works.
//! * Save: `model.save_pretrained(dir)` writes `config.json` + `model.safetensors`;
//!   `adapter.save_pretrained(dir)` writes `adapter_config.json` + `adapter_model.safetensors`
//!   (PEFT names). Both load back with `load_model` / `load_adapter` (copy a `tokenizer.json` next
//!   to a saved model).

pub mod adapter_cache;
pub mod chat_template;
pub mod config;
pub mod digest;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod loader;
pub mod lora;
pub mod pallet;
pub mod sampling;
pub mod tasks;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tokenizer;
pub mod weights;

pub use adapter_cache::{AdapterCache, CacheStats};
pub use candle_core::{DType, Device, Tensor, Var};
pub use candle_nn::{VarBuilder, VarMap};
pub use config::Config;
pub use digest::{AdapterDigest, ModelDigest, Sha256Digest};
pub use error::{AdapterError, Error, LoadError, Result, UsageError};
pub use generate::{
    FinishReason, GenerateParams, Generation, PromptLookup, SpeculationStats, propose,
};
pub use gguf::{GgufFile, ImportProgress, ImportReport, import as import_gguf, resolve_model_path};
pub use llama::{Cache, KvFormat, Model};
pub use loader::{
    LoadedAdapter, LoadedModel, adapter_digest, adapter_files, install_base_adapter, load_adapter,
    load_model, model_digest, model_files,
};
pub use lora::{Adapter, AdapterConfig, Target};
pub use pallet::{Bits, PalletFile, PalletMatrix};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{StreamDecoder, Tokenizer};

/// Sets `RAYON_NUM_THREADS` to the number of CPUs this process may use, if it is not set.
///
/// candle looks up its thread count on every CPU matmul; without this variable it re-reads and
/// parses `/proc/cpuinfo` each time (about a third of a node's time under batched load, see
/// `BENCHMARKS.md`, "tandem-node serve"). With it set the look-up is one environment read. The
/// value is what rayon uses anyway when the variable is unset, so nothing else changes. The
/// `tandem`, `tandem-lab` and `tandem-node` binaries call this first thing; an app embedding the model stack
/// should set the variable itself or call this.
///
/// # Safety
/// It writes the process environment: call it before any other thread exists (first thing in
/// `main`), as for [`std::env::set_var`].
#[allow(unsafe_code)]
pub unsafe fn default_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    // SAFETY: the caller guarantees no other thread is running.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
}
