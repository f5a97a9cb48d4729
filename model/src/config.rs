//! `config.json` of a Llama-family checkpoint, as written by Hugging Face transformers 4.x and 5.x.
//!
//! transformers 5.x moved `rope_theta` (and `rope_scaling`) into a `rope_parameters` object; both
//! forms are read. Rope scaling other than the default is refused rather than ignored: a model
//! that needs `llama3` or `yarn` scaling would silently compute wrong logits otherwise.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::LoadError;

/// The architecture hyper-parameters the model code needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest context the model was trained for; the KV cache may not exceed it.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the input embedding table.
    pub tie_word_embeddings: bool,
    /// End-of-sequence token ids (generation stops on any of them).
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token id, if the config names one (informational: tokenization
    /// adds a BOS only if `tokenizer.json`'s post-processor says so).
    pub bos_token_id: Option<u32>,
    /// Tandem extension (`tandem_base_adapter`): the name of a PEFT adapter directory inside the
    /// model directory that is part of the model: its files are covered by the model digest and
    /// it is applied whenever no task adapter is (the accuracy-recovery adapter of a palletized
    /// model). A plain directory name, never a path.
    pub base_adapter: Option<String>,
}

/// Longest context (`max_position_embeddings`) this crate runs: 262,144 positions (2× Llama
/// 3.1's 131,072). The RoPE table and KV caches are sized from it, so a larger (or absurd, e.g.
/// `1e11`) value in an untrusted `config.json` is refused before anything is allocated.
pub const MAX_CONTEXT: usize = 1 << 18;
/// Largest vocabulary: 2^24 tokens.
pub const MAX_VOCAB: usize = 1 << 24;
/// Largest `hidden_size`: 65,536.
pub const MAX_HIDDEN: usize = 1 << 16;
/// Largest `intermediate_size`: 262,144.
pub const MAX_INTERMEDIATE: usize = 1 << 18;
/// Most decoder layers: 1,024.
pub const MAX_LAYERS: usize = 1024;
/// Most attention heads (query or key/value): 1,024.
pub const MAX_HEADS: usize = 1024;
/// Largest `head_dim`: 1,024.
pub const MAX_HEAD_DIM: usize = 1024;
/// Largest RoPE cos (or sin) table, `max_position_embeddings × head_dim / 2` f32 values:
/// 256 MiB.
pub const MAX_ROPE_TABLE_BYTES: usize = 256 << 20;

/// The `config.json` key naming a model's base adapter (see [`Config::base_adapter`]).
pub const BASE_ADAPTER_KEY: &str = "tandem_base_adapter";

/// The raw JSON fields, before validation. Unknown fields are ignored.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    eos_token_id: Option<Value>,
    bos_token_id: Option<Value>,
    tandem_base_adapter: Option<String>,
}

/// Model types whose checkpoints are the plain Llama architecture this crate implements.
const LLAMA_FAMILY: &[&str] = &["llama", "mistral"];

impl Config {
    /// Adds the stop ids of a `generation_config.json` (its `eos_token_id`, an id or a list;
    /// what transformers' `generate` stops on) in front of `config.json`'s, without repeats.
    /// `path` is only used in error messages.
    pub fn merge_generation_config(&mut self, bytes: &[u8], path: &Path) -> Result<(), LoadError> {
        let bad = |reason: String| LoadError::Config {
            path: path.to_owned(),
            reason,
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(bad("not a JSON object".into()));
        }
        let ids =
            token_ids(v.get("eos_token_id")).map_err(|e| bad(format!("eos_token_id: {e}")))?;
        if let Some(&bad_id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(bad(format!(
                "eos_token_id {bad_id} is outside the vocabulary ({} tokens)",
                self.vocab_size
            )));
        }
        let mut merged = ids;
        for id in std::mem::take(&mut self.eos_token_ids) {
            if !merged.contains(&id) {
                merged.push(id);
            }
        }
        self.eos_token_ids = merged;
        Ok(())
    }

