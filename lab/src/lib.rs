//! `tandem-lab`: building Tandem's models — the training side that the device and node
//! runtime (`tandem-model`) does not carry.
//!
//! * [`train`]: BPE tokenizer training, pre-training the base models and LoRA task adapters
//!   on the runtime's differentiable forward pass, checkpoints and exact resume.
//! * [`tasks`]: task examples made from the corpus (typo injection, lower-casing), grading
//!   (CER, good/neutral/poor) and adapter-training batches. The prompt format is the runtime's
//!   [`tandem_model::tasks`].
//! * [`pallet`]: the k-means quantizer, per-operation bit allocation and palletizing a model;
//!   the runtime loads and runs the result ([`tandem_model::pallet`]).
//!
//! The `tandem-lab` binary drives these (`tandem-lab train`, `train-adapter`, `palletize`,
//! `perplexity`, `eval …`); see `models/build.sh`.

pub mod error;
pub mod pallet;
pub mod tasks;
pub mod train;

pub use error::{Error, Result};
