//! Reading safetensors files without `unsafe` (no mmap): the header is parsed and checked
//! against the file length first, then each needed tensor is read with one positioned read and
//! converted to the compute dtype, so peak memory stays near the final weight size.
//!
//! Format: <https://github.com/huggingface/safetensors> — an 8-byte little-endian header length
//! `N`, `N` bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": …}`,
//! then the data; offsets are relative to the end of the header.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::error::LoadError;

/// Largest header accepted (the reference implementation's limit).
const MAX_HEADER: u64 = 100_000_000;

/// A safetensors header's `__metadata__` (string keys to string values).
pub type Metadata = BTreeMap<String, String>;

/// One tensor entry of a safetensors header, with absolute file offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Dtype string as in the header (`F32`, `BF16`, …).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Absolute offset of the first byte.
    pub start: u64,
    /// Absolute offset one past the last byte.
    pub end: u64,
}

impl TensorEntry {
    /// The candle dtype for weight dtypes this crate loads.
    pub fn weight_dtype(&self) -> Option<DType> {
        match self.dtype.as_str() {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            _ => None,
        }
    }
}

/// Byte size of one element of a safetensors dtype.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Parses and checks a safetensors header. `prefix` must hold at least the first `8 + N`
/// bytes; `file_len` is the file's full length. Returns the entries by name.
pub fn parse_header(
    prefix: &[u8],
    file_len: u64,
    path: &Path,
) -> Result<HashMap<String, TensorEntry>, LoadError> {
    parse_header_with_metadata(prefix, file_len, path).map(|(entries, _)| entries)
}

/// [`parse_header`], also returning the `__metadata__` map (string to string, as the format
/// defines it; a non-string value is an error).
pub fn parse_header_with_metadata(
    prefix: &[u8],
    file_len: u64,
    path: &Path,
) -> Result<(HashMap<String, TensorEntry>, Metadata), LoadError> {
    let bad = |reason: String| LoadError::Safetensors {
        path: path.to_owned(),
        reason,
    };
    let truncated = |needed: u64| LoadError::Truncated {
        path: path.to_owned(),
        needed,
        actual: file_len,
    };
    let len_bytes: [u8; 8] = prefix
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| truncated(8))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER {
        return Err(bad(format!("header length {n} exceeds {MAX_HEADER} bytes")));
    }
    let data_start = 8 + n;
    if data_start > file_len {
        return Err(truncated(data_start));
    }
    let header = prefix
        .get(8..data_start as usize)
        .ok_or_else(|| truncated(data_start))?;
    let json: Value =
        serde_json::from_slice(header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;

    let mut out = HashMap::with_capacity(obj.len());
    let mut spans = Vec::with_capacity(obj.len());
    let mut metadata = BTreeMap::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            let m = v
                .as_object()
                .ok_or_else(|| bad("`__metadata__` is not an object".into()))?;
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| bad(format!("`__metadata__.{k}` is not a string")))?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let e = v
            .as_object()
            .ok_or_else(|| bad(format!("entry `{name}` is not an object")))?;
        let dtype = e
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("entry `{name}` has no dtype")))?;
        let size = dtype_size(dtype)
            .ok_or_else(|| bad(format!("entry `{name}` has unknown dtype `{dtype}`")))?;
        let shape: Vec<usize> = e
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("entry `{name}` has no shape")))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("entry `{name}` has a bad shape")))?;
        let offs: Vec<u64> = e
            .get("data_offsets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad(format!("entry `{name}` has bad data_offsets")))?;
        let (begin, end) = (offs[0], offs[1]);
        let bytes = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("entry `{name}` shape overflows")))?;
        if end < begin || end - begin != bytes {
            return Err(bad(format!(
                "entry `{name}`: data_offsets [{begin}, {end}] do not hold {bytes} bytes of {dtype} {shape:?}"
            )));
        }
        let (start, stop) = (data_start + begin, data_start + end);
        if stop > file_len {
            return Err(truncated(stop));
        }
        spans.push((start, stop, name.clone()));
        out.insert(
            name.clone(),
            TensorEntry {
                dtype: dtype.to_string(),
                shape,
                start,
                end: stop,
            },
        );
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(bad(format!(
                "tensors `{}` and `{}` overlap",
                w[0].2, w[1].2
            )));
        }
    }
    Ok((out, metadata))
}

/// Converts raw little-endian bytes of `entry` into a tensor of dtype `to`.
pub fn tensor_from_bytes(
    name: &str,
    entry: &TensorEntry,
    bytes: &[u8],
    to: DType,
    device: &Device,
) -> Result<Tensor, LoadError> {
    let from = entry.weight_dtype().ok_or_else(|| LoadError::WrongDtype {
        name: name.to_string(),
        dtype: entry.dtype.clone(),
    })?;
    let convert = || -> candle_core::Result<Tensor> {
        Tensor::from_raw_buffer(bytes, from, &entry.shape, device)?.to_dtype(to)
    };
    convert().map_err(|e| LoadError::Safetensors {
        path: PathBuf::from(name),
        reason: format!("cannot convert tensor: {e}"),
    })
}

