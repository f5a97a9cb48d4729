//! Loading (and saving) model and adapter directories in the Hugging Face / PEFT layouts.
//!
//! Everything is checked before any weight is built: the config, every safetensors header
//! against its file length, the sharded index, and every tensor's presence, shape and dtype
//! against what the config implies. Only the paths handed in are read (or, for `save_*`,
//! written).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::config::Config;
use crate::digest::{AdapterDigest, ModelDigest, digest_files};
use crate::error::{AdapterError, Error, LoadError, Result, UsageError};
use crate::llama::Model;
use crate::lora::{Adapter, AdapterConfig};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, SafetensorsFile};

/// File names of the Hugging Face layout.
pub const CONFIG_FILE: &str = "config.json";
/// Tokenizer file name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Sharded-weights index file name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Single-file weights name (what `save_pretrained` writes).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Generation defaults (stop ids) as transformers writes them; optional.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// Tokenizer settings (special tokens, chat template) as transformers writes them; optional.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The chat template where transformers 5 writes it; optional.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The optional files that change how a model is prompted or stops, covered by its digest
/// when present (a directory without them keeps the digest it had before they existed).
pub const OPTIONAL_MODEL_FILES: [&str; 3] = [
    GENERATION_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    CHAT_TEMPLATE_FILE,
];

/// PEFT adapter config file name.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT adapter weights file name.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A loaded model directory: weights, tokenizer and content digest.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The model.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// SHA-256 over its files (see [`crate::digest`]).
    pub digest: ModelDigest,
    /// Dtype(s) the weights were stored in.
    pub stored_dtypes: BTreeSet<String>,
    /// Bytes of the weight files on disk.
    pub file_bytes: u64,
}

/// A loaded adapter directory.
#[derive(Debug, Clone)]
pub struct LoadedAdapter {
    /// The adapter.
    pub adapter: Adapter,
    /// SHA-256 over its files.
    pub digest: AdapterDigest,
}

fn read(path: &Path) -> std::result::Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Finds the weight shards of `dir`: the files named by the index if there is one, otherwise
/// every `*.safetensors` file, sorted.
fn weight_files(dir: &Path) -> std::result::Result<(Vec<PathBuf>, Option<PathBuf>), LoadError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let bad = |reason: String| LoadError::Index {
            path: index.clone(),
            reason,
        };
        let v: Value = serde_json::from_slice(&read(&index)?)
            .map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let mut shards = BTreeSet::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("entry `{name}` is not a file name")))?;
            // Shards must be plain file names inside `dir`: no path traversal.
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                return Err(bad(format!(
                    "entry `{name}` names `{file}`, not a plain file name"
                )));
            }
            shards.insert(file.to_string());
        }
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(bad(format!("shard {} does not exist", missing.display())));
        }
        return Ok((files, Some(index)));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::NoWeights {
            dir: dir.to_owned(),
        });
    }
    Ok((files, None))
}

/// Whether a checkpoint tensor the config does not use may be ignored.
fn ignorable(name: &str, cfg: &Config) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

/// Checks `available` (name → (shape, dtype)) against what `expected` requires, in the order of
/// `expected`, so the first problem reported is stable.
fn check_tensors(
    expected: &[(String, Vec<usize>)],
    available: &HashMap<String, (Vec<usize>, String, bool)>,
) -> std::result::Result<(), LoadError> {
    for (name, shape) in expected {
        let (actual, dtype, ok_dtype) = available
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor { name: name.clone() })?;
        if actual != shape {
            return Err(LoadError::WrongShape {
                name: name.clone(),
                expected: shape.clone(),
                actual: actual.clone(),
            });
        }
        if !ok_dtype {
            return Err(LoadError::WrongDtype {
                name: name.clone(),
                dtype: dtype.clone(),
            });
        }
    }
    Ok(())
}

