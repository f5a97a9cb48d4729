//! Every bad model or adapter file gives its own error, never a panic.

use tandem_model::test_util as common;

use std::path::Path;

use candle_core::{DType, Device};
use common::*;
use serde_json::Value;
use tandem_model::{AdapterError, Error, LoadError, load_adapter, load_model};

fn load(dir: &Path) -> Result<tandem_model::LoadedModel, Error> {
    load_model(dir, DType::F32, &Device::Cpu)
}

/// Rewrites the header of a safetensors file with `edit`, keeping the data section.
fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let bytes = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    edit(header.as_object_mut().expect("object"));
    let mut h = serde_json::to_vec(&header).expect("json");
    // Keep the header length so data offsets stay valid.
    assert!(h.len() <= n, "edited header grew");
    h.resize(n, b' ');
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).expect("write");
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    edit(v.as_object_mut().expect("object"));
    std::fs::write(&path, v.to_string()).expect("write");
}

const Q0: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn missing_tensor() {
    let d = copy_fixture("tied_gqa");
    edit_header(&d.path().join("model.safetensors"), |h| {
        h.remove(Q0);
    });
    match load(d.path()) {
        Err(Error::Load(LoadError::MissingTensor { name })) => assert_eq!(name, Q0),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn wrong_shape() {
    let d = copy_fixture("tied_gqa");
    edit_header(&d.path().join("model.safetensors"), |h| {
        h[Q0]["shape"] = serde_json::json!([32, 128]);
    });
    match load(d.path()) {
        Err(Error::Load(LoadError::WrongShape {
            name,
            expected,
            actual,
        })) => {
            assert_eq!(
                (name.as_str(), expected, actual),
                (Q0, vec![64, 64], vec![32, 128])
            );
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
}

#[test]
fn wrong_dtype() {
    let d = copy_fixture("tied_gqa");
    edit_header(&d.path().join("model.safetensors"), |h| {
        h[Q0]["dtype"] = "I32".into();
    });
    let e = load(d.path()).expect_err("I32 weights");
    assert!(
        matches!(e, Error::Load(LoadError::WrongDtype { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("I32"), "{e}");
}

#[test]
fn truncated_weights() {
    let d = copy_fixture("tied_gqa");
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    for cut in [0, 5, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let e = load(d.path()).expect_err("truncated");
        assert!(
            matches!(e, Error::Load(LoadError::Truncated { .. })),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn config_weights_mismatch() {
    // Fewer layers in the config than in the weights.
    let d = copy_fixture("tied_gqa");
    edit_config(d.path(), |c| {
        c.insert("num_hidden_layers".into(), 1.into());
    });
    let e = load(d.path()).expect_err("extra layer");
    assert!(
        matches!(e, Error::Load(LoadError::ConfigMismatch { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("model.layers.1"), "{e}");
    // Untied in the config, tied in the weights: lm_head is missing.
    let d = copy_fixture("tied_gqa");
    edit_config(d.path(), |c| {
        c.insert("tie_word_embeddings".into(), false.into());
    });
    let e = load(d.path()).expect_err("untied");
    assert!(
        matches!(e, Error::Load(LoadError::MissingTensor { ref name }) if name == "lm_head.weight"),
        "{e}"
    );
    // A tokenizer larger than the config's vocabulary.
    let d = copy_fixture("tied_gqa");
    edit_config(d.path(), |c| {
        c.insert("vocab_size".into(), 100.into());
    });
    let e = load(d.path()).expect_err("small vocab");
    assert!(
        matches!(e, Error::Load(LoadError::ConfigMismatch { .. })),
        "{e}"
    );
    // A different width is a shape error on the first tensor.
    let d = copy_fixture("tied_gqa");
    edit_config(d.path(), |c| {
        c.insert("intermediate_size".into(), 100.into());
    });
    let e = load(d.path()).expect_err("width");
    assert!(
        matches!(e, Error::Load(LoadError::WrongShape { .. })),
        "{e}"
    );
}

#[test]
fn tokenizer_missing_or_bad() {
    let d = copy_fixture("tied_gqa");
    std::fs::remove_file(d.path().join("tokenizer.json")).expect("rm");
    let e = load(d.path()).expect_err("no tokenizer");
    assert!(
        matches!(e, Error::Load(LoadError::TokenizerMissing { .. })),
        "{e}"
    );
    std::fs::write(d.path().join("tokenizer.json"), b"{\"model\": 3}").expect("write");
    let e = load(d.path()).expect_err("bad tokenizer");
    assert!(matches!(e, Error::Load(LoadError::Tokenizer { .. })), "{e}");
}

#[test]
fn bad_configs() {
    let d = copy_fixture("tied_gqa");
    std::fs::remove_file(d.path().join("config.json")).expect("rm");
    assert!(matches!(
        load(d.path()),
        Err(Error::Load(LoadError::Io { .. }))
    ));
    let d = copy_fixture("tied_gqa");
    edit_config(d.path(), |c| {
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}),
        );
    });
    let e = load(d.path()).expect_err("llama3 rope");
    assert!(
        matches!(e, Error::Load(LoadError::Unsupported { .. })),
        "{e}"
    );
}

#[test]
fn no_weights_and_bad_index() {
    let d = copy_fixture("tied_gqa");
    std::fs::remove_file(d.path().join("model.safetensors")).expect("rm");
    assert!(matches!(
        load(d.path()),
        Err(Error::Load(LoadError::NoWeights { .. }))
    ));

    let d = copy_fixture("untied_gqa_sharded");
    assert!(load(d.path()).is_ok());
    std::fs::remove_file(d.path().join("model-00002-of-00004.safetensors")).expect("rm");
    let e = load(d.path()).expect_err("missing shard");
    assert!(matches!(e, Error::Load(LoadError::Index { .. })), "{e}");

    let d = copy_fixture("untied_gqa_sharded");
    let idx = d.path().join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&idx).expect("read")).expect("json");
    v["weight_map"]["lm_head.weight"] = "../../etc/passwd".into();
    std::fs::write(&idx, v.to_string()).expect("write");
    let e = load(d.path()).expect_err("traversal");
    assert!(matches!(e, Error::Load(LoadError::Index { .. })), "{e}");
}

#[test]
fn adapter_for_another_base_is_refused() {
    let other = model("untied_gqa_sharded", DType::F32);
    let e = load_adapter(
        &fixtures().join("tied_gqa_lora"),
        other.model.config(),
        DType::F32,
        &Device::Cpu,
    )
    .expect_err("wrong base");
    assert!(
        matches!(e, Error::Adapter(AdapterError::BaseMismatch { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("different base model"), "{e}");
}

#[test]
fn adapter_file_problems() {
    let base = model("tied_gqa", DType::F32);
    let cfg = base.model.config();
    let try_load = |d: &Path| load_adapter(d, cfg, DType::F32, &Device::Cpu);

    let d = copy_fixture("tied_gqa_lora");
    let w = d.path().join("adapter_model.safetensors");
    edit_header(&w, |h| {
        h.remove("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight");
    });
    let e = try_load(d.path()).expect_err("missing");
    assert!(
        matches!(e, Error::Adapter(AdapterError::MissingTensor { .. })),
        "{e}"
    );

    // Config targets fewer modules than the file holds.
    let d = copy_fixture("tied_gqa_lora");
    let c = d.path().join("adapter_config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&c).expect("read")).expect("json");
    v["target_modules"] = serde_json::json!(["q_proj"]);
    std::fs::write(&c, v.to_string()).expect("write");
    let e = try_load(d.path()).expect_err("unexpected");
    assert!(
        matches!(e, Error::Adapter(AdapterError::UnexpectedTensor { .. })),
        "{e}"
    );

    // Truncations of the adapter weights are errors; header byte flips are handled (the
    // exhaustive every-offset loops run on a small file in `weights::tests`).
    let d = copy_fixture("tied_gqa_lora");
    let w = d.path().join("adapter_model.safetensors");
    let bytes = std::fs::read(&w).expect("read");
    for cut in (0..bytes.len()).step_by(61) {
        std::fs::write(&w, &bytes[..cut]).expect("write");
        assert!(try_load(d.path()).is_err(), "cut at {cut} accepted");
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
    for i in (0..(8 + n)).step_by(29) {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        std::fs::write(&w, &b).expect("write");
        let _ = try_load(d.path());
    }
}
