//! Shared helpers for the integration tests of `tandem-model` and `tandem-lab` (fixtures made
//! by `scripts/make_fixtures.py`), behind the `test-util` feature. Test code: the helpers panic
//! when a fixture is missing.

use std::path::{Path, PathBuf};

use crate::{LoadedAdapter, LoadedModel, load_adapter, load_model};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

/// The committed fixtures directory, `model/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub prompts: Vec<String>,
    pub encodings: Vec<Vec<u32>>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub model: String,
    pub adapter: Option<String>,
    pub prompt: usize,
    pub logits: String,
    pub greedy: Vec<u32>,
}

pub fn reference() -> Reference {
    let bytes = std::fs::read(fixtures().join("reference.json")).expect("reference.json");
    serde_json::from_slice(&bytes).expect("reference.json parses")
}

pub fn reference_logits(key: &str) -> Tensor {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).expect("reference");
    let mut all = crate::weights::load_from_bytes(
        &bytes,
        Path::new("reference.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .expect("reference tensors");
    all.remove(key).expect("reference key")
}

pub fn model(name: &str, dtype: DType) -> LoadedModel {
    load_model(&fixtures().join(name), dtype, &Device::Cpu).expect("fixture model loads")
}

pub fn adapter(name: &str, m: &LoadedModel) -> LoadedAdapter {
    load_adapter(
        &fixtures().join(name),
        m.model.config(),
        m.model.dtype(),
        &Device::Cpu,
    )
    .expect("fixture adapter loads")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_dtype(DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

/// Copies a fixture directory into a fresh temp dir for tampering.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(fixtures().join(name)).expect("fixture dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
    }
    dir
}

/// A word-level tokenizer.json with `n` tokens named t0..t{n-1}.
pub fn write_tokenizer(dir: &Path, n: usize) {
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..n).map(|i| (format!("t{i}"), i.into())).collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).expect("write tokenizer");
}
