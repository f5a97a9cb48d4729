//! A model directory's base adapter (`tandem_base_adapter` in `config.json`, the accuracy-recovery
//! adapter of a palletized model): installed by `install_base_adapter`, covered by the model
//! digest, applied whenever no task adapter is, replaced by a task adapter, and refused with the
//! field named when it is missing or its name is a path.

use common::write_tokenizer;
use tandem_model::test_util as common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tandem_model::{
    Adapter, AdapterConfig, Cache, Config, Model, Target, install_base_adapter, load_adapter,
    load_model, model_digest, model_files,
};

const CONFIG: &str = r#"{"model_type":"llama","vocab_size":40,"hidden_size":16,"intermediate_size":24,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
    "max_position_embeddings":64,"tie_word_embeddings":true,"eos_token_id":1}"#;

/// A saved random model and a saved random (non-zero) adapter for it.
fn model_and_adapter(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dev = Device::Cpu;
    let cfg = Config::from_json(CONFIG.as_bytes(), Path::new("config.json")).expect("config");
    let vm = VarMap::new();
    let model = Model::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).expect("model");
    let mdir = root.join("model");
    std::fs::create_dir_all(&mdir).expect("mkdir");
    model.save_pretrained(&mdir).expect("save model");
    write_tokenizer(&mdir, 40);
    let avm = VarMap::new();
    let adapter = Adapter::new(
        AdapterConfig::new(4, 8.0, &Target::ALL),
        &cfg,
        VarBuilder::from_varmap(&avm, DType::F32, &dev),
    )
    .expect("adapter");
    // B starts at zero (a no-op adapter); make it change the logits.
    for v in avm.all_vars() {
        v.set(&Tensor::randn(0f32, 0.3, v.shape(), &dev).expect("randn"))
            .expect("set");
    }
    let adir = root.join("adapter");
    std::fs::create_dir_all(&adir).expect("mkdir");
    adapter.save_pretrained(&adir).expect("save adapter");
    (mdir, adir)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

#[test]
fn installed_base_adapter_is_applied_digested_and_replaced_by_task_adapters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mdir, adir) = model_and_adapter(tmp.path());
    let dev = Device::Cpu;
    let plain = load_model(&mdir, DType::F32, &dev).expect("load");
    assert!(plain.model.base_adapter().is_none());
    let files_before = model_files(&mdir).expect("files");

    install_base_adapter(&mdir, &adir, "recovery").expect("install");
    let with = load_model(&mdir, DType::F32, &dev).expect("load with base adapter");
    assert_eq!(
        with.model.config().base_adapter.as_deref(),
        Some("recovery")
    );
    // The digest covers the adapter's files, and the unloaded digest agrees.
    assert_ne!(with.digest, plain.digest);
    assert_eq!(model_digest(&mdir).expect("digest"), with.digest);
    let files_after = model_files(&mdir).expect("files");
    assert_eq!(files_after.len(), files_before.len() + 2);
    assert!(files_after.contains(&mdir.join("recovery/adapter_model.safetensors")));

    let ids = Tensor::new(&[[3u32, 9, 4, 9, 3, 7]], &dev).expect("ids");
    let loaded = load_adapter(&adir, plain.model.config(), DType::F32, &dev).expect("adapter");
    // No adapter given: the base adapter is applied, in training and cached forward alike.
    let base_applied = with.model.forward_train(&ids, None).expect("fwd");
    let explicit = plain
        .model
        .forward_train(&ids, Some(&loaded.adapter))
        .expect("fwd");
    assert_eq!(max_diff(&base_applied, &explicit), 0.0);
    let unadapted = plain.model.forward_train(&ids, None).expect("fwd");
    assert!(max_diff(&base_applied, &unadapted) > 1e-3);
    let mut cache = Cache::new(&with.model, 1, 16).expect("cache");
    let cached = with.model.forward(&ids, None, &mut cache).expect("fwd");
    assert!(max_diff(&cached, &base_applied) < 1e-4);

    // A task adapter replaces the base adapter (it is not stacked on it).
    let zero = Adapter::new(
        AdapterConfig::new(4, 8.0, &Target::ALL),
        with.model.config(),
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev),
    )
    .expect("zero adapter");
    let replaced = with.model.forward_train(&ids, Some(&zero)).expect("fwd");
    assert_eq!(max_diff(&replaced, &unadapted), 0.0);
    let merged = with.model.merge_adapter(&zero).expect("merge");
    assert!(merged.base_adapter().is_none());
    assert!(max_diff(&merged.forward_train(&ids, None).expect("fwd"), &unadapted) < 1e-5);

    // Saving a model with a base adapter writes the adapter too, and the copy loads the same.
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&copy).expect("mkdir");
    with.model.save_pretrained(&copy).expect("save");
    write_tokenizer(&copy, 40);
    let again = load_model(&copy, DType::F32, &dev).expect("reload");
    assert!(
        max_diff(
            &again.model.forward_train(&ids, None).expect("fwd"),
            &base_applied
        ) < 1e-5
    );
}

#[test]
fn missing_or_path_named_base_adapters_are_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mdir, adir) = model_and_adapter(tmp.path());
    install_base_adapter(&mdir, &adir, "recovery").expect("install");
    let dev = Device::Cpu;

    std::fs::remove_file(mdir.join("recovery/adapter_model.safetensors")).expect("rm");
    for e in [
        load_model(&mdir, DType::F32, &dev).expect_err("missing adapter file"),
        model_digest(&mdir).expect_err("missing adapter file"),
    ] {
        let msg = e.to_string();
        assert!(
            msg.contains("tandem_base_adapter") && msg.contains("recovery"),
            "{msg}"
        );
    }

    for bad in ["", "..", "../x", "a/b", "a\\b"] {
        let mut v: serde_json::Value = serde_json::from_str(CONFIG).expect("json");
        v["tandem_base_adapter"] = bad.into();
        let e =
            Config::from_json(v.to_string().as_bytes(), Path::new("config.json")).expect_err(bad);
        assert!(e.to_string().contains("tandem_base_adapter"), "{e}");
        assert!(install_base_adapter(&mdir, &adir, bad).is_err(), "{bad}");
    }
    // An adapter for another architecture is not installed.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let cfg: serde_json::Value = serde_json::from_str(CONFIG).expect("json");
    let mut wide = cfg.clone();
    wide["hidden_size"] = 32.into();
    let wide = Config::from_json(wide.to_string().as_bytes(), Path::new("c")).expect("cfg");
    Adapter::new(
        AdapterConfig::new(4, 8.0, &Target::ALL),
        &wide,
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev),
    )
    .expect("adapter")
    .save_pretrained(&other)
    .expect("save");
    std::fs::write(mdir.join("recovery/adapter_model.safetensors"), b"").ok();
    let fresh = tmp.path().join("fresh");
    let (fresh_model, _) = model_and_adapter(&fresh);
    assert!(install_base_adapter(&fresh_model, &other, "recovery").is_err());
    assert!(
        !fresh_model.join("recovery").exists(),
        "nothing is copied when the adapter does not fit"
    );
}
