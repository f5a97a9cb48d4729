//! GGUF files (llama.cpp's format) as the ecosystem writes them: a checked reader, the Llama
//! config and tokenizer they carry, and [`import`] into the Hugging Face layout.
//!
//! The header (metadata and tensor table) is parsed here, strictly, into candle-core's
//! [`gguf_file::Content`]; tensor data is then read and dequantized by candle
//! ([`gguf_file::TensorInfo::read`], [`candle_core::quantized::QTensor::dequantize`]), so every
//! type candle knows is accepted: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and the
//! K-quants Q2_K … Q8_K. The reader is our own because the bytes are untrusted: every length,
//! count, type, dimension and offset is checked against the file before it is used (candle's
//! own `Content::read` divides by a `general.alignment` of 0, for one), duplicate keys and
//! tensor names are refused, and tensor data must lie inside the file, aligned, without
//! overlapping another tensor.
//!
//! llama.cpp's converter permutes the rows of `attn_q` and `attn_k` (it interleaves the two
//! halves of each head for its RoPE kernel); [`import`] undoes that, so the weights are the
//! transformers layout again and Tandem's (and transformers') rotate-half RoPE apply.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::config::Config;
use crate::error::{Error, LoadError, Result};

/// The longest string (key, value or tensor name) accepted, in bytes. Chat templates are the
/// longest strings in practice (tens of KB).
pub const MAX_STRING_BYTES: u64 = 16 << 20;
/// Most elements in one metadata array (vocabularies are ~10^5; 2^24 leaves room).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Most metadata entries and most tensors.
pub const MAX_ENTRIES: u64 = 1 << 20;
/// Deepest nesting of arrays.
const MAX_DEPTH: usize = 3;
/// Most elements in one tensor (2^36: far above any model of the family this crate runs).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 36;
const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian

/// A GGUF file whose header has been read and checked.
#[derive(Debug)]
pub struct GgufFile {
    /// The file's path (for messages and to read tensors).
    pub path: PathBuf,
    /// The metadata and tensor table, in candle's types.
    pub content: Content,
    /// Bytes in the file.
    pub file_len: u64,
}

