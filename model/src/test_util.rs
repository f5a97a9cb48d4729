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

/// A tiny Llama checkpoint written as llama.cpp writes GGUF files: a random model (hidden 32,
/// 2 layers, 2 query / 1 KV heads, SwiGLU 64, tied embeddings) whose 2-D weights are stored as
/// `weight_type` (norms stay F32), Q/K rows permuted as llama.cpp's converter does, and a
/// byte-level BPE vocabulary of 259 tokens with `<s>` (256, BOS, added at encode) and `</s>`
/// (257, EOS), one merge (`Ġ t`) and a ChatML-like chat template. Returns the file's bytes and
/// the model it holds (weights as written, before quantization).
pub fn tiny_gguf(weight_type: candle_core::quantized::GgmlDType) -> (Vec<u8>, crate::Model) {
    use candle_core::quantized::QTensor;
    use candle_core::quantized::gguf_file::{self, Value};

    let cfg = crate::Config {
        vocab_size: 259,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        eos_token_ids: vec![257],
        bos_token_id: Some(256),
        base_adapter: None,
    };
    let vm = candle_nn::VarMap::new();
    let model = crate::Model::new(
        &cfg,
        candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .expect("tiny model");
    // Norm weights away from 1 so a misplaced norm shows in the logits.
    let named: std::collections::HashMap<String, Tensor> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| {
            let t = if n.ends_with("norm.weight") {
                t.rand_like(0.5, 1.5).expect("rand")
            } else {
                t
            };
            (n, t)
        })
        .collect();
    let model = crate::Model::new(
        &cfg,
        candle_nn::VarBuilder::from_tensors(named.clone(), DType::F32, &Device::Cpu),
    )
    .expect("tiny model");

    let permute = |w: &Tensor, heads: usize| -> Tensor {
        let (rows, cols) = w.dims2().expect("2-D");
        w.reshape((heads, 2, rows / heads / 2, cols))
            .and_then(|t| t.transpose(1, 2))
            .and_then(|t| t.contiguous())
            .and_then(|t| t.reshape((rows, cols)))
            .expect("permute")
    };
    let mut gguf_names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ];
    for l in 0..cfg.num_hidden_layers {
        for m in [
            "attn_norm",
            "ffn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            gguf_names.push(format!("blk.{l}.{m}.weight"));
        }
    }
    let tensors: Vec<(String, QTensor)> = gguf_names
        .iter()
        .map(|g| {
            let hf = crate::gguf::hf_tensor_name(g).expect("known name");
            let mut t = named[&hf].clone();
            if g.ends_with("attn_q.weight") {
                t = permute(&t, cfg.num_attention_heads);
            } else if g.ends_with("attn_k.weight") {
                t = permute(&t, cfg.num_key_value_heads);
            }
            let ty = if t.rank() == 1 {
                candle_core::quantized::GgmlDType::F32
            } else {
                weight_type
            };
            (g.clone(), QTensor::quantize(&t, ty).expect("quantize"))
        })
        .collect();

    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<Value> = alphabet
        .iter()
        .map(|c| Value::String(c.to_string()))
        .collect();
    let mut types: Vec<Value> = vec![Value::I32(1); tokens.len()];
    for (t, ty) in [("<s>", 3), ("</s>", 3), ("Ġt", 1)] {
        tokens.push(Value::String(t.into()));
        types.push(Value::I32(ty));
    }
    let template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let u32v = |n: usize| Value::U32(n as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny".into())),
        ("llama.context_length", u32v(cfg.max_position_embeddings)),
        ("llama.embedding_length", u32v(cfg.hidden_size)),
        ("llama.block_count", u32v(cfg.num_hidden_layers)),
        ("llama.feed_forward_length", u32v(cfg.intermediate_size)),
        ("llama.attention.head_count", u32v(cfg.num_attention_heads)),
        (
            "llama.attention.head_count_kv",
            u32v(cfg.num_key_value_heads),
        ),
        ("llama.rope.dimension_count", u32v(cfg.head_dim)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("Ġ t".into())]),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(256)),
        ("tokenizer.ggml.eos_token_id", Value::U32(257)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ("tokenizer.chat_template", Value::String(template.into())),
    ];
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut cur = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut cur, &md, &ts).expect("write GGUF");
    (cur.into_inner(), model)
}
