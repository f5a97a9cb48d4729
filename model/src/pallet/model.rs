//! Palletized weights inside a [`Model`]: which weights can be palletized, reading them out,
//! swapping in matrices quantized elsewhere (the `tandem-lab` crate's k-means and bit
//! allocation), and saving the result as a palletized checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use super::PalletMatrix;
use super::format::{DenseTensor, PalletFile};
use crate::error::{Result, UsageError};
use crate::llama::{Model, Weight};

/// Per-operation information kept in a palletized file (shown by `palletize-report`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpInfo {
    /// Calibration loss increase (nats/token) with only this operation at 2 bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
}

impl Model {
    /// The weights that can be palletized (every projection, the embedding and an untied
    /// output head), with `[rows, cols]`.
    pub fn palletizable_ops(&self) -> Vec<(String, [usize; 2])> {
        self.weights()
            .into_iter()
            .filter_map(|(n, w)| {
                let (r, c) = w.dims();
                (c > 1).then_some((n, [r, c]))
            })
            .collect()
    }

    /// Palletized weights of this model by name.
    pub fn pallet_matrices(&self) -> BTreeMap<String, Arc<PalletMatrix>> {
        self.weights()
            .into_iter()
            .filter_map(|(n, w)| match w {
                Weight::Pallet(p) => Some((n, p.clone())),
                Weight::Dense(_) => None,
            })
            .collect()
    }

    /// The current values of the palletizable weight `name`, row-major `[rows, cols]` f32
    /// (dequantized if it is already palletized).
    pub fn weight_values(&self, name: &str) -> Result<Vec<f32>> {
        let (_, w) = self
            .weights()
            .into_iter()
            .find(|(n, w)| n == name && w.dims().1 > 1)
            .ok_or_else(|| {
                UsageError::Pallet(format!(
                    "`{name}` is not a palletizable weight of this model"
                ))
            })?;
        w.to_f32_vec()
    }

    /// A copy with the weights named in `matrices` replaced by those palletized matrices
    /// (each must have the weight's `[rows, cols]`); the other weights are shared unchanged.
    pub fn with_pallet_matrices(&self, matrices: BTreeMap<String, PalletMatrix>) -> Result<Model> {
        let ops: BTreeMap<String, [usize; 2]> = self.palletizable_ops().into_iter().collect();
        for (n, m) in &matrices {
            match ops.get(n) {
                None => {
                    return Err(UsageError::Pallet(format!(
                        "`{n}` is not a palletizable weight of this model"
                    ))
                    .into());
                }
                Some(&[r, c]) if (m.rows(), m.cols()) != (r, c) => {
                    return Err(UsageError::Pallet(format!(
                        "`{n}` is [{r}, {c}] but the palletized matrix is [{}, {}]",
                        m.rows(),
                        m.cols()
                    ))
                    .into());
                }
                Some(_) => {}
            }
        }
        let mut matrices = matrices;
        let mut out = self.clone();
        for (name, w) in out.weights_mut() {
            if let Some(m) = matrices.remove(&name) {
                *w = Weight::Pallet(Arc::new(m));
            }
        }
        Ok(out)
    }

    /// The palletized checkpoint of this model: palletized weights as tables + indices, the
    /// rest dense in the compute dtype.
    pub fn to_pallet_file(&self, ops: BTreeMap<String, OpInfo>) -> Result<PalletFile> {
        let mut matrices = BTreeMap::new();
        let mut dense = BTreeMap::new();
        for (name, t) in self.named_weights() {
            match t {
                Weight::Pallet(p) => {
                    matrices.insert(name, (*p).clone());
                }
                Weight::Dense(t) => {
                    dense.insert(name.clone(), dense_tensor(&name, &t)?);
                }
            }
        }
        Ok(PalletFile {
            matrices,
            dense,
            ops,
        })
    }

    /// Writes `config.json` and a palletized `model.safetensors` into the existing directory
    /// `dir` (copy `tokenizer.json` alongside). Loads back with [`crate::load_model`].
    pub fn save_palletized(&self, dir: &Path, ops: BTreeMap<String, OpInfo>) -> Result<()> {
        let file = self.to_pallet_file(ops)?;
        crate::loader::write_model_files(self.config(), dir, &file.to_bytes())
    }
}

/// Raw bytes of a dense tensor, taken from the crate's safetensors writer so the byte layout
/// is the one the loader reads.
fn dense_tensor(name: &str, t: &candle_core::Tensor) -> Result<DenseTensor> {
    let bytes = crate::weights::to_bytes(&[(name.to_string(), t.clone())])?;
    let header = crate::weights::parse_header(&bytes, bytes.len() as u64, Path::new(name))?;
    let e = header
        .get(name)
        .ok_or_else(|| UsageError::Pallet(format!("`{name}` was not serialized")))?;
    Ok(DenseTensor {
        dtype: e.dtype.clone(),
        shape: e.shape.clone(),
        data: bytes
            .get(e.start as usize..e.end as usize)
            .unwrap_or_default()
            .to_vec(),
    })
}

/// Dtype tag of a dense tensor's dtype, for reports.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}