fn bad(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::Gguf {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// A bounds-checked little-endian reader over the header.
struct HeaderReader<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl<R: Read> HeaderReader<'_, R> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<Vec<u8>, LoadError> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(bad(
                self.path,
                format!(
                    "{what} needs {n} bytes at offset {}, but the file has only {} bytes; is it truncated?",
                    self.pos, self.len
                ),
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|source| LoadError::Io {
                path: self.path.to_owned(),
                source,
            })?;
        self.pos += n;
        Ok(buf)
    }
    fn fixed<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], LoadError> {
        let v = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, LoadError> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > MAX_STRING_BYTES {
            return Err(bad(
                self.path,
                format!("{what} at offset {at} claims {n} bytes (limit {MAX_STRING_BYTES})"),
            ));
        }
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes).map_err(|e| {
            bad(
                self.path,
                format!("{what} at offset {at} is not UTF-8: {e}"),
            )
        })
    }
    fn value(&mut self, ty: u32, depth: usize, key: &str) -> std::result::Result<Value, LoadError> {
        Ok(match ty {
            0 => Value::U8(self.fixed::<1>(key)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.fixed(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.fixed(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.fixed(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.fixed(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.fixed(key)?)),
            7 => match self.fixed::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(bad(
                        self.path,
                        format!("`{key}`: boolean byte {b} is neither 0 nor 1"),
                    ));
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(bad(
                        self.path,
                        format!("`{key}`: arrays nested deeper than {MAX_DEPTH}"),
                    ));
                }
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                // Each element takes at least one byte: a count beyond the bytes left is a lie.
                if n > MAX_ARRAY_LEN || n > self.len.saturating_sub(self.pos) {
                    return Err(bad(
                        self.path,
                        format!(
                            "`{key}`: array of {n} elements at offset {} does not fit the file (limit {MAX_ARRAY_LEN})",
                            self.pos
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.fixed(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.fixed(key)?)),
            t => {
                return Err(bad(self.path, format!("`{key}`: unknown value type {t}")));
            }
        })
    }
}

/// GGML tensor type codes (ggml.h `enum ggml_type`) that candle dequantizes.
fn ggml_dtype(code: u32) -> Option<GgmlDType> {
    Some(match code {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// Bytes of a tensor of `elements` elements of type `dt`, if the count fills whole blocks.
fn tensor_bytes(dt: GgmlDType, elements: u64) -> Option<u64> {
    let block = dt.block_size() as u64;
    elements
        .is_multiple_of(block)
        .then(|| elements / block * dt.type_size() as u64)
}

impl GgufFile {
    /// Opens and checks a GGUF file's header (tensor data is checked for bounds, not read).
    pub fn open(path: &Path) -> Result<GgufFile> {
        let mut f = std::fs::File::open(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        let len = f
            .seek(SeekFrom::End(0))
            .and_then(|n| f.seek(SeekFrom::Start(0)).map(|_| n))
            .map_err(|source| LoadError::Io {
                path: path.to_owned(),
                source,
            })?;
        let mut buf = std::io::BufReader::with_capacity(1 << 16, f);
        let content = Self::read_header(&mut buf, len, path)?;
        Ok(GgufFile {
            path: path.to_owned(),
            content,
            file_len: len,
        })
    }

    /// Parses a GGUF header from bytes (the whole file: tensor data bounds are checked against
    /// its length). `path` is for messages only.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Content> {
        let mut cur = std::io::Cursor::new(bytes);
        Ok(Self::read_header(&mut cur, bytes.len() as u64, path)?)
    }

    fn read_header<R: Read>(
        r: &mut R,
        len: u64,
        path: &Path,
    ) -> std::result::Result<Content, LoadError> {
        let mut h = HeaderReader {
            r,
            pos: 0,
            len,
            path,
        };
        let magic = h.u32("the GGUF magic")?;
        if magic != GGUF_MAGIC {
            return Err(bad(
                path,
                format!("not a GGUF file (magic {magic:#010x}, expected \"GGUF\")"),
            ));
        }
        let version = match h.u32("the GGUF version")? {
            2 => VersionedMagic::GgufV2,
            3 => VersionedMagic::GgufV3,
            v => {
                return Err(bad(
                    path,
                    format!("GGUF version {v} is not supported (2 and 3 are)"),
                ));
            }
        };
        let n_tensors = h.u64("the tensor count")?;
        let n_kv = h.u64("the metadata count")?;
        // A metadata entry takes ≥ 13 bytes, a tensor entry ≥ 28 (name length, dims, type,
        // offset): counts the rest of the file cannot hold are refused before any allocation.
        let rest = len.saturating_sub(h.pos);
        if n_tensors > MAX_ENTRIES
            || n_kv > MAX_ENTRIES
            || n_kv
                .saturating_mul(13)
                .saturating_add(n_tensors.saturating_mul(28))
                > rest
        {
            return Err(bad(
                path,
                format!(
                    "header declares {n_kv} metadata entries and {n_tensors} tensors, which {rest} remaining bytes cannot hold"
                ),
            ));
        }
        let mut metadata = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = h.string("a metadata key")?;
            let ty = h.u32(&key)?;
            let value = h.value(ty, 0, &key)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(path, format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(bad(
                    path,
                    format!("`general.alignment` must be a power-of-two u32, found {other:?}"),
                ));
            }
        };
        let mut infos: Vec<(String, TensorInfo, u64)> = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = h.string("a tensor name")?;
            let n_dims = h.u32(&name)?;
            if !(1..=4).contains(&n_dims) {
                return Err(bad(
                    path,
                    format!("tensor `{name}` has {n_dims} dimensions (1 to 4 allowed)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut elements: u64 = 1;
            for _ in 0..n_dims {
                let d = h.u64(&name)?;
                elements = elements.saturating_mul(d);
                dims.push(d);
            }
            if dims.contains(&0) || elements > MAX_TENSOR_ELEMENTS {
                return Err(bad(
                    path,
                    format!(
                        "tensor `{name}` has dimensions {dims:?} (each ≥ 1, at most {MAX_TENSOR_ELEMENTS} elements)"
                    ),
                ));
            }
            let code = h.u32(&name)?;
            let dt = ggml_dtype(code).ok_or_else(|| {
                bad(
                    path,
                    format!("tensor `{name}` has GGML type {code}, which cannot be dequantized"),
                )
            })?;
            let bytes = tensor_bytes(dt, elements).ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "tensor `{name}`: {elements} elements are not whole blocks of {} ({dt:?})",
                        dt.block_size()
                    ),
                )
            })?;
            let offset = h.u64(&name)?;
            if offset % alignment != 0 {
                return Err(bad(
                    path,
                    format!(
                        "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
                    ),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(bad(path, format!("tensor `{name}` appears twice")));
            }
            // GGUF lists dimensions fastest-varying first; candle's shape is the reverse.
            let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
            infos.push((
                name,
                TensorInfo {
                    ggml_dtype: dt,
                    shape: shape.into(),
                    offset,
                },
                bytes,
            ));
        }
        let data_start = h.pos.div_ceil(alignment) * alignment;
        // Tensor data: inside the file, and no two tensors share bytes.
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(infos.len());
        for (name, info, bytes) in &infos {
            let start = data_start.checked_add(info.offset);
            let end = start.and_then(|s| s.checked_add(*bytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= len => spans.push((s, e, name)),
                _ => {
                    return Err(bad(
                        path,
                        format!(
                            "tensor `{name}` needs {bytes} bytes at offset {} but the file has {len}; is it truncated?",
                            data_start.saturating_add(info.offset)
                        ),
                    ));
                }
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(bad(
                    path,
                    format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2),
                ));
            }
        }
        Ok(Content {
            magic: version,
            metadata,
            tensor_infos: infos.into_iter().map(|(n, i, _)| (n, i)).collect(),
            tensor_data_offset: data_start,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        match self.get("general.architecture") {
            Some(Value::String(s)) => Ok(s),
            _ => Err(bad(&self.path, "no `general.architecture` string").into()),
        }
    }

    fn uint(&self, key: &str) -> std::result::Result<Option<u64>, LoadError> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = match v {
            Value::U8(n) => Some(u64::from(*n)),
            Value::U16(n) => Some(u64::from(*n)),
            Value::U32(n) => Some(u64::from(*n)),
            Value::U64(n) => Some(*n),
            Value::I8(n) => u64::try_from(*n).ok(),
            Value::I16(n) => u64::try_from(*n).ok(),
            Value::I32(n) => u64::try_from(*n).ok(),
            Value::I64(n) => u64::try_from(*n).ok(),
            _ => None,
        };
        n.map(Some).ok_or_else(|| {
            bad(
                &self.path,
                format!("`{key}` must be a non-negative integer, found {v:?}"),
            )
        })
    }

    fn float(&self, key: &str) -> std::result::Result<Option<f64>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            // Stored as f32 by llama.cpp's converter: take the shortest decimal that rounds to
            // the same f32 (1e-5, not 9.999999747378752e-6), which is what the source config said.
            Some(Value::F32(x)) => Ok(format!("{x}").parse::<f64>().ok()),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(bad(
                &self.path,
                format!("`{key}` must be a float, found {v:?}"),
            )),
        }
    }

    fn boolean(&self, key: &str) -> std::result::Result<Option<bool>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(bad(
                &self.path,
                format!("`{key}` must be a boolean, found {v:?}"),
            )),
        }
    }

    fn string(&self, key: &str) -> std::result::Result<Option<&str>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(bad(
                &self.path,
                format!("`{key}` must be a string, found {v:?}"),
            )),
        }
    }

    fn strings(&self, key: &str) -> std::result::Result<Option<Vec<&str>>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    v => Err(bad(
                        &self.path,
                        format!("`{key}` must hold strings, found {v:?}"),
                    )),
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(bad(
                &self.path,
                format!("`{key}` must be an array, found {v:?}"),
            )),
        }
    }

    /// The tokenizer's vocabulary (`tokenizer.ggml.tokens`).
    pub fn tokens(&self) -> Result<Vec<&str>> {
        Ok(self
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| bad(&self.path, "no `tokenizer.ggml.tokens`"))?)
    }

    /// The Llama-family config the metadata describes (`{arch}.*` keys), checked like a
    /// `config.json` (by building one and parsing it with [`Config::from_json`]).
    pub fn config(&self) -> Result<Config> {
        let v = self.config_json()?;
        let bytes = serde_json::to_vec(&v).map_err(|e| bad(&self.path, e.to_string()))?;
        Ok(Config::from_json(&bytes, &self.path)?)
    }

    /// The `config.json` (transformers layout) the metadata describes.
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let arch = self.architecture()?.to_string();
        if !matches!(arch.as_str(), "llama" | "mistral") {
            return Err(LoadError::Unsupported {
                path: self.path.clone(),
                reason: format!(
                    "GGUF architecture `{arch}`; only the Llama family (`llama`) is implemented"
                ),
            }
            .into());
        }
        let need = |k: &str| -> std::result::Result<u64, LoadError> {
            self.uint(&format!("{arch}.{k}"))?
                .ok_or_else(|| bad(&self.path, format!("no `{arch}.{k}`")))
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let kv_heads = self
            .uint(&format!("{arch}.attention.head_count_kv"))?
            .unwrap_or(heads);
        let head_dim = match self.uint(&format!("{arch}.attention.key_length"))? {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        if let Some(rope_dims) = self.uint(&format!("{arch}.rope.dimension_count"))?
            && rope_dims != head_dim
        {
            return Err(LoadError::Unsupported {
                path: self.path.clone(),
                reason: format!(
                    "RoPE on {rope_dims} of {head_dim} head dimensions (partial rotary) is not implemented"
                ),
            }
            .into());
        }
        if let Some(kind) = self.string(&format!("{arch}.rope.scaling.type"))?
            && kind != "none"
        {
            return Err(LoadError::Unsupported {
                path: self.path.clone(),
                reason: format!(
                    "rope scaling type `{kind}` is not implemented (only none); refusing rather than computing wrong positions"
                ),
            }
            .into());
        }
        let vocab = match self.uint(&format!("{arch}.vocab_size"))? {
            Some(v) => v,
            None => self.tokens()?.len() as u64,
        };
        let tied = !self.content.tensor_infos.contains_key("output.weight");
        let id = |k: &str| self.uint(&format!("tokenizer.ggml.{k}"));
        let mut eos: Vec<u64> = id("eos_token_id")?.into_iter().collect();
        if let Some(eot) = id("eot_token_id")?
            && !eos.contains(&eot)
        {
            eos.push(eot);
        }
        Ok(json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": need("feed_forward_length")?,
            "num_hidden_layers": need("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.float(&format!("{arch}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            "rope_theta": self.float(&format!("{arch}.rope.freq_base"))?.unwrap_or(10_000.0),
            "rope_scaling": null,
            "max_position_embeddings": need("context_length")?,
            "tie_word_embeddings": tied,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": id("bos_token_id")?,
            "eos_token_id": match eos.as_slice() { [] => json!(null), [one] => json!(one), many => json!(many) },
            "pad_token_id": id("padding_token_id")?,
            "torch_dtype": "float32",
        }))
    }

    /// `generation_config.json`: the stop and start ids generation uses.
    pub fn generation_config_json(&self) -> Result<serde_json::Value> {
        let c = self.config_json()?;
        Ok(json!({
            "bos_token_id": c["bos_token_id"],
            "eos_token_id": c["eos_token_id"],
            "pad_token_id": c["pad_token_id"],
        }))
    }

    /// `tokenizer.json` (Hugging Face `tokenizers` format) for the GGUF's `gpt2`-model (byte-level
    /// BPE) tokenizer, with the pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre`.
    pub fn tokenizer_json(&self) -> Result<serde_json::Value> {
        let model = self.string("tokenizer.ggml.model")?.unwrap_or("");
        if model != "gpt2" {
            return Err(LoadError::Unsupported {
                path: self.path.clone(),
                reason: format!(
                    "tokenizer.ggml.model `{model}`; only byte-level BPE (`gpt2`) tokenizers are imported (SentencePiece `llama` vocabularies are not yet)"
                ),
            }
            .into());
        }
        let tokens = self.tokens()?;
        let types: Vec<u64> = match self.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(n) => u64::try_from(*n).ok(),
                    Value::U32(n) => Some(u64::from(*n)),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(&self.path, "`tokenizer.ggml.token_type` must hold integers"))?,
            Some(v) => {
                return Err(bad(
                    &self.path,
                    format!("`tokenizer.ggml.token_type` must be an array, found {v:?}"),
                )
                .into());
            }
        };
        if types.len() != tokens.len() {
            return Err(bad(
                &self.path,
                format!("{} token types for {} tokens", types.len(), tokens.len()),
            )
            .into());
        }
        let merges = self.strings("tokenizer.ggml.merges")?.ok_or_else(|| {
            bad(
                &self.path,
                "no `tokenizer.ggml.merges` (a BPE tokenizer needs them)",
            )
        })?;
        let merges: Vec<[&str; 2]> = merges
            .iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok([a, b]),
                _ => Err(bad(
                    &self.path,
                    format!("merge {i} `{m}` is not two tokens separated by one space"),
                )),
            })
            .collect::<std::result::Result<_, _>>()?;
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if vocab.insert((*t).to_string(), json!(i)).is_some() {
                return Err(bad(
                    &self.path,
                    format!("token `{t}` appears twice in the vocabulary"),
                )
                .into());
            }
        }
        let special_ids = self.special_ids()?;
        let mut added = Vec::new();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
            let named = special_ids.values().any(|&s| s == i as u64);
            if matches!(ty, 2..=4) || named {
                added.push(json!({
                    "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": *ty != 4 || named,
                }));
            }
        }
        let add_prefix = self
            .boolean("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(false);
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": add_prefix, "trim_offsets": true, "use_regex": use_regex});
        let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
        let pre = self.string("tokenizer.ggml.pre")?.unwrap_or("default");
        let (normalizer, pre_tokenizer) = match pre {
            "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => {
                (json!(null), byte_level(true))
            }
            // llama.cpp: `\p{N}` then the GPT-2 regex; transformers: Digits(individual) + ByteLevel.
            "smollm" | "starcoder" | "refact" | "codeshell" => (
                json!(null),
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            ),
            "llama-bpe" | "llama3" | "smaug-bpe" => (
                json!(null),
                json!({"type": "Sequence", "pretokenizers": [split(REGEX_LLAMA3), byte_level(false)]}),
            ),
            "qwen2" | "deepseek-r1-qwen" => (
                json!({"type": "NFC"}),
                json!({"type": "Sequence", "pretokenizers": [split(REGEX_QWEN2), byte_level(false)]}),
            ),
            other => {
                return Err(LoadError::Unsupported {
                    path: self.path.clone(),
                    reason: format!(
                        "tokenizer.ggml.pre `{other}`: its pre-tokenizer is not known to the importer (known: default, gpt2, smollm, starcoder, refact, codeshell, llama-bpe, llama3, smaug-bpe, qwen2)"
                    ),
                }
                .into());
            }
        };
        let byte_pp = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
        let add_bos = self
            .boolean("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false);
        let add_eos = self
            .boolean("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = serde_json::Map::new();
        let tok = |key: &str| -> std::result::Result<&str, LoadError> {
            special_ids
                .get(key)
                .and_then(|&i| tokens.get(i as usize).copied())
                .ok_or_else(|| {
                    bad(
                        &self.path,
                        format!("`tokenizer.ggml.add_{key}_token` is set but there is no valid `tokenizer.ggml.{key}_token_id`"),
                    )
                })
        };
        if add_bos {
            let b = tok("bos")?;
            single.push(json!({"SpecialToken": {"id": b, "type_id": 0}}));
            pair.push(json!({"SpecialToken": {"id": b, "type_id": 0}}));
            specials.insert(
                b.into(),
                json!({"id": b, "ids": [special_ids["bos"]], "tokens": [b]}),
            );
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if add_eos {
            let e = tok("eos")?;
            single.push(json!({"SpecialToken": {"id": e, "type_id": 0}}));
            pair.push(json!({"SpecialToken": {"id": e, "type_id": 0}}));
            specials.insert(
                e.into(),
                json!({"id": e, "ids": [special_ids["eos"]], "tokens": [e]}),
            );
        }
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        let post = if add_bos || add_eos {
            json!({"type": "Sequence", "processors": [byte_pp,
                {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}]})
        } else {
            byte_pp
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": self.boolean("tokenizer.ggml.ignore_merges")?.unwrap_or(false),
                "vocab": vocab, "merges": merges,
            },
        }))
    }

    /// `bos`/`eos`/`unk`/`pad`/`sep`/`eot` → id, each checked against the vocabulary.
    fn special_ids(&self) -> Result<BTreeMap<&'static str, u64>> {
        let n = self.tokens()?.len() as u64;
        let mut out = BTreeMap::new();
        for (name, key) in [
            ("bos", "bos_token_id"),
            ("eos", "eos_token_id"),
            ("unk", "unknown_token_id"),
            ("pad", "padding_token_id"),
            ("sep", "seperator_token_id"),
            ("eot", "eot_token_id"),
        ] {
            if let Some(id) = self.uint(&format!("tokenizer.ggml.{key}"))? {
                if id >= n {
                    return Err(bad(
                        &self.path,
                        format!(
                            "`tokenizer.ggml.{key}` = {id} is outside the vocabulary of {n} tokens"
                        ),
                    )
                    .into());
                }
                out.insert(name, id);
            }
        }
        Ok(out)
    }

    /// `tokenizer_config.json`: special tokens, `add_bos_token`, and the chat template.
    pub fn tokenizer_config_json(&self) -> Result<serde_json::Value> {
        let tokens = self.tokens()?;
        let ids = self.special_ids()?;
        let name = |k: &str| ids.get(k).map(|&i| tokens[i as usize]);
        let mut v = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.boolean("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
            "add_eos_token": self.boolean("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            "bos_token": name("bos"),
            "eos_token": name("eos"),
            "unk_token": name("unk"),
            "pad_token": name("pad"),
            "clean_up_tokenization_spaces": false,
            "model_max_length": self.config_json()?["max_position_embeddings"],
        });
        if let Some(t) = self.string("tokenizer.chat_template")?
            && let Some(obj) = v.as_object_mut()
        {
            obj.insert("chat_template".into(), json!(t));
        }
        Ok(v)
    }

    /// Reads one tensor and dequantizes it to f32 (candle's kernels).
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor { name: name.into() })?;
        let mut f = std::fs::File::open(&self.path).map_err(|source| LoadError::Io {
            path: self.path.clone(),
            source,
        })?;
        let q = info
            .read(&mut f, self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| bad(&self.path, format!("tensor `{name}`: {e}")))?;
        Ok(q.dequantize(&Device::Cpu)?)
    }
}