/// Parses a whole safetensors file held in memory and returns every weight tensor in dtype
/// `to`. Used for adapters (small) and by the fuzz target.
pub fn load_from_bytes(
    bytes: &[u8],
    path: &Path,
    to: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>, LoadError> {
    let header = parse_header(bytes, bytes.len() as u64, path)?;
    header
        .iter()
        .map(|(name, e)| {
            let data = bytes.get(e.start as usize..e.end as usize).ok_or_else(|| {
                LoadError::Truncated {
                    path: path.to_owned(),
                    needed: e.end,
                    actual: bytes.len() as u64,
                }
            })?;
            Ok((name.clone(), tensor_from_bytes(name, e, data, to, device)?))
        })
        .collect()
}

/// A safetensors file opened for reading: its header, and the file itself.
#[derive(Debug)]
pub struct SafetensorsFile {
    /// The path.
    pub path: PathBuf,
    /// Entries by name.
    pub entries: HashMap<String, TensorEntry>,
    /// The header's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    file: File,
}

impl SafetensorsFile {
    /// Opens `path` and parses its header.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len_bytes = [0u8; 8];
        if file_len < 8 {
            return Err(LoadError::Truncated {
                path: path.to_owned(),
                needed: 8,
                actual: file_len,
            });
        }
        file.read_exact(&mut len_bytes).map_err(io)?;
        let n = u64::from_le_bytes(len_bytes).min(MAX_HEADER + 1);
        let want = (8 + n).min(file_len);
        let mut prefix = len_bytes.to_vec();
        (&mut file)
            .take(want - 8)
            .read_to_end(&mut prefix)
            .map_err(io)?;
        let (entries, metadata) = parse_header_with_metadata(&prefix, file_len, path)?;
        Ok(SafetensorsFile {
            path: path.to_owned(),
            entries,
            metadata,
            file,
        })
    }

    /// Reads tensor `name` and converts it to `to`.
    pub fn read(&mut self, name: &str, to: DType, device: &Device) -> Result<Tensor, LoadError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                name: name.to_string(),
            })?
            .clone();
        let io = |source| LoadError::Io {
            path: self.path.clone(),
            source,
        };
        let mut buf = vec![0u8; (entry.end - entry.start) as usize];
        self.file.seek(SeekFrom::Start(entry.start)).map_err(io)?;
        self.file.read_exact(&mut buf).map_err(io)?;
        tensor_from_bytes(name, &entry, &buf, to, device)
    }
}

/// Serializes named tensors to safetensors bytes (names sorted, as the reference writer does).
pub fn to_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, candle_core::Error> {
    let mut names: Vec<&(String, Tensor)> = tensors.iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in names {
        let dtype = match t.dtype() {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            other => candle_core::bail!("cannot save dtype {other:?}"),
        };
        let begin = data.len();
        let flat = t.flatten_all()?;
        match t.dtype() {
            DType::F16 => {
                for x in flat.to_vec1::<half::f16>()? {
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
            DType::BF16 => {
                for x in flat.to_vec1::<half::bf16>()? {
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
            _ => {
                for x in flat.to_vec1::<f32>()? {
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.dims(), "data_offsets": [begin, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    // Pad the header with spaces to an 8-byte boundary, as the reference writer does.
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6.0, &dev)
            .and_then(|t| t.reshape((2, 3)))
            .expect("a");
        let b = Tensor::arange(0f32, 4.0, &dev)
            .and_then(|t| t.to_dtype(DType::BF16))
            .expect("b");
        to_bytes(&[("a".into(), a), ("b".into(), b)]).expect("bytes")
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let m = load_from_bytes(&bytes, Path::new("x"), DType::F32, &Device::Cpu).expect("load");
        let a: Vec<Vec<f32>> = m["a"].to_vec2().expect("a");
        assert_eq!(a, vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]);
        assert_eq!(
            m["b"].to_vec1::<f32>().expect("b"),
            vec![0.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let r = load_from_bytes(&bytes[..cut], Path::new("x"), DType::F32, &Device::Cpu);
            assert!(r.is_err(), "truncated at {cut} accepted");
        }
    }

    #[test]
    fn every_byte_flip_is_handled() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                // Flips in the data section give other numbers; in the header, errors. Never a panic.
                let _ = load_from_bytes(&b, Path::new("x"), DType::F32, &Device::Cpu);
            }
        }
    }

    #[test]
    fn rejects_overlap_and_bad_sizes() {
        let mk = |h: &str, data: usize| {
            let mut v = (h.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(h.as_bytes());
            v.extend(std::iter::repeat_n(0u8, data));
            v
        };
        let overlap = mk(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        );
        let e = parse_header(&overlap, overlap.len() as u64, Path::new("x")).expect_err("overlap");
        assert!(e.to_string().contains("overlap"), "{e}");
        let size = mk(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(parse_header(&size, size.len() as u64, Path::new("x")).is_err());
        let short = mk(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        );
        assert!(matches!(
            parse_header(&short, short.len() as u64, Path::new("x")),
            Err(LoadError::Truncated { .. })
        ));
        let int = mk(
            r#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(matches!(
            load_from_bytes(&int, Path::new("x"), DType::F32, &Device::Cpu),
            Err(LoadError::WrongDtype { .. })
        ));
    }
}