/// The files that define a model directory, exactly the set its [`ModelDigest`] covers:
/// `config.json`, `tokenizer.json`, the shard index when present, and every weights shard.
/// Checks only that they exist (nothing is parsed beyond the shard index).
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(LoadError::Io {
            path: config_path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no config.json"),
        }
        .into());
    }
    let tok_path = dir.join(TOKENIZER_FILE);
    if !tok_path.is_file() {
        return Err(LoadError::TokenizerMissing { path: tok_path }.into());
    }
    let cfg = read_config(dir)?;
    let (shards, index) = weight_files(dir)?;
    let mut files = vec![config_path, tok_path];
    files.extend(optional_files(dir));
    files.extend(index);
    files.extend(shards);
    files.extend(base_adapter_files(dir, &cfg)?);
    Ok(files)
}

/// `config.json` with the stop ids of `generation_config.json` (when present) merged in.
pub fn read_config(dir: &Path) -> Result<Config> {
    let config_path = dir.join(CONFIG_FILE);
    let mut cfg = Config::from_json(&read(&config_path)?, &config_path)?;
    let gen_path = dir.join(GENERATION_CONFIG_FILE);
    if gen_path.is_file() {
        cfg.merge_generation_config(&read(&gen_path)?, &gen_path)?;
    }
    Ok(cfg)
}

/// Those of [`OPTIONAL_MODEL_FILES`] that `dir` holds, in that order.
fn optional_files(dir: &Path) -> Vec<PathBuf> {
    OPTIONAL_MODEL_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}

/// The files of the base adapter `cfg` names (empty when it names none); each must exist.
fn base_adapter_files(dir: &Path, cfg: &Config) -> std::result::Result<Vec<PathBuf>, LoadError> {
    let Some(name) = &cfg.base_adapter else {
        return Ok(Vec::new());
    };
    let files = adapter_files(&dir.join(name));
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(LoadError::Config {
            path: dir.join(CONFIG_FILE),
            reason: format!(
                "`{}` names the base adapter `{name}`, but {} does not exist",
                crate::config::BASE_ADAPTER_KEY,
                missing.display()
            ),
        });
    }
    Ok(files)
}

/// Loads the base adapter `cfg` names (if any) and attaches it to `model`; returns its files
/// (for the model digest).
fn attach_base_adapter(
    dir: &Path,
    cfg: &Config,
    model: &mut Model,
    dtype: DType,
    device: &Device,
) -> Result<Vec<PathBuf>> {
    let files = base_adapter_files(dir, cfg)?;
    if let Some(name) = &cfg.base_adapter {
        let loaded = load_adapter(&dir.join(name), cfg, dtype, device)?;
        model.set_base_adapter(Some(loaded.adapter));
    }
    Ok(files)
}

/// The content digest of a model directory without loading its weights (the same value
/// [`load_model`] reports).
pub fn model_digest(dir: &Path) -> Result<ModelDigest> {
    let files = model_files(dir)?;
    Ok(ModelDigest(digest_files(&files).map_err(|source| {
        LoadError::Io {
            path: dir.to_owned(),
            source,
        }
    })?))
}

/// The files of a PEFT adapter directory its [`AdapterDigest`] covers.
pub fn adapter_files(dir: &Path) -> Vec<PathBuf> {
    vec![
        dir.join(ADAPTER_CONFIG_FILE),
        dir.join(ADAPTER_WEIGHTS_FILE),
    ]
}

/// The content digest of an adapter directory without loading it (the same value
/// [`load_adapter`] reports).
pub fn adapter_digest(dir: &Path) -> Result<AdapterDigest> {
    Ok(AdapterDigest(digest_files(&adapter_files(dir)).map_err(
        |source| AdapterError::Io {
            path: dir.to_owned(),
            source,
        },
    )?))
}