/// llama.cpp's Llama-3 pre-tokenizer regex (as in its `llama-bpe` / transformers' tokenizer.json).
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex.
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The transformers name of a GGUF tensor (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), or `None` for a name this family does not have.
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match module {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's row permutation of a Q or K projection (`[heads·head_dim, in]`): within
/// each head its converter stores row pairs interleaved (`reshape(h, 2, d/2, in)` then swapping
/// the two middle axes); this restores the rotate-half order.
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if heads == 0 || rows % (heads * 2) != 0 {
        return Err(Error::Usage(crate::error::UsageError::Empty(
            "Q/K rows must be a multiple of 2 × heads",
        )));
    }
    let half = rows / heads / 2;
    Ok(w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// What [`import`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub struct ImportProgress<'a> {
    /// Tensors done so far.
    pub done: usize,
    /// Tensors in all.
    pub total: usize,
    /// The tensor just converted (GGUF name).
    pub tensor: &'a str,
}

/// What [`import`] wrote.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The model's config.
    pub config: Config,
    /// Tensors converted.
    pub tensors: usize,
    /// GGML types found in the file, with counts.
    pub source_types: BTreeMap<String, usize>,
    /// Bytes of the written `model.safetensors`.
    pub weight_bytes: u64,
}

/// Converts a GGUF file into a Hugging Face model directory `out` (created; it must not exist
/// or be empty): `config.json`, `generation_config.json`, `model.safetensors` (`dtype` F16 or
/// F32), `tokenizer.json` and `tokenizer_config.json` (with the chat template). The result loads
/// with [`crate::load_model`] and with transformers. Files are written to a temporary directory
/// beside `out` and renamed into place, so an interrupted import leaves no half model.
pub fn import(
    gguf: &Path,
    out: &Path,
    dtype: DType,
    progress: &mut dyn FnMut(ImportProgress<'_>),
) -> Result<ImportReport> {
    if !matches!(dtype, DType::F16 | DType::F32 | DType::BF16) {
        return Err(crate::error::UsageError::ComputeDtype(dtype).into());
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::Write {
            path: out.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the output directory exists and is not empty; choose a new directory",
            ),
        });
    }
    let file = GgufFile::open(gguf)?;
    let config_json = file.config_json()?;
    let config = file.config()?;
    let tokenizer_json = file.tokenizer_json()?;
    let tok_bytes = serde_json::to_vec(&tokenizer_json).map_err(|e| bad(gguf, e.to_string()))?;
    // The tokenizer must parse and fit the embedding table before any weight is converted.
    let tokenizer = crate::Tokenizer::from_bytes(&tok_bytes, gguf)?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(LoadError::ConfigMismatch {
            reason: format!(
                "the GGUF tokenizer has {} tokens but the embedding table has {} rows",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        }
        .into());
    }
    // Every tensor is one the family has, with the shape the config implies.
    let expected: HashMap<String, Vec<usize>> = config.expected_tensors().into_iter().collect();
    let mut names: Vec<&String> = file.content.tensor_infos.keys().collect();
    names.sort();
    let mut plan = Vec::with_capacity(names.len());
    let mut source_types = BTreeMap::new();
    for name in names {
        if name == "rope_freqs.weight" {
            return Err(LoadError::Unsupported {
                path: gguf.to_owned(),
                reason: "`rope_freqs.weight` (Llama-3 rope scaling) is not implemented".into(),
            }
            .into());
        }
        let hf = hf_tensor_name(name).ok_or_else(|| LoadError::ConfigMismatch {
            reason: format!("GGUF tensor `{name}` is not part of a Llama-family model"),
        })?;
        let info = &file.content.tensor_infos[name];
        let want = expected.get(&hf).ok_or_else(|| LoadError::ConfigMismatch {
            reason: format!(
                "GGUF tensor `{name}` ({hf}) is not described by the metadata (block_count = {})",
                config.num_hidden_layers
            ),
        })?;
        if info.shape.dims() != want.as_slice() {
            return Err(LoadError::WrongShape {
                name: name.clone(),
                expected: want.clone(),
                actual: info.shape.dims().to_vec(),
            }
            .into());
        }
        *source_types
            .entry(format!("{:?}", info.ggml_dtype))
            .or_insert(0) += 1;
        plan.push((name.clone(), hf));
    }
    if let Some(missing) = expected
        .keys()
        .find(|k| !plan.iter().any(|(_, hf)| hf == *k))
    {
        return Err(LoadError::MissingTensor {
            name: missing.clone(),
        }
        .into());
    }

    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| Error::Write {
        path: parent.to_owned(),
        source,
    })?;
    let tmp = tempdir_in(parent)?;
    let total = plan.len();
    let mut tensors = Vec::with_capacity(total);
    for (i, (name, hf)) in plan.iter().enumerate() {
        let mut t = file.tensor_f32(name)?;
        if name.ends_with("attn_q.weight") {
            t = unpermute_qk(&t, config.num_attention_heads)?;
        } else if name.ends_with("attn_k.weight") {
            t = unpermute_qk(&t, config.num_key_value_heads)?;
        }
        tensors.push((hf.clone(), t.to_dtype(dtype)?));
        progress(ImportProgress {
            done: i + 1,
            total,
            tensor: name,
        });
    }
    let weights = crate::weights::to_bytes(&tensors)?;
    drop(tensors);
    let mut cfg_json = config_json;
    cfg_json["torch_dtype"] = json!(match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    });
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    let files: [(&str, Vec<u8>); 5] = [
        (crate::loader::CONFIG_FILE, pretty(&cfg_json)),
        (
            GENERATION_CONFIG_FILE,
            pretty(&file.generation_config_json()?),
        ),
        (crate::loader::TOKENIZER_FILE, tok_bytes),
        (
            TOKENIZER_CONFIG_FILE,
            pretty(&file.tokenizer_config_json()?),
        ),
        (crate::loader::WEIGHTS_FILE, weights),
    ];
    let weight_bytes = files[4].1.len() as u64;
    for (name, bytes) in &files {
        let p = tmp.join(name);
        std::fs::write(&p, bytes).map_err(|source| Error::Write { path: p, source })?;
    }
    if out.exists() {
        // Empty (checked above): rename cannot replace a directory on every platform.
        std::fs::remove_dir(out).map_err(|source| Error::Write {
            path: out.to_owned(),
            source,
        })?;
    }
    std::fs::rename(&tmp, out).map_err(|source| Error::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(ImportReport {
        config,
        tensors: total,
        source_types,
        weight_bytes,
    })
}

