//! Training: pre-training the base models and LoRA task adapters, on the model stack's own
//! differentiable forward pass.
//!
//! Pieces, each usable alone:
//! - [`tokenizer`]: byte-level BPE training (`tokenizer.json`).
//! - [`data`]: corpus → token stream → deterministic batches.
//! - [`schedule`]: linear warm-up + cosine decay.
//! - [`optim`]: AdamW whose state can be checkpointed, and global-norm gradient clipping.
//! - [`rng`]: the seeded generator every random choice is drawn from.
//! - [`checkpoint`] and [`trainer`]: the loop, periodic checkpoints, exact resume.
//!
//! No I/O happens here except reading and writing the paths the caller hands in (checkpoints).

pub mod checkpoint;
pub mod data;
pub mod grow;
pub mod optim;
pub mod rng;
pub mod schedule;
pub mod tokenizer;
pub mod trainer;

/// Errors specific to training (tensor failures are `Error::Tensor`).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The training data is unusable (too short, bad cache, out-of-vocabulary ids).
    #[error("training data: {0}")]
    Data(String),
    /// A checkpoint is missing, corrupt, or was made for another configuration.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Tokenizer training or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at step {step}: loss {loss}; lower the learning rate or check the data"
    )]
    Diverged {
        /// The step.
        step: u64,
        /// The loss value.
        loss: f64,
    },
    /// A training hyper-parameter is invalid.
    #[error("bad training setting: {0}")]
    Setting(String),
}