/// Loads a model directory (`config.json`, `*.safetensors` or a sharded index,
/// `tokenizer.json`) with weights converted to `dtype` (F32, F16 or BF16) on `device`.
pub fn load_model(dir: &Path, dtype: DType, device: &Device) -> Result<LoadedModel> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(UsageError::ComputeDtype(dtype).into());
    }
    // 1. Config (and the stop ids of generation_config.json).
    let config_path = dir.join(CONFIG_FILE);
    let cfg = read_config(dir)?;

    // 2. Tokenizer, and its agreement with the config.
    let tok_path = dir.join(TOKENIZER_FILE);
    if !tok_path.is_file() {
        return Err(LoadError::TokenizerMissing { path: tok_path }.into());
    }
    let tokenizer = Tokenizer::from_bytes(&read(&tok_path)?, &tok_path)?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(LoadError::ConfigMismatch {
            reason: format!(
                "tokenizer.json has {} tokens but config.json vocab_size is {}",
                tokenizer.vocab_size(),
                cfg.vocab_size
            ),
        }
        .into());
    }

    // 3. Weight headers: every shard parsed and checked against its length.
    let (shards, index) = weight_files(dir)?;
    let mut files: Vec<SafetensorsFile> = shards
        .iter()
        .map(|p| SafetensorsFile::open(p))
        .collect::<std::result::Result<_, _>>()?;
    // A palletized checkpoint (one file, marked in its metadata) takes its own path.
    if files
        .iter()
        .any(|f| crate::pallet::format::is_palletized(&f.metadata))
    {
        drop(files);
        if index.is_some() || shards.len() != 1 {
            return Err(LoadError::Pallet {
                path: dir.to_owned(),
                reason: format!(
                    "a palletized checkpoint is one model.safetensors file, found {} shard(s){}",
                    shards.len(),
                    if index.is_some() { " and an index" } else { "" }
                ),
            }
            .into());
        }
        let (mut model, stored_dtypes) = load_palletized(&shards[0], &cfg, dtype, device)?;
        let base_files = attach_base_adapter(dir, &cfg, &mut model, dtype, device)?;
        let file_bytes = shards[0].metadata().map(|m| m.len()).unwrap_or(0);
        let mut digest_set = vec![config_path, tok_path];
        digest_set.extend(optional_files(dir));
        digest_set.push(shards[0].clone());
        digest_set.extend(base_files);
        let digest = ModelDigest(digest_files(&digest_set).map_err(|source| LoadError::Io {
            path: dir.to_owned(),
            source,
        })?);
        return Ok(LoadedModel {
            model,
            tokenizer,
            digest,
            stored_dtypes,
            file_bytes,
        });
    }
    let mut location: HashMap<String, usize> = HashMap::new();
    let mut available = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        for (name, e) in &f.entries {
            if location.insert(name.clone(), i).is_some() {
                return Err(LoadError::Safetensors {
                    path: f.path.clone(),
                    reason: format!("tensor `{name}` appears in more than one shard"),
                }
                .into());
            }
            available.insert(
                name.clone(),
                (e.shape.clone(), e.dtype.clone(), e.weight_dtype().is_some()),
            );
        }
    }

    // 4. Tensors against the config: presence, shape, dtype, and nothing unexplained.
    let expected = cfg.expected_tensors();
    check_tensors(&expected, &available)?;
    let wanted: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&String> = available
        .keys()
        .filter(|n| !wanted.contains(n.as_str()) && !ignorable(n, &cfg))
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(LoadError::ConfigMismatch {
            reason: format!(
                "the checkpoint has tensor `{name}` that config.json does not describe (num_hidden_layers = {}, tie_word_embeddings = {}){}",
                cfg.num_hidden_layers,
                cfg.tie_word_embeddings,
                if extra.len() > 1 {
                    format!(" and {} more", extra.len() - 1)
                } else {
                    String::new()
                }
            ),
        }
        .into());
    }

    // 5. Read and convert, one tensor at a time.
    let mut tensors = HashMap::with_capacity(expected.len());
    let mut stored_dtypes = BTreeSet::new();
    for (name, _) in &expected {
        let f = &mut files[location[name]];
        stored_dtypes.insert(f.entries[name].dtype.clone());
        tensors.insert(name.clone(), f.read(name, dtype, device)?);
    }
    drop(files);
    let mut model = Model::new(&cfg, VarBuilder::from_tensors(tensors, dtype, device))?;
    let base_files = attach_base_adapter(dir, &cfg, &mut model, dtype, device)?;

    // 6. Digest over exactly the files read.
    let mut digest_set = vec![config_path, tok_path];
    digest_set.extend(optional_files(dir));
    digest_set.extend(index);
    let file_bytes = shards
        .iter()
        .map(|p| p.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    digest_set.extend(shards);
    digest_set.extend(base_files);
    let digest = ModelDigest(digest_files(&digest_set).map_err(|source| LoadError::Io {
        path: dir.to_owned(),
        source,
    })?);
    Ok(LoadedModel {
        model,
        tokenizer,
        digest,
        stored_dtypes,
        file_bytes,
    })
}