pub use crate::loader::{GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE};

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    for i in 0..1000u32 {
        let p = parent.join(format!(".tandem-import-{}-{i}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(Error::Write { path: p, source }),
        }
    }
    Err(Error::Write {
        path: parent.to_owned(),
        source: std::io::Error::other("no free temporary directory name"),
    })
}

/// The model directory for `path`: `path` itself if it is a directory; if it is a `.gguf` file,
/// its import (`dtype`) under `cache_root/gguf/<sha256 of the file>-<dtype>/`, made on first use
/// (`progress` reports it) and reused after. This is how a `.gguf` path is accepted wherever a
/// model directory is.
pub fn resolve_model_path(
    path: &Path,
    cache_root: &Path,
    dtype: DType,
    progress: &mut dyn FnMut(ImportProgress<'_>),
) -> Result<PathBuf> {
    if !is_gguf(path) {
        return Ok(path.to_owned());
    }
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let (digest, _) =
        tandem_digest::Sha256Digest::of_reader(std::fs::File::open(path).map_err(io)?, |_| {})
            .map_err(io)?;
    let tag = match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    };
    let dir = cache_root
        .join("gguf")
        .join(format!("{}-{tag}", digest.hex()));
    if dir.join(crate::loader::WEIGHTS_FILE).is_file() {
        return Ok(dir);
    }
    match import(path, &dir, dtype, progress) {
        Ok(_) => Ok(dir),
        // Another process imported the same file meanwhile.
        Err(_) if dir.join(crate::loader::WEIGHTS_FILE).is_file() => Ok(dir),
        Err(e) => Err(e),
    }
}

/// Tandem's cache directory (imports of `.gguf` models, fetched model files, the reference
/// environments of the tests): `$TANDEM_CACHE` if set, else `$XDG_CACHE_HOME/tandem`, else
/// `$HOME/.cache/tandem`, else `.tandem-cache` in the working directory.
/// `models/fetch-smollm2.sh` uses the same rule.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("TANDEM_CACHE") {
        return d;
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return d.join("tandem");
    }
    if let Some(h) = var("HOME") {
        return h.join(".cache").join("tandem");
    }
    PathBuf::from(".tandem-cache")
}

/// Whether `path` names a GGUF file (a regular file ending in `.gguf`).
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
