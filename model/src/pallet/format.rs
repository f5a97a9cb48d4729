//! The palletized checkpoint format: one safetensors file (`model.safetensors`, next to the
//! usual `config.json` and `tokenizer.json`) whose header metadata says which weights are
//! palletized.
//!
//! ```text
//! __metadata__: { "format": "tandem-pallet",
//!                 "tandem.pallet": "{\"version\":1,\"matrices\":{NAME:{\"bits\":4,\"group_size\":16,\"shape\":[R,C]},…},\"ops\":{…}}" }
//! NAME.pallet_indices  U8  [R, ⌈C·bits/8⌉]   packed indices (see the module docs of `pallet`)
//! NAME.pallet_table    F16 [R/group_size, 2^bits]
//! other tensors        F32 / F16 / BF16 as in a normal checkpoint (norms)
//! ```
//! `ops` is informational (per-operation sensitivity from `tandem model palletize`).
//!
//! Parsing is parsing untrusted bytes: [`PalletFile::from_bytes`] checks, in order,
//! 1. the safetensors header (offsets inside the file, no overlap: [`crate::weights`]);
//! 2. the metadata: format tag, JSON spec, version;
//! 3. per palletized matrix: bits ∈ {2, 4, 8}, non-zero shape, group size dividing the rows,
//!    both tensors present with the exact dtype and shape the spec implies, zero padding bits,
//!    finite table entries;
//! 4. every remaining tensor is a dense float weight and no pallet tensor is left unclaimed.
//!
//! and returns an error (never a panic) naming the first problem.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use serde::{Deserialize, Serialize};

use super::{Bits, PalletMatrix, model::OpInfo};
use crate::error::LoadError;
use crate::weights::{self, TensorEntry};

/// `__metadata__.format` of a palletized file.
pub const FORMAT_TAG: &str = "tandem-pallet";
/// `__metadata__` key holding the JSON spec.
pub const SPEC_KEY: &str = "tandem.pallet";
/// Suffix of a palletized weight's index tensor.
pub const INDICES_SUFFIX: &str = ".pallet_indices";
/// Suffix of a palletized weight's table tensor.
pub const TABLE_SUFFIX: &str = ".pallet_table";
/// Current spec version.
pub const VERSION: u64 = 1;

/// One matrix in the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixSpec {
    /// Index width (2, 4 or 8).
    pub bits: u64,
    /// Rows sharing one table.
    pub group_size: u64,
    /// `[rows, cols]`.
    pub shape: Vec<u64>,
}

/// The JSON stored under [`SPEC_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Format version, [`VERSION`].
    pub version: u64,
    /// Palletized weights by checkpoint name.
    pub matrices: BTreeMap<String, MatrixSpec>,
    /// Per-operation information (sensitivity, …); may be empty.
    #[serde(default)]
    pub ops: BTreeMap<String, OpInfo>,
}

/// A dense (not palletized) tensor as stored: dtype tag, shape, raw little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTensor {
    /// `F32`, `F16` or `BF16`.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw bytes.
    pub data: Vec<u8>,
}

/// A checked palletized checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PalletFile {
    /// Palletized weights by name.
    pub matrices: BTreeMap<String, PalletMatrix>,
    /// Dense weights by name.
    pub dense: BTreeMap<String, DenseTensor>,
    /// Per-operation information.
    pub ops: BTreeMap<String, OpInfo>,
}

/// Whether a safetensors `__metadata__` marks a palletized file.
pub fn is_palletized(metadata: &BTreeMap<String, String>) -> bool {
    metadata.get("format").map(String::as_str) == Some(FORMAT_TAG)
}

