//! The crate's error type: one enum built from documented sub-enums.
//!
//! [`LoadError`] and [`AdapterError`] are caused by the files handed to the crate (untrusted
//! input); [`UsageError`] is caller misuse; [`Error::Tensor`] wraps the numeric backend.

use std::path::PathBuf;

/// Everything that can go wrong in `tandem-model`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model directory or one of its files is bad.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A LoRA adapter directory or one of its files is bad, or it does not fit the base model.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// The caller used the API wrongly (bad shapes, full cache, bad sampling parameters).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The tensor backend failed while computing.
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    /// A chat template (see [`crate::chat_template`]) or the tokenizer config holding it is bad,
    /// or rendering it failed (syntax, a type error, or the template's own `raise_exception`,
    /// e.g. roles that do not alternate). Caused by the model's files or the conversation.
    /// (`origin`, not `source`: thiserror would take a `source` field for the cause.)
    #[error("{origin}: chat template {reason}")]
    ChatTemplate {
        /// Where the template came from (a file, or e.g. a GGUF key).
        origin: String,
        /// What failed.
        reason: String,
    },
    /// Writing a checkpoint failed (only `save_*` functions write).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias for the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A model directory (config, weights, tokenizer) is unusable.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or lacks a required field.
    #[error("{path}: invalid model config: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The config asks for something this implementation does not do (it refuses rather than
    /// silently computing something else).
    #[error("{path}: unsupported model config: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
    /// No `*.safetensors` file (and no `model.safetensors.index.json`) in the directory.
    #[error(
        "{dir}: no *.safetensors weights found; is this a model directory in the Hugging Face layout?"
    )]
    NoWeights {
        /// The directory.
        dir: PathBuf,
    },
    /// A safetensors file is malformed (bad header, offsets outside the file, overlapping data).
    #[error("{path}: malformed safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A safetensors file is shorter than its header says.
    #[error(
        "{path}: truncated safetensors file: header needs {needed} bytes but the file has {actual}; was the download or copy interrupted?"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header says the file must have.
        needed: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// The sharded index (`model.safetensors.index.json`) is malformed or names missing files.
    #[error("{path}: bad safetensors index: {reason}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A tensor the config requires is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint; does config.json match the weights?")]
    MissingTensor {
        /// The tensor name.
        name: String,
    },
    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` has shape {actual:?} but config.json implies {expected:?}")]
    WrongShape {
        /// The tensor name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// A tensor is stored in a dtype this loader does not accept (only F32, F16 and BF16 are).
    #[error("tensor `{name}` is stored as {dtype}; only F32, F16 and BF16 weights are supported")]
    WrongDtype {
        /// The tensor name.
        name: String,
        /// The dtype string from the safetensors header.
        dtype: String,
    },
    /// The config and the weights (or tokenizer) disagree beyond a single tensor's shape.
    #[error("config.json does not match the checkpoint: {reason}")]
    ConfigMismatch {
        /// What disagrees.
        reason: String,
    },
    /// A palletized weights file (see [`crate::pallet`]) is inconsistent: bad metadata, bits
    /// outside {2, 4, 8}, index or table sizes that do not match the declared shape, a group
    /// size that does not divide the rows, non-finite table entries, or stray tensors.
    #[error(
        "{path}: malformed palletized weights: {reason}; was the file written by `tandem-lab palletize`?"
    )]
    Pallet {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A GGUF file is malformed: bad magic or version, a length, count, type or offset that
    /// does not fit the file, duplicate keys or tensors, overlapping tensor data, or metadata
    /// of the wrong type.
    #[error("{path}: malformed GGUF file: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// `tokenizer.json` is missing.
    #[error("{path} is missing; the model directory must contain a Hugging Face tokenizer.json")]
    TokenizerMissing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// `tokenizer.json` exists but cannot be parsed.
    #[error("{path}: invalid tokenizer.json: {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// A LoRA adapter is unusable or does not fit the base model.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `adapter_config.json` is invalid.
    #[error("{path}: invalid adapter config: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The adapter uses a PEFT feature this implementation does not do.
    #[error("{path}: unsupported adapter: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
    /// The adapter's weights file is bad (same checks as base weights).
    #[error("adapter weights: {0}")]
    Weights(Box<LoadError>),
    /// A LoRA tensor the config requires is missing.
    #[error(
        "adapter tensor `{name}` is missing; does adapter_config.json match adapter_model.safetensors?"
    )]
    MissingTensor {
        /// The tensor name.
        name: String,
    },
    /// The file has a tensor the config does not target.
    #[error(
        "adapter tensor `{name}` is not targeted by adapter_config.json (target_modules / layers_to_transform)"
    )]
    UnexpectedTensor {
        /// The tensor name.
        name: String,
    },
    /// The adapter's shapes do not fit this base model: it was made for another base.
    #[error(
        "adapter tensor `{name}` has shape {actual:?} but this base model needs {expected:?}; the adapter was made for a different base model"
    )]
    BaseMismatch {
        /// The tensor name.
        name: String,
        /// The shape this base needs.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
}

/// The caller used the API wrongly.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The KV cache has no room for the new tokens.
    #[error("KV cache full: {used} of {capacity} positions used, {requested} more requested")]
    CacheFull {
        /// Positions already used.
        used: usize,
        /// Capacity.
        capacity: usize,
        /// Positions requested.
        requested: usize,
    },
    /// The KV cache asked for would exceed [`crate::llama::MAX_KV_CACHE_BYTES`].
    #[error(
        "a KV cache for {batch} sequences of {capacity} positions exceeds {max} bytes; ask for \
         fewer tokens or a smaller batch"
    )]
    CacheTooLarge {
        /// Sequences.
        batch: usize,
        /// Positions per sequence.
        capacity: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The input's batch size differs from the cache's.
    #[error("input has batch size {input} but the cache was made for {cache}")]
    BatchMismatch {
        /// Batch of the input.
        input: usize,
        /// Batch of the cache.
        cache: usize,
    },
    /// An empty input where tokens are needed.
    #[error("empty input: {0}")]
    Empty(&'static str),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A sampling parameter is out of range.
    #[error("bad sampling parameter: {0}")]
    Sampling(String),
    /// Palletization was asked for with parameters it cannot honour (bits, group size, target).
    #[error("palletization: {0}")]
    Pallet(String),
    /// A task name that is not one of [`crate::tasks::Task::ALL`].
    #[error("unknown task `{0}`; known tasks: proofread, truecase")]
    UnknownTask(String),
    /// A compute dtype other than F32/F16/BF16 was asked for.
    #[error("unsupported compute dtype {0:?}; use f32 or f16")]
    ComputeDtype(candle_core::DType),
}

impl From<LoadError> for AdapterError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::MissingTensor { name } => AdapterError::MissingTensor { name },
            other => AdapterError::Weights(Box::new(other)),
        }
    }
}