/// Reads a palletized `model.safetensors` and builds the model: palletized weights stay packed
/// (their linear layers run [`crate::pallet::kernel`]); dense ones are converted to `dtype`.
/// The same presence / shape / no-extra checks as for dense checkpoints apply.
fn load_palletized(
    path: &Path,
    cfg: &Config,
    dtype: DType,
    device: &Device,
) -> Result<(Model, BTreeSet<String>)> {
    let bytes = read(path)?;
    let file = crate::pallet::PalletFile::from_bytes(&bytes, path)?;
    drop(bytes);
    let expected = cfg.expected_tensors();
    let mut available = HashMap::new();
    for (name, m) in &file.matrices {
        available.insert(
            name.clone(),
            (
                vec![m.rows(), m.cols()],
                format!("PALLET{}", m.bits().get()),
                true,
            ),
        );
    }
    for (name, d) in &file.dense {
        available.insert(name.clone(), (d.shape.clone(), d.dtype.clone(), true));
    }
    check_tensors(&expected, &available)?;
    let wanted: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(name) = available
        .keys()
        .filter(|n| !wanted.contains(n.as_str()))
        .min()
    {
        return Err(LoadError::ConfigMismatch {
            reason: format!(
                "the palletized checkpoint has tensor `{name}` that config.json does not describe"
            ),
        }
        .into());
    }
    let stored: BTreeSet<String> = available.values().map(|(_, d, _)| d.clone()).collect();
    let mut tensors = HashMap::with_capacity(file.dense.len());
    for (name, d) in &file.dense {
        let entry = weights::TensorEntry {
            dtype: d.dtype.clone(),
            shape: d.shape.clone(),
            start: 0,
            end: d.data.len() as u64,
        };
        tensors.insert(
            name.clone(),
            weights::tensor_from_bytes(name, &entry, &d.data, dtype, device)?,
        );
    }
    let pallets = file
        .matrices
        .into_iter()
        .map(|(n, m)| (n, std::sync::Arc::new(m)))
        .collect();
    let model = Model::new_palletized(
        cfg,
        VarBuilder::from_tensors(tensors, dtype, device),
        &pallets,
    )?;
    Ok((model, stored))
}

/// Writes `config.json` (from `cfg`) and `model.safetensors` (`weights`, already serialized)
/// into the existing directory `dir`.
pub(crate) fn write_model_files(cfg: &Config, dir: &Path, weights: &[u8]) -> Result<()> {
    write(dir.join(CONFIG_FILE), &json_bytes(&cfg.to_hf_json()))?;
    write(dir.join(WEIGHTS_FILE), weights)
}

/// Loads a PEFT adapter directory for the base architecture `base`, in `dtype` on `device`.
/// An adapter made for another base (different widths or more layers) is an
/// [`AdapterError::BaseMismatch`].
pub fn load_adapter(
    dir: &Path,
    base: &Config,
    dtype: DType,
    device: &Device,
) -> Result<LoadedAdapter> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| AdapterError::Io { path, source }
    };
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let cfg_bytes = std::fs::read(&cfg_path).map_err(io(&cfg_path))?;
    let config = AdapterConfig::from_json(&cfg_bytes, &cfg_path)?;
    let w_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let w_bytes = std::fs::read(&w_path).map_err(io(&w_path))?;
    let header = weights::parse_header(&w_bytes, w_bytes.len() as u64, &w_path)
        .map_err(AdapterError::from)?;

    let expected = Adapter::expected_tensors(&config, base);
    let wanted: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&String> = header
        .keys()
        .filter(|n| !wanted.contains(n.as_str()))
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(AdapterError::UnexpectedTensor {
            name: (*name).clone(),
        }
        .into());
    }
    let mut tensors = HashMap::with_capacity(expected.len());
    for (name, shape) in &expected {
        let e = header
            .get(name)
            .ok_or_else(|| AdapterError::MissingTensor { name: name.clone() })?;
        if e.shape != *shape {
            // The rank is the adapter's own business; the other dimension is the base's.
            let is_a = name.ends_with("lora_A.weight");
            let rank_ok = if is_a {
                e.shape.first() == shape.first()
            } else {
                e.shape.get(1) == shape.get(1)
            };
            if rank_ok && e.shape.len() == 2 {
                return Err(AdapterError::BaseMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    actual: e.shape.clone(),
                }
                .into());
            }
            return Err(AdapterError::Config {
                path: cfg_path,
                reason: format!(
                    "tensor `{name}` has shape {:?} but the config's rank implies {shape:?}",
                    e.shape
                ),
            }
            .into());
        }
        let data = &w_bytes[e.start as usize..e.end as usize];
        tensors.insert(
            name.clone(),
            weights::tensor_from_bytes(name, e, data, dtype, device).map_err(AdapterError::from)?,
        );
    }
    let adapter = Adapter::new(
        config,
        base,
        VarBuilder::from_tensors(tensors, dtype, device),
    )?;
    let digest = AdapterDigest(digest_files(&[cfg_path, w_path.clone()]).map_err(|source| {
        AdapterError::Io {
            path: dir.to_owned(),
            source,
        }
    })?);
    Ok(LoadedAdapter { adapter, digest })
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<()> {
    std::fs::write(&path, bytes).map_err(|source| Error::Write { path, source })
}