impl PalletFile {
    /// Parses and checks a whole palletized safetensors file held in memory.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::Pallet {
            path: path.to_owned(),
            reason,
        };
        // 1. Header.
        let (mut entries, metadata) =
            weights::parse_header_with_metadata(bytes, bytes.len() as u64, path)?;
        // 2. Metadata.
        if !is_palletized(&metadata) {
            return Err(bad(format!(
                "`__metadata__.format` is not \"{FORMAT_TAG}\""
            )));
        }
        let spec_json = metadata
            .get(SPEC_KEY)
            .ok_or_else(|| bad(format!("no `__metadata__.{SPEC_KEY}`")))?;
        let spec: Spec = serde_json::from_str(spec_json)
            .map_err(|e| bad(format!("`{SPEC_KEY}` is not a valid spec: {e}")))?;
        if spec.version != VERSION {
            return Err(bad(format!(
                "spec version {} (this build reads version {VERSION})",
                spec.version
            )));
        }
        let data = |e: &TensorEntry| -> Result<&[u8], LoadError> {
            bytes
                .get(e.start as usize..e.end as usize)
                .ok_or_else(|| bad("tensor data outside the file".into()))
        };
        // 3. Matrices.
        let mut matrices = BTreeMap::new();
        for (name, m) in &spec.matrices {
            let bad_m = |reason: String| bad(format!("`{name}`: {reason}"));
            let bits = Bits::from_bits(m.bits)
                .ok_or_else(|| bad_m(format!("bits = {}, not 2, 4 or 8", m.bits)))?;
            let [rows, cols] = m.shape[..] else {
                return Err(bad_m(format!("shape {:?} is not 2-D", m.shape)));
            };
            let to_usize = |v: u64| usize::try_from(v).map_err(|_| bad_m(format!("{v} too big")));
            let (rows, cols, gs) = (to_usize(rows)?, to_usize(cols)?, to_usize(m.group_size)?);
            if rows == 0 || cols == 0 || gs == 0 || !rows.is_multiple_of(gs) {
                return Err(bad_m(format!(
                    "group size {gs} does not divide the rows of shape [{rows}, {cols}]"
                )));
            }
            let row_bytes = cols
                .checked_mul(bits.get())
                .map(|b| b.div_ceil(8))
                .ok_or_else(|| bad_m("shape overflows".into()))?;
            let mut take = |suffix: &str, dtype: &str, shape: Vec<usize>| {
                let tname = format!("{name}{suffix}");
                let e = entries
                    .remove(&tname)
                    .ok_or_else(|| bad_m(format!("tensor `{tname}` is missing")))?;
                if e.dtype != dtype || e.shape != shape {
                    return Err(bad_m(format!(
                        "tensor `{tname}` is {} {:?}, expected {dtype} {shape:?}",
                        e.dtype, e.shape
                    )));
                }
                Ok(e)
            };
            let idx = take(INDICES_SUFFIX, "U8", vec![rows, row_bytes])?;
            let tab = take(TABLE_SUFFIX, "F16", vec![rows / gs, bits.centroids()])?;
            let table: Vec<f16> = data(&tab)?
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect();
            let m = PalletMatrix::new(rows, cols, bits, gs, table, data(&idx)?.to_vec())
                .map_err(bad_m)?;
            matrices.insert(name.clone(), m);
        }
        // 4. Dense tensors.
        let mut dense = BTreeMap::new();
        for (name, e) in entries {
            if name.ends_with(INDICES_SUFFIX) || name.ends_with(TABLE_SUFFIX) {
                return Err(bad(format!(
                    "tensor `{name}` belongs to no palletized matrix in the spec"
                )));
            }
            if matrices.contains_key(&name) {
                return Err(bad(format!("`{name}` is stored both palletized and dense")));
            }
            if e.weight_dtype().is_none() {
                return Err(bad(format!(
                    "dense tensor `{name}` has dtype {}; only F32, F16 and BF16 are weights",
                    e.dtype
                )));
            }
            dense.insert(
                name,
                DenseTensor {
                    dtype: e.dtype.clone(),
                    shape: e.shape.clone(),
                    data: data(&e)?.to_vec(),
                },
            );
        }
        Ok(PalletFile {
            matrices,
            dense,
            ops: spec.ops,
        })
    }

    /// Serializes to safetensors bytes (tensors sorted by name, header padded to 8 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let spec = Spec {
            version: VERSION,
            matrices: self
                .matrices
                .iter()
                .map(|(n, m)| {
                    (
                        n.clone(),
                        MatrixSpec {
                            bits: m.bits().get() as u64,
                            group_size: m.group_size() as u64,
                            shape: vec![m.rows() as u64, m.cols() as u64],
                        },
                    )
                })
                .collect(),
            ops: self.ops.clone(),
        };
        // (name, dtype, shape, bytes), sorted by name.
        let mut tensors: BTreeMap<String, (&str, Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (n, m) in &self.matrices {
            tensors.insert(
                format!("{n}{INDICES_SUFFIX}"),
                ("U8", vec![m.rows(), m.row_bytes()], m.indices().to_vec()),
            );
            tensors.insert(
                format!("{n}{TABLE_SUFFIX}"),
                (
                    "F16",
                    vec![m.rows() / m.group_size(), m.bits().centroids()],
                    m.table().iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
            );
        }
        for (n, d) in &self.dense {
            tensors.insert(n.clone(), (&d.dtype, d.shape.clone(), d.data.clone()));
        }
        let mut header = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        meta.insert("format".into(), FORMAT_TAG.into());
        // Serializing plain structs to JSON cannot fail.
        meta.insert(
            SPEC_KEY.into(),
            serde_json::to_string(&spec).unwrap_or_default().into(),
        );
        header.insert("__metadata__".into(), meta.into());
        let mut offset = 0usize;
        for (n, (dtype, shape, data)) in &tensors {
            header.insert(
                n.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
            );
            offset += data.len();
        }
        let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap_or_default();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + h.len() + offset);
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        for (_, _, data) in tensors.values() {
            out.extend_from_slice(data);
        }
        out
    }

    /// Total bytes of the palletized matrices (indices + tables).
    pub fn pallet_bytes(&self) -> usize {
        self.matrices.values().map(PalletMatrix::byte_size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small file: a 4-bit and a 2-bit matrix (odd column counts, so rows have padding bits)
    /// and one dense norm.
    pub(crate) fn sample() -> PalletFile {
        let w1: Vec<f32> = (0..8 * 5)
            .map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let w2: Vec<f32> = (0..4 * 3)
            .map(|i| ((i * 5) % 7) as f32 * 0.2 - 0.6)
            .collect();
        let mut matrices = BTreeMap::new();
        matrices.insert(
            "a.weight".to_string(),
            crate::pallet::test_matrix(&w1, 8, 5, Bits::B4, 4).expect("a"),
        );
        matrices.insert(
            "b.weight".to_string(),
            crate::pallet::test_matrix(&w2, 4, 3, Bits::B2, 2).expect("b"),
        );
        let mut dense = BTreeMap::new();
        dense.insert(
            "n.weight".to_string(),
            DenseTensor {
                dtype: "F32".into(),
                shape: vec![2],
                data: [1f32, 0.5].iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        );
        let mut ops = BTreeMap::new();
        ops.insert(
            "a.weight".to_string(),
            OpInfo {
                sensitivity: Some(0.25),
            },
        );
        PalletFile {
            matrices,
            dense,
            ops,
        }
    }

    fn p() -> &'static Path {
        Path::new("test.safetensors")
    }

    #[test]
    fn round_trips() {
        let f = sample();
        let bytes = f.to_bytes();
        let back = PalletFile::from_bytes(&bytes, p()).expect("parses");
        assert_eq!(back, f);
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                PalletFile::from_bytes(&bytes[..cut], p()).is_err(),
                "truncated at {cut} parsed"
            );
        }
    }

    #[test]
    fn every_flipped_byte_errors_or_round_trips() {
        let bytes = sample().to_bytes();
        let mut accepted = 0;
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= mask;
                if let Ok(f) = PalletFile::from_bytes(&b, p()) {
                    // Whatever is accepted is a consistent file: it re-encodes and parses back.
                    let again = PalletFile::from_bytes(&f.to_bytes(), p()).expect("re-encoded");
                    assert_eq!(again, f, "flip {mask:#x} at {i}");
                    accepted += 1;
                }
            }
        }
        // Index bytes and table bits may change to other valid values; the rest may not.
        assert!(accepted > 0 && accepted < bytes.len() * 3);
    }

    fn with_spec(edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
        let bytes = sample().to_bytes();
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
        let mut header: serde_json::Value =
            serde_json::from_slice(&bytes[8..8 + n]).expect("header");
        let mut spec: serde_json::Value = serde_json::from_str(
            header["__metadata__"][SPEC_KEY]
                .as_str()
                .expect("spec string"),
        )
        .expect("spec");
        edit(&mut spec);
        header["__metadata__"][SPEC_KEY] = spec.to_string().into();
        let mut h = serde_json::to_vec(&header).expect("json");
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend_from_slice(&bytes[8 + n..]);
        out
    }

    #[test]
    fn inconsistent_specs_are_named() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|s| s["matrices"]["a.weight"]["bits"] = 3.into()),
                "not 2, 4 or 8",
            ),
            (
                Box::new(|s| s["matrices"]["a.weight"]["group_size"] = 3.into()),
                "does not divide",
            ),
            (
                Box::new(|s| s["matrices"]["a.weight"]["group_size"] = 0.into()),
                "does not divide",
            ),
            (
                Box::new(|s| s["matrices"]["a.weight"]["shape"] = serde_json::json!([8, 7])),
                "expected U8",
            ),
            (
                Box::new(|s| s["matrices"]["a.weight"]["bits"] = 2.into()),
                "expected U8",
            ),
            (
                Box::new(|s| s["matrices"]["a.weight"]["group_size"] = 2.into()),
                "expected F16",
            ),
            (
                Box::new(|s| s["matrices"]["a.weight"]["shape"] = serde_json::json!([8])),
                "not 2-D",
            ),
            (Box::new(|s| s["version"] = 2.into()), "version"),
            (
                Box::new(|s| {
                    s["matrices"].as_object_mut().expect("m").remove("b.weight");
                }),
                "belongs to no palletized matrix",
            ),
            (
                Box::new(|s| s["matrices"]["c.weight"] = s["matrices"]["b.weight"].clone()),
                "is missing",
            ),
        ];
        for (edit, want) in cases {
            let err = PalletFile::from_bytes(&with_spec(edit), p())
                .expect_err("must fail")
                .to_string();
            assert!(err.contains(want), "`{err}` should mention `{want}`");
        }
    }

    #[test]
    fn nonzero_padding_and_nan_tables_are_rejected() {
        let f = sample();
        let m = &f.matrices["b.weight"];
        // 3 columns at 2 bits use 6 of 8 bits: set a padding bit.
        let mut idx = m.indices().to_vec();
        idx[0] |= 0x80;
        assert!(
            PalletMatrix::new(4, 3, Bits::B2, 2, m.table().to_vec(), idx)
                .expect_err("padding")
                .contains("padding")
        );
        let mut t = m.table().to_vec();
        t[1] = f16::NAN;
        assert!(
            PalletMatrix::new(4, 3, Bits::B2, 2, t, m.indices().to_vec())
                .expect_err("nan")
                .contains("finite")
        );
    }
}
