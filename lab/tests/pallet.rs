//! Palletized checkpoints end to end on the tiny `tied_gqa` fixture: palletize, save, load
//! through `load_model`, and compare with the dequantized dense model.

use tandem_model::test_util as common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tandem_lab::pallet::{PalletPlan, Palletize, allocate_bits};
use tandem_model::pallet::{Bits, OpInfo};
use tandem_model::{Cache, Error, LoadError, Model, load_model};

const GROUP: usize = 4; // divides every row count of the fixture (vocab 300).

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("diff")
}

fn logits(m: &Model, ids: &[u32]) -> Tensor {
    let mut cache = Cache::new(m, 1, 64).expect("cache");
    m.forward(&m.tokens_tensor(ids).expect("ids"), None, &mut cache)
        .expect("forward")
}

/// The dense model holding exactly the palletized model's (dequantized) values.
fn dequantized(m: &Model) -> Model {
    let tensors = m.named_tensors().into_iter().collect();
    Model::new(
        m.config(),
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .expect("dense copy")
}

fn mixed_plan(m: &Model) -> PalletPlan {
    // Fake sensitivities (larger for later ops) just to get a real 2/4 mix.
    let ops: Vec<(String, usize, f64)> = m
        .palletizable_ops()
        .into_iter()
        .enumerate()
        .map(|(i, (n, [r, c]))| (n, r * c, i as f64))
        .collect();
    PalletPlan {
        bits: allocate_bits(&ops, 3.5).expect("allocate"),
        group_size: GROUP,
    }
}

#[test]
fn palletized_model_matches_its_dequantized_weights_and_reloads() {
    let base = common::model("tied_gqa", DType::F32);
    let plan = mixed_plan(&base.model);
    assert!(plan.bits.values().any(|b| *b == Bits::B2));
    assert!(plan.bits.values().any(|b| *b == Bits::B4));
    let pm = base
        .model
        .palletize(&plan, &BTreeMap::new())
        .expect("palletize");
    assert_eq!(
        pm.pallet_matrices().len(),
        2 * 7 + 1,
        "projections + tied embedding"
    );

    // Prompt longer than the decode path's row limit, so both kernels run.
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 300).collect();
    let want = logits(&dequantized(&pm), &ids);
    let got = logits(&pm, &ids);
    assert!(max_diff(&got, &want) < 1e-3, "{}", max_diff(&got, &want));
    // Quantization changed the function, but not into something unrelated.
    let orig = logits(&base.model, &ids);
    assert!(max_diff(&got, &orig) > 0.0);

    // Prefill 12 (GEMM path) then decode one token at a time (GEMV path) ≈ one full pass.
    let mut cache = Cache::new(&pm, 1, 64).expect("cache");
    pm.forward(&pm.tokens_tensor(&ids[..12]).expect("t"), None, &mut cache)
        .expect("prefill");
    for (k, &id) in ids.iter().enumerate().skip(12) {
        let step = pm
            .forward_last(&pm.tokens_tensor(&[id]).expect("t"), None, &mut cache)
            .expect("decode");
        let full = got.get(0).and_then(|t| t.get(k)).expect("row");
        // Decode runs the int8-activation kernel (see `pallet::kernel::gemv`): close to the
        // exact prefill path, not bit-equal.
        let scale = full
            .abs()
            .and_then(|t| t.max(0)?.to_scalar::<f32>())
            .expect("max");
        let d = max_diff(&step.squeeze(0).expect("sq"), &full);
        assert!(
            d < 0.03 * scale + 1e-3,
            "token {k}: {d} (logit scale {scale})"
        );
    }

    // Save, reload through the ordinary loader, same logits; f16 compute also works.
    let dir = tempfile::tempdir().expect("tmp");
    let mut ops = BTreeMap::new();
    ops.insert(
        "model.layers.0.mlp.up_proj.weight".to_string(),
        OpInfo {
            sensitivity: Some(0.5),
        },
    );
    pm.save_palletized(dir.path(), ops).expect("save");
    std::fs::copy(
        common::fixtures().join("tied_gqa/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("tokenizer");
    let loaded = load_model(dir.path(), DType::F32, &Device::Cpu).expect("load palletized");
    assert!(loaded.stored_dtypes.contains("PALLET2"));
    assert!(loaded.stored_dtypes.contains("PALLET4"));
    assert_ne!(loaded.digest, base.digest);
    let again = logits(&loaded.model, &ids);
    assert!(max_diff(&again, &got) < 1e-6);
    assert!(loaded.model.weight_bytes() < base.model.weight_bytes() / 4);
    let half = load_model(dir.path(), DType::F16, &Device::Cpu).expect("load f16");
    let h = logits(&half.model, &ids).to_dtype(DType::F32).expect("f32");
    assert!(max_diff(&h, &got) < 0.1, "{}", max_diff(&h, &got));
}

#[test]
fn palletized_dirs_that_disagree_with_their_config_are_errors() {
    let base = common::model("tied_gqa", DType::F32);
    let plan = PalletPlan::uniform(&base.model, Bits::B4, GROUP);
    let pm = base
        .model
        .palletize(&plan, &BTreeMap::new())
        .expect("palletize");
    let dir = tempfile::tempdir().expect("tmp");
    pm.save_palletized(dir.path(), BTreeMap::new())
        .expect("save");
    std::fs::copy(
        common::fixtures().join("tied_gqa/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("tokenizer");
    load_model(dir.path(), DType::F32, &Device::Cpu).expect("loads as written");

    let cfg_path = dir.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).expect("cfg");
    // Fewer layers than the checkpoint: extra tensors.
    std::fs::write(
        &cfg_path,
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )
    .expect("write");
    let e = load_model(dir.path(), DType::F32, &Device::Cpu).expect_err("extra layer");
    assert!(
        matches!(e, Error::Load(LoadError::ConfigMismatch { .. })),
        "{e}"
    );
    // A wider model than the checkpoint: wrong shape of a palletized weight.
    std::fs::write(
        &cfg_path,
        cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 132"),
    )
    .expect("write");
    let e = load_model(dir.path(), DType::F32, &Device::Cpu).expect_err("shape");
    assert!(
        matches!(e, Error::Load(LoadError::WrongShape { .. })),
        "{e}"
    );
    std::fs::write(&cfg_path, &cfg).expect("restore");

    // A truncated weights file, and a second shard next to a palletized one.
    let w = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&w).expect("read");
    std::fs::write(&w, &bytes[..bytes.len() - 3]).expect("truncate");
    assert!(load_model(dir.path(), DType::F32, &Device::Cpu).is_err());
    std::fs::write(&w, &bytes).expect("restore");
    std::fs::copy(
        common::fixtures().join("tied_gqa/model.safetensors"),
        dir.path().join("extra.safetensors"),
    )
    .expect("copy");
    let e = load_model(dir.path(), DType::F32, &Device::Cpu).expect_err("two shards");
    assert!(matches!(e, Error::Load(LoadError::Pallet { .. })), "{e}");
}