fn json_bytes(v: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail.
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

fn tensor_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    Ok(weights::to_bytes(tensors)?)
}

impl Model {
    /// Writes `config.json` and `model.safetensors` (transformers layout, current dtype) into
    /// the existing directory `dir`. A tokenizer is not written; copy `tokenizer.json` alongside.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        write(
            dir.join(CONFIG_FILE),
            &json_bytes(&self.config().to_hf_json()),
        )?;
        write(
            dir.join(WEIGHTS_FILE),
            &tensor_bytes(&self.named_tensors())?,
        )?;
        if let (Some(name), Some(adapter)) = (&self.config().base_adapter, self.base_adapter()) {
            let adir = dir.join(name);
            std::fs::create_dir_all(&adir).map_err(|source| Error::Write {
                path: adir.clone(),
                source,
            })?;
            adapter.save_pretrained(&adir)?;
        }
        Ok(())
    }
}

/// Makes the adapter in `adapter_dir` the base adapter of the model in `model_dir` (see
/// [`Config::base_adapter`]): checks that it loads against the model's architecture, copies
/// its files to `model_dir/<name>/` and records `name` in `config.json` (other keys kept).
/// The model's digest changes: it now covers the adapter's files.
pub fn install_base_adapter(model_dir: &Path, adapter_dir: &Path, name: &str) -> Result<()> {
    let config_path = model_dir.join(CONFIG_FILE);
    let bytes = read(&config_path)?;
    let cfg = Config::from_json(&bytes, &config_path)?;
    // The name must pass the same check `config.json` readers apply.
    let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| LoadError::Config {
        path: config_path.clone(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let obj = v.as_object_mut().ok_or_else(|| LoadError::Config {
        path: config_path.clone(),
        reason: "not a JSON object".into(),
    })?;
    obj.insert(
        crate::config::BASE_ADAPTER_KEY.into(),
        Value::String(name.into()),
    );
    let new_bytes = json_bytes(&v);
    Config::from_json(&new_bytes, &config_path)?;
    load_adapter(adapter_dir, &cfg, DType::F32, &Device::Cpu)?;
    let dest = model_dir.join(name);
    std::fs::create_dir_all(&dest).map_err(|source| Error::Write {
        path: dest.clone(),
        source,
    })?;
    for src in adapter_files(adapter_dir) {
        let file_name = src.file_name().unwrap_or_default().to_owned();
        let bytes = read(&src)?;
        write(dest.join(file_name), &bytes)?;
    }
    write(config_path, &new_bytes)
}

impl Adapter {
    /// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT layout) into the
    /// existing directory `dir`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        write(
            dir.join(ADAPTER_CONFIG_FILE),
            &json_bytes(&self.config().to_peft_json()),
        )?;
        write(
            dir.join(ADAPTER_WEIGHTS_FILE),
            &tensor_bytes(&self.named_tensors())?,
        )
    }
}