    /// Parses `config.json` bytes. `path` is only used in error messages.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::Config {
            path: path.to_owned(),
            reason,
        };
        let unsupported = |reason: String| LoadError::Unsupported {
            path: path.to_owned(),
            reason,
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        // Sizes must be non-negative integers; say which one is not (serde's message does not).
        for name in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ] {
            if let Some(x) = v.get(name)
                && !x.is_null()
                && x.as_u64().is_none()
            {
                return Err(bad(format!(
                    "`{name}` must be a non-negative integer, not {x}"
                )));
            }
        }
        let raw: RawConfig =
            serde_json::from_value(v).map_err(|e| bad(format!("not a model config: {e}")))?;

        match raw.model_type.as_deref() {
            Some(t) if LLAMA_FAMILY.contains(&t) => {}
            Some(t) => {
                return Err(unsupported(format!(
                    "model_type `{t}` is not a Llama-family model (supported: {LLAMA_FAMILY:?})"
                )));
            }
            None => return Err(bad("missing `model_type`".into())),
        }
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(unsupported(format!(
                "hidden_act `{act}`; only `silu` (SwiGLU) is implemented"
            )));
        }
        if raw.attention_bias == Some(true) || raw.mlp_bias == Some(true) {
            return Err(unsupported(
                "attention_bias / mlp_bias; only bias-free projections are implemented".into(),
            ));
        }

        let need = |v: Option<usize>, name: &str| {
            v.filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("missing or zero `{name}`")))
        };
        // Every size is bounded before anything is derived from it (tables, caches, shapes).
        let at_most = |v: usize, max: usize, name: &str| {
            if v > max {
                Err(bad(format!(
                    "`{name}` is {v}; this runtime supports at most {max}"
                )))
            } else {
                Ok(v)
            }
        };
        let hidden_size = at_most(
            need(raw.hidden_size, "hidden_size")?,
            MAX_HIDDEN,
            "hidden_size",
        )?;
        let num_attention_heads = at_most(
            need(raw.num_attention_heads, "num_attention_heads")?,
            MAX_HEADS,
            "num_attention_heads",
        )?;
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(bad(format!(
                    "hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_attention_heads}) and no head_dim is given"
                )));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(format!(
                "head_dim ({head_dim}) must be even and non-zero"
            )));
        }
        let head_dim = at_most(head_dim, MAX_HEAD_DIM, "head_dim")?;
        let vocab_size = at_most(need(raw.vocab_size, "vocab_size")?, MAX_VOCAB, "vocab_size")?;
        let intermediate_size = at_most(
            need(raw.intermediate_size, "intermediate_size")?,
            MAX_INTERMEDIATE,
            "intermediate_size",
        )?;
        let num_hidden_layers = at_most(
            need(raw.num_hidden_layers, "num_hidden_layers")?,
            MAX_LAYERS,
            "num_hidden_layers",
        )?;
        let max_position_embeddings = at_most(
            need(
                Some(raw.max_position_embeddings.unwrap_or(2048)),
                "max_position_embeddings",
            )?,
            MAX_CONTEXT,
            "max_position_embeddings",
        )?;
        // Both factors are bounded above, so the product cannot overflow.
        let rope_bytes = max_position_embeddings * (head_dim / 2) * 4;
        if rope_bytes > MAX_ROPE_TABLE_BYTES {
            return Err(bad(format!(
                "max_position_embeddings ({max_position_embeddings}) × head_dim ({head_dim}) / 2 \
                 needs a {rope_bytes}-byte RoPE table; at most {MAX_ROPE_TABLE_BYTES}"
            )));
        }

        // transformers 4.x: top-level `rope_theta` and optional `rope_scaling`.
        // transformers 5.x: `rope_parameters = {"rope_type": ..., "rope_theta": ...}`.
        let mut rope_theta = raw.rope_theta;
        let mut scaling = raw.rope_scaling.filter(|v| !v.is_null());
        if let Some(params) = raw.rope_parameters.filter(|v| !v.is_null()) {
            let obj = params
                .as_object()
                .ok_or_else(|| bad("`rope_parameters` must be an object".into()))?;
            if let Some(t) = obj.get("rope_theta") {
                rope_theta =
                    Some(t.as_f64().ok_or_else(|| {
                        bad("`rope_parameters.rope_theta` must be a number".into())
                    })?);
            }
            scaling = Some(params);
        }
        if let Some(s) = scaling {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(unsupported(format!(
                    "rope scaling type `{kind}` is not implemented (only `default`); refusing rather than computing wrong positions"
                )));
            }
        }
        let rope_theta = rope_theta.unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(bad(format!("rope_theta ({rope_theta}) must be positive")));
        }
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(bad(format!(
                "rms_norm_eps ({rms_norm_eps}) must be positive"
            )));
        }

        let base_adapter = match raw.tandem_base_adapter {
            None => None,
            Some(name)
                if name.is_empty()
                    || name == "."
                    || name == ".."
                    || name.contains(['/', '\\', '\0']) =>
            {
                return Err(bad(format!(
                    "`{BASE_ADAPTER_KEY}` must be a plain directory name inside the model directory, not `{name}`"
                )));
            }
            Some(name) => Some(name),
        };

        Ok(Config {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings,
            // transformers' LlamaConfig defaults to untied embeddings.
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            eos_token_ids: token_ids(raw.eos_token_id.as_ref())
                .map_err(|e| bad(format!("eos_token_id: {e}")))?,
            bos_token_id: token_ids(raw.bos_token_id.as_ref())
                .map_err(|e| bad(format!("bos_token_id: {e}")))?
                .first()
                .copied(),
            base_adapter,
        })
    }

    /// The JSON this crate writes when saving (transformers 4.x layout, which 5.x also reads).
    pub fn to_hf_json(&self) -> Value {
        let eos: Value = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => (*one).into(),
            many => many.to_vec().into(),
        };
        let mut v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        });
        if let (Some(name), Some(obj)) = (&self.base_adapter, v.as_object_mut()) {
            obj.insert(BASE_ADAPTER_KEY.into(), name.clone().into());
        }
        v
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Input and output width of each LoRA-targetable projection.
    pub fn projection_dims(&self, module: crate::lora::Target) -> (usize, usize) {
        use crate::lora::Target;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        match module {
            Target::Q => (self.hidden_size, q),
            Target::K | Target::V => (self.hidden_size, kv),
            Target::O => (q, self.hidden_size),
            Target::Gate | Target::Up => (self.hidden_size, self.intermediate_size),
            Target::Down => (self.intermediate_size, self.hidden_size),
        }
    }

    /// Every tensor the checkpoint must contain, with the shape the config implies, in the
    /// Hugging Face `LlamaForCausalLM` naming.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        use crate::lora::Target;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, self.hidden_size],
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                vec![self.hidden_size],
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                vec![self.hidden_size],
            ));
            for t in Target::ALL {
                let (din, dout) = self.projection_dims(t);
                out.push((format!("{p}.{}.weight", t.module_path()), vec![dout, din]));
            }
        }
        out.push(("model.norm.weight".to_string(), vec![self.hidden_size]));
        if !self.tie_word_embeddings {
            out.push((
                "lm_head.weight".to_string(),
                vec![self.vocab_size, self.hidden_size],
            ));
        }
        out
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn parameter_count(&self) -> usize {
        self.expected_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// Reads a token id field that may be absent, null, an integer, or a list of integers.
fn token_ids(v: Option<&Value>) -> Result<Vec<u32>, String> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{v} is not a token id"))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, LoadError> {
        Config::from_json(s.as_bytes(), Path::new("config.json"))
    }

    const BASE: &str = r#""model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1"#;

    #[test]
    fn reads_transformers_4_and_5_rope_theta() {
        let v4 = parse(&format!("{{{BASE},\"rope_theta\":500.0}}")).expect("4.x config");
        assert_eq!(v4.rope_theta, 500.0);
        let v5 = parse(&format!(
            "{{{BASE},\"rope_parameters\":{{\"rope_type\":\"default\",\"rope_theta\":700.0}}}}"
        ))
        .expect("5.x config");
        assert_eq!(v5.rope_theta, 700.0);
        assert_eq!(v5.head_dim, 4);
        assert!(!v5.tie_word_embeddings);
    }

    #[test]
    fn refuses_unimplemented_rope_scaling() {
        for extra in [
            r#""rope_scaling":{"rope_type":"llama3","factor":8.0}"#,
            r#""rope_scaling":{"type":"linear","factor":2.0}"#,
            r#""rope_parameters":{"rope_type":"yarn","rope_theta":1.0}"#,
        ] {
            let e = parse(&format!("{{{BASE},{extra}}}")).expect_err(extra);
            assert!(matches!(e, LoadError::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains("rope scaling"), "{e}");
        }
    }

    #[test]
    fn rejects_bad_fields() {
        assert!(matches!(parse("{"), Err(LoadError::Config { .. })));
        assert!(matches!(
            parse(r#"{"model_type":"gpt2"}"#),
            Err(LoadError::Unsupported { .. })
        ));
        let e = parse(&format!("{{{BASE},\"num_key_value_heads\":3}}"));
        assert!(matches!(e, Err(LoadError::Config { .. })));
        let e = parse(&format!("{{{BASE},\"eos_token_id\":-1}}"));
        assert!(matches!(e, Err(LoadError::Config { .. })));
    }

    #[test]
    fn sizes_are_bounded_before_anything_is_allocated() {
        // The attack's value (a 12.8 TB RoPE table) and every size field past its bound.
        for (field, v) in [
            ("max_position_embeddings", 100_000_000_000u64),
            ("max_position_embeddings", (MAX_CONTEXT + 1) as u64),
            ("max_position_embeddings", u64::MAX),
            ("max_position_embeddings", 0),
            ("vocab_size", (MAX_VOCAB + 1) as u64),
            ("hidden_size", 1 << 40),
            ("intermediate_size", u64::MAX),
            ("num_hidden_layers", 1 << 20),
            ("head_dim", 4096),
        ] {
            let doc = format!("{{{BASE},\"{field}\":{v}}}");
            let e = parse(&doc).expect_err(&doc).to_string();
            assert!(e.contains(field), "{doc}: {e}");
        }
        // A long context with wide heads: the RoPE table bound.
        let doc = format!("{{{BASE},\"max_position_embeddings\":{MAX_CONTEXT},\"head_dim\":1024}}");
        let e = parse(&doc).expect_err("rope table").to_string();
        assert!(e.contains("RoPE table"), "{e}");
        // `1e11` written as a float is not an integer at all.
        let e = parse(&format!("{{{BASE},\"max_position_embeddings\":1e11}}"))
            .expect_err("float")
            .to_string();
        assert!(e.contains("max_position_embeddings"), "{e}");
        assert!(
            parse(&format!(
                "{{{BASE},\"max_position_embeddings\":{MAX_CONTEXT}}}"
            ))
            .is_ok()
        );
    }

    /// Random values in every numeric field: a clear error or a config whose derived sizes are
    /// within the documented bounds, never a panic.
    #[test]
    fn random_sizes_give_an_error_or_a_bounded_config() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let fields = [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ];
        let edges = [
            0u64,
            1,
            2,
            3,
            8,
            1023,
            1024,
            1025,
            1 << 16,
            1 << 18,
            1 << 24,
            1 << 32,
            1 << 53,
        ];
        for _ in 0..4000 {
            let mut doc = serde_json::json!({
                "model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1,
            });
            for f in fields {
                if rng.gen_bool(0.5) {
                    let v: serde_json::Value = match rng.gen_range(0..4) {
                        0 => edges[rng.gen_range(0..edges.len())].into(),
                        1 => (rng.r#gen::<u64>() >> rng.gen_range(0..64)).into(),
                        2 => (-(rng.gen_range(0..1000i64))).into(),
                        _ => (rng.r#gen::<f64>() * 1e12).into(),
                    };
                    doc[f] = v;
                }
            }
            let bytes = serde_json::to_vec(&doc).expect("json");
            if let Ok(c) = Config::from_json(&bytes, Path::new("config.json")) {
                assert!(c.max_position_embeddings <= MAX_CONTEXT, "{doc}");
                assert!(
                    c.vocab_size <= MAX_VOCAB && c.hidden_size <= MAX_HIDDEN,
                    "{doc}"
                );
                assert!(c.num_hidden_layers <= MAX_LAYERS && c.head_dim <= MAX_HEAD_DIM);
                assert!(c.num_key_value_heads <= c.num_attention_heads, "{doc}");
                assert!(c.max_position_embeddings * c.head_dim / 2 * 4 <= MAX_ROPE_TABLE_BYTES);
            }
        }
    }

    #[test]
    fn eos_ids_int_or_list() {
        let c = parse(&format!("{{{BASE},\"eos_token_id\":[2,3]}}")).expect("list");
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        let c = parse(&format!("{{{BASE},\"eos_token_id\":2}}")).expect("int");
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn hf_json_round_trips() {
        let c = parse(&format!(
            "{{{BASE},\"eos_token_id\":[2,3],\"tie_word_embeddings\":true}}"
        ))
        .expect("config");
        let bytes = serde_json::to_vec(&c.to_hf_json()).expect("json");
        assert_eq!(
            Config::from_json(&bytes, Path::new("x")).expect("reparse"),
            c
        );
    }
}
