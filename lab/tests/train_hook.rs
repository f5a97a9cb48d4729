//! The training API: VarMap-backed construction, differentiable forward, backprop into LoRA
//! only, and save → load round trips in the HF / PEFT layouts.

use common::write_tokenizer;
use tandem_model::test_util as common;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use std::path::Path;
use tandem_model::{Adapter, AdapterConfig, Cache, Config, Target, load_adapter, load_model};

fn tiny_config() -> Config {
    let json = r#"{"model_type":"llama","vocab_size":40,"hidden_size":16,"intermediate_size":24,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
        "max_position_embeddings":64,"tie_word_embeddings":true,"eos_token_id":1}"#;
    Config::from_json(json.as_bytes(), Path::new("config.json")).expect("config")
}

fn cross_entropy(logits: &Tensor, ids: &Tensor) -> Tensor {
    let (b, s, v) = logits.dims3().expect("dims");
    let inputs = logits
        .narrow(1, 0, s - 1)
        .expect("narrow")
        .reshape((b * (s - 1), v))
        .expect("reshape");
    let targets = ids
        .narrow(1, 1, s - 1)
        .expect("narrow")
        .flatten_all()
        .expect("flat");
    candle_nn::loss::cross_entropy(&inputs, &targets).expect("loss")
}

#[test]
fn varmap_model_trains_and_round_trips() {
    let dev = Device::Cpu;
    let cfg = tiny_config();
    let vm = VarMap::new();
    let model = tandem_model::Model::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))
        .expect("model");
    assert_eq!(
        vm.all_vars().len(),
        1 + 2 * 9 + 1,
        "every weight is a Var (tied head)"
    );
    let ids = Tensor::new(&[[2u32, 5, 7, 2, 5, 7, 2, 5]], &dev).expect("ids");
    let mut opt = candle_nn::AdamW::new_lr(vm.all_vars(), 1e-2).expect("opt");
    let first = cross_entropy(&model.forward_train(&ids, None).expect("fwd"), &ids)
        .to_scalar::<f32>()
        .expect("scalar");
    for _ in 0..30 {
        let loss = cross_entropy(&model.forward_train(&ids, None).expect("fwd"), &ids);
        opt.backward_step(&loss).expect("step");
    }
    let last = cross_entropy(&model.forward_train(&ids, None).expect("fwd"), &ids)
        .to_scalar::<f32>()
        .expect("scalar");
    assert!(last < first * 0.5, "loss {first} -> {last}");

    // The training forward and the cached inference forward agree.
    let mut cache = Cache::new(&model, 1, 16).expect("cache");
    let inf = model.forward(&ids, None, &mut cache).expect("forward");
    let train = model.forward_train(&ids, None).expect("train");
    let diff = (inf - train)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max");
    assert!(diff.to_scalar::<f32>().expect("s") < 1e-4);

    // save_pretrained → load_model gives the same logits.
    let dir = tempfile::tempdir().expect("tempdir");
    model.save_pretrained(dir.path()).expect("save");
    write_tokenizer(dir.path(), 40);
    let loaded = load_model(dir.path(), DType::F32, &dev).expect("load");
    let again = loaded.model.forward_train(&ids, None).expect("fwd");
    let diff = (again - model.forward_train(&ids, None).expect("fwd"))
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max");
    assert_eq!(diff.to_scalar::<f32>().expect("s"), 0.0);
}

#[test]
fn lora_trains_with_frozen_base_and_round_trips() {
    let dev = Device::Cpu;
    let cfg = tiny_config();
    let base_vm = VarMap::new();
    let base = tandem_model::Model::new(&cfg, VarBuilder::from_varmap(&base_vm, DType::F32, &dev))
        .expect("base");
    // A base with larger weights than the std-0.02 init, so the output layer can express the
    // adapter's change.
    for v in base_vm.all_vars() {
        if v.rank() == 2 {
            v.set(&Tensor::randn(0f32, 0.5, v.shape(), &dev).expect("randn"))
                .expect("set");
        }
    }
    let before: Vec<Vec<f32>> = base_vm
        .all_vars()
        .iter()
        .map(|v| v.flatten_all().and_then(|t| t.to_vec1()).expect("vec"))
        .collect();
    let avm = VarMap::new();
    let acfg = AdapterConfig::new(4, 8.0, &Target::ALL);
    let adapter =
        Adapter::new(acfg, &cfg, VarBuilder::from_varmap(&avm, DType::F32, &dev)).expect("adapter");
    assert_eq!(adapter.adapted_modules(), 14);
    let ids = Tensor::new(&[[3u32, 9, 3, 9, 3, 9, 3, 9]], &dev).expect("ids");
    // B starts at zero: the fresh adapter is a no-op.
    let plain = base.forward_train(&ids, None).expect("fwd");
    let adapted = base.forward_train(&ids, Some(&adapter)).expect("fwd");
    let d = (&plain - &adapted)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max");
    assert_eq!(d.to_scalar::<f32>().expect("s"), 0.0);

    let mut opt = candle_nn::AdamW::new_lr(avm.all_vars(), 5e-2).expect("opt");
    let first = cross_entropy(&adapted, &ids).to_scalar::<f32>().expect("s");
    for _ in 0..60 {
        let loss = cross_entropy(
            &base.forward_train(&ids, Some(&adapter)).expect("fwd"),
            &ids,
        );
        opt.backward_step(&loss).expect("step");
    }
    let logits = base.forward_train(&ids, Some(&adapter)).expect("fwd");
    let last = cross_entropy(&logits, &ids).to_scalar::<f32>().expect("s");
    assert!(last < first * 0.7, "loss {first} -> {last}");
    let after: Vec<Vec<f32>> = base_vm
        .all_vars()
        .iter()
        .map(|v| v.flatten_all().and_then(|t| t.to_vec1()).expect("vec"))
        .collect();
    assert_eq!(before, after, "base weights untouched");

    let dir = tempfile::tempdir().expect("tempdir");
    adapter.save_pretrained(dir.path()).expect("save");
    let loaded = load_adapter(dir.path(), &cfg, DType::F32, &dev).expect("load");
    let again = base
        .forward_train(&ids, Some(&loaded.adapter))
        .expect("fwd");
    let d = (&again - &logits)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max");
    assert_eq!(d.to_scalar::<f32>().expect("s"), 0.0);

    // Merging gives the same logits as applying at run time.
    let merged = base.merge_adapter(&loaded.adapter).expect("merge");
    let m = merged.forward_train(&ids, None).expect("fwd");
    let d = (&m - &logits)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max");
    assert!(d.to_scalar::<f32>().expect("s") < 1e-4);
    let _ = m.argmax(D::Minus1).expect("argmax");
}
