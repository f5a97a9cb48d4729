//! The int8 KV cache: decoding token by token through it gives logits close to the dense
//! cache's (and the same greedy choices on a random model), in about a quarter of the bytes.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tandem_model::{Cache, Config, KvFormat, Model};

#[test]
fn int8_cache_decodes_like_the_dense_cache_in_a_quarter_of_the_bytes() {
    let json = r#"{"model_type":"llama","vocab_size":64,"hidden_size":32,"intermediate_size":48,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
        "max_position_embeddings":64,"tie_word_embeddings":true,"eos_token_id":1}"#;
    let cfg = Config::from_json(json.as_bytes(), Path::new("config.json")).expect("config");
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let model = Model::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).expect("model");
    // Deterministic pseudo-random weights (a fixed test, not a flaky one).
    for (k, v) in vm.all_vars().iter().enumerate() {
        if v.rank() == 2 {
            let n = v.elem_count();
            let w: Vec<f32> = (0..n)
                .map(|i| {
                    0.5 * ((i as f32) * 0.754_877_7 + k as f32 * 1.3).sin()
                        * ((i * 31 % 17) as f32 / 17.0 - 0.5)
                })
                .collect();
            v.set(&Tensor::from_vec(w, v.shape(), &dev).expect("weights"))
                .expect("set");
        }
    }
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 64).collect();
    let run = |format: KvFormat| {
        let mut cache = Cache::with_format(&model, 1, 48, format).expect("cache");
        assert_eq!(cache.format(), format);
        let rows: Vec<Tensor> = ids
            .iter()
            .map(|&t| {
                model
                    .forward_last(&model.tokens_tensor(&[t]).expect("ids"), None, &mut cache)
                    .expect("forward")
            })
            .collect();
        (Tensor::cat(&rows, 0).expect("cat"), cache.bytes())
    };
    let (dense, dense_bytes) = run(KvFormat::Dense);
    let (int8, int8_bytes) = run(KvFormat::Int8);
    let scale = dense
        .abs()
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max");
    let err = (&dense - &int8)
        .and_then(|t| t.abs())
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("err");
    assert!(err > 0.0, "the int8 cache is not the dense one");
    eprintln!("max logit error {err} vs logit scale {scale}");
    assert!(
        err < 0.02 * scale,
        "max logit error {err} vs logit scale {scale}"
    );
    let argmax = |t: &Tensor| -> Vec<u32> {
        t.argmax(D::Minus1)
            .and_then(|a| a.to_vec1::<u32>())
            .expect("argmax")
    };
    let (a, b) = (argmax(&dense), argmax(&int8));
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert!(
        same * 10 >= a.len() * 9,
        "greedy choices agree at {same}/{} steps",
        a.len()
    );
    // f32 values → 1 byte each, plus one f32 scale per 16-value vector (head_dim 8: 2 bytes/value).
    assert!(
        int8_bytes * 2 < dense_bytes,
        "int8 {int8_bytes} B vs dense {dense_bytes} B"
    );
    assert!("int8".parse::<KvFormat>() == Ok(KvFormat::Int8));
    assert!("q4".parse::<KvFormat>().is_err());
}
