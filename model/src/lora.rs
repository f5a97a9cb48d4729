//! LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") in the
//! PEFT format: `adapter_config.json` + `adapter_model.safetensors` with keys such as
//! `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`.
//!
//! An [`Adapter`] is applied at run time (passed to each forward call), never written into the
//! base weights, unless the caller asks for a merged copy with [`crate::Model::merge_adapter`].

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::error::{AdapterError, Result};

/// The projections a LoRA adapter may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl Target {
    /// All targets, in checkpoint order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module's path inside a decoder layer.
    pub fn module_path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One low-rank update `scale · B A` for one projection.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `lora_A.weight`, `[r, in]`.
    pub a: Tensor,
    /// `lora_B.weight`, `[out, r]`.
    pub b: Tensor,
    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA (Kalajdzievski 2023).
    pub scale: f64,
}

/// The updates of one decoder layer (absent where the adapter does not target a projection).
#[derive(Debug, Clone, Default)]
pub struct LayerAdapter {
    slots: [Option<LoraPair>; 7],
}

impl LayerAdapter {
    /// The update for projection `t`, if targeted.
    pub fn get(&self, t: Target) -> Option<&LoraPair> {
        self.slots[t.index()].as_ref()
    }
}

/// The parsed `adapter_config.json` (only what inference needs; other keys are ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// Targeted module names (suffix match), or a regex (full match) when given as a string.
    pub target_modules: TargetModules,
    /// Layers to adapt; `None` means all.
    pub layers_to_transform: Option<Vec<usize>>,
    /// Per-module rank overrides: PEFT pattern → rank.
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides: PEFT pattern → alpha.
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// `base_model_name_or_path`, informational.
    pub base_model: Option<String>,
}

/// PEFT's `target_modules`.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// A list of names; a module matches if its name equals one or ends with `.` + one.
    List(Vec<String>),
    /// A regular expression the whole module name must match.
    Regex(String),
}

impl AdapterConfig {
    /// A config targeting `targets` on all layers with rank `r` and alpha `alpha`.
    pub fn new(r: usize, lora_alpha: f64, targets: &[Target]) -> Self {
        AdapterConfig {
            r,
            lora_alpha,
            target_modules: TargetModules::List(
                targets
                    .iter()
                    .map(|t| t.module_path().rsplit('.').next().unwrap_or("").to_string())
                    .collect(),
            ),
            layers_to_transform: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_rslora: false,
            base_model: None,
        }
    }

    /// Parses `adapter_config.json` bytes (`path` for messages only).
    pub fn from_json(bytes: &[u8], path: &Path) -> std::result::Result<Self, AdapterError> {
        let bad = |reason: String| AdapterError::Config {
            path: path.to_owned(),
            reason,
        };
        let unsupported = |reason: String| AdapterError::Unsupported {
            path: path.to_owned(),
            reason,
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("top level must be an object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());

        if let Some(t) = get("peft_type").and_then(Value::as_str)
            && t != "LORA"
        {
            return Err(unsupported(format!(
                "peft_type `{t}`; only LORA is supported"
            )));
        }
        if get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported("use_dora (DoRA) is not implemented".into()));
        }
        if get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                "fan_in_fan_out is not used by Llama projections".into(),
            ));
        }
        if let Some(b) = get("bias").and_then(Value::as_str)
            && b != "none"
        {
            return Err(unsupported(format!("bias `{b}`; only `none` is supported")));
        }
        if get("modules_to_save").is_some_and(|m| m.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(unsupported(
                "modules_to_save (fully fine-tuned extra modules) is not supported".into(),
            ));
        }

        for key in [
            "exclude_modules",
            "layer_replication",
            "target_parameters",
            "trainable_token_indices",
            "alora_invocation_tokens",
        ] {
            if get(key).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
                return Err(unsupported(format!("`{key}` is not supported")));
            }
        }
        if get("lora_bias").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported("lora_bias is not supported".into()));
        }

        let uint = |v: &Value, what: &str| {
            v.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| bad(format!("{what}: {v} is not a non-negative integer")))
        };
        let num = |v: &Value, what: &str| {
            v.as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(format!("{what}: {v} is not a number")))
        };
        let r = match get("r") {
            Some(v) => uint(v, "r")?,
            None => 8,
        };
        let lora_alpha = match get("lora_alpha") {
            Some(v) => num(v, "lora_alpha")?,
            None => 8.0,
        };
        let target_modules = match get("target_modules") {
            Some(Value::String(s)) => {
                Regex::new(&format!("^(?:{s})$"))
                    .map_err(|e| bad(format!("target_modules regex: {e}")))?;
                TargetModules::Regex(s.clone())
            }
            Some(Value::Array(items)) => TargetModules::List(
                items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad("target_modules entries must be strings".into()))
                    })
                    .collect::<std::result::Result<_, _>>()?,
            ),
            _ => return Err(bad("missing `target_modules`".into())),
        };
        let layers_to_transform = match get("layers_to_transform") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|i| uint(i, "layers_to_transform"))
                    .collect::<std::result::Result<_, _>>()?,
            ),
            Some(v) => Some(vec![uint(v, "layers_to_transform")?]),
        };
        let mut rank_pattern = BTreeMap::new();
        if let Some(m) = get("rank_pattern").and_then(Value::as_object) {
            for (k, v) in m {
                pattern_regex(k).map_err(|e| bad(format!("rank_pattern key `{k}`: {e}")))?;
                rank_pattern.insert(k.clone(), uint(v, "rank_pattern")?);
            }
        }
        let mut alpha_pattern = BTreeMap::new();
        if let Some(m) = get("alpha_pattern").and_then(Value::as_object) {
            for (k, v) in m {
                pattern_regex(k).map_err(|e| bad(format!("alpha_pattern key `{k}`: {e}")))?;
                alpha_pattern.insert(k.clone(), num(v, "alpha_pattern")?);
            }
        }
        Ok(AdapterConfig {
            r,
            lora_alpha,
            target_modules,
            layers_to_transform,
            rank_pattern,
            alpha_pattern,
            use_rslora: get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
            base_model: get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// PEFT `adapter_config.json` for this config.
    pub fn to_peft_json(&self) -> Value {
        let targets = match &self.target_modules {
            TargetModules::List(l) => Value::from(l.clone()),
            TargetModules::Regex(s) => Value::from(s.clone()),
        };
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": 0.0,
            "target_modules": targets,
            "layers_to_transform": self.layers_to_transform,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "bias": "none",
            "fan_in_fan_out": false,
            "modules_to_save": null,
        })
    }

    /// Whether `module` (e.g. `model.layers.3.self_attn.q_proj`) of layer `layer` is adapted.
    pub fn targets(&self, layer: usize, module: &str) -> bool {
        if let Some(layers) = &self.layers_to_transform
            && !layers.contains(&layer)
        {
            return false;
        }
        match &self.target_modules {
            TargetModules::List(names) => names
                .iter()
                .any(|n| n == "all-linear" || module == n || module.ends_with(&format!(".{n}"))),
            TargetModules::Regex(s) => {
                Regex::new(&format!("^(?:{s})$")).is_ok_and(|re| re.is_match(module))
            }
        }
    }

    /// Rank and scale of `module`, after `rank_pattern` / `alpha_pattern` (PEFT ≥ 0.14 matching:
    /// a pattern matches a module name that equals it or ends with `.` + it, as a regex).
    pub fn rank_and_scale(&self, module: &str) -> (usize, f64) {
        let pick = |keys: Vec<&String>| {
            keys.into_iter()
                .find(|k| pattern_regex(k).is_ok_and(|re| re.is_match(module)))
                .cloned()
        };
        let r = pick(self.rank_pattern.keys().collect())
            .and_then(|k| self.rank_pattern.get(&k).copied())
            .unwrap_or(self.r);
        let alpha = pick(self.alpha_pattern.keys().collect())
            .and_then(|k| self.alpha_pattern.get(&k).copied())
            .unwrap_or(self.lora_alpha);
        let scale = if r == 0 {
            0.0
        } else if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        (r, scale)
    }
}

fn pattern_regex(key: &str) -> std::result::Result<Regex, regex::Error> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
}

/// The PEFT tensor name prefix of layer `i`'s module `t` (append `.lora_A.weight` / `.lora_B.weight`).
pub fn peft_prefix(layer: usize, t: Target) -> String {
    format!("base_model.model.model.layers.{layer}.{}", t.module_path())
}

/// A loaded or freshly built LoRA adapter for one base architecture.
#[derive(Debug, Clone)]
pub struct Adapter {
    config: AdapterConfig,
    layers: Vec<LayerAdapter>,
    bytes: usize,
}

impl Adapter {
    /// Builds an adapter from a `VarBuilder` with PEFT names. With a `VarMap`-backed builder the
    /// A matrices start Kaiming-uniform and B at zero (PEFT's init: the adapter starts as a
    /// no-op), trainable while the base stays frozen. With a tensor-backed builder the tensors
    /// must already have been validated (see [`Adapter::expected_tensors`]).
    pub fn new(config: AdapterConfig, base: &Config, vb: VarBuilder) -> Result<Self> {
        let mut layers = vec![LayerAdapter::default(); base.num_hidden_layers];
        let mut bytes = 0;
        for (i, layer) in layers.iter_mut().enumerate() {
            for t in Target::ALL {
                let module = format!("model.layers.{i}.{}", t.module_path());
                if !config.targets(i, &module) {
                    continue;
                }
                let (r, scale) = config.rank_and_scale(&module);
                let (din, dout) = base.projection_dims(t);
                let p = vb
                    .pp("base_model.model.model.layers")
                    .pp(i)
                    .pp(t.module_path());
                let a = p.pp("lora_A").get_with_hints(
                    (r, din),
                    "weight",
                    // PEFT: kaiming_uniform_(a=sqrt(5)) → U(-1/sqrt(in), 1/sqrt(in)).
                    Init::Uniform {
                        lo: -1.0 / (din as f64).sqrt(),
                        up: 1.0 / (din as f64).sqrt(),
                    },
                )?;
                let b = p
                    .pp("lora_B")
                    .get_with_hints((dout, r), "weight", Init::Const(0.0))?;
                bytes += (a.elem_count() + b.elem_count()) * a.dtype().size_in_bytes();
                layer.slots[t.index()] = Some(LoraPair { a, b, scale });
            }
        }
        Ok(Adapter {
            config,
            layers,
            bytes,
        })
    }

    /// Every tensor `config` requires on `base`, with its shape.
    pub fn expected_tensors(config: &AdapterConfig, base: &Config) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for i in 0..base.num_hidden_layers {
            for t in Target::ALL {
                let module = format!("model.layers.{i}.{}", t.module_path());
                if !config.targets(i, &module) {
                    continue;
                }
                let (r, _) = config.rank_and_scale(&module);
                let (din, dout) = base.projection_dims(t);
                let p = peft_prefix(i, t);
                out.push((format!("{p}.lora_A.weight"), vec![r, din]));
                out.push((format!("{p}.lora_B.weight"), vec![dout, r]));
            }
        }
        out
    }

    /// The adapter's configuration.
    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    /// Updates of decoder layer `i` (empty for layers the adapter does not touch).
    pub fn layer(&self, i: usize) -> &LayerAdapter {
        static EMPTY: LayerAdapter = LayerAdapter {
            slots: [None, None, None, None, None, None, None],
        };
        self.layers.get(i).unwrap_or(&EMPTY)
    }

    /// Bytes of the adapter's tensors in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of adapted projections.
    pub fn adapted_modules(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.slots.iter().flatten().count())
            .sum()
    }

    /// Every LoRA tensor with its PEFT name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = l.get(t) {
                    let pre = peft_prefix(i, t);
                    out.push((format!("{pre}.lora_A.weight"), p.a.clone()));
                    out.push((format!("{pre}.lora_B.weight"), p.b.clone()));
                }
            }
        }
        out
    }

    /// Checks the adapter's shapes against a base architecture.
    pub fn check_fits(&self, base: &Config) -> std::result::Result<(), AdapterError> {
        for (i, l) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = l.get(t) {
                    let (din, dout) = base.projection_dims(t);
                    let pre = peft_prefix(i, t);
                    let (r, ain) = p.a.dims2().unwrap_or((0, 0));
                    if ain != din || i >= base.num_hidden_layers {
                        return Err(AdapterError::BaseMismatch {
                            name: format!("{pre}.lora_A.weight"),
                            expected: vec![r, din],
                            actual: p.a.dims().to_vec(),
                        });
                    }
                    if p.b.dims() != [dout, r] {
                        return Err(AdapterError::BaseMismatch {
                            name: format!("{pre}.lora_B.weight"),
                            expected: vec![dout, r],
                            actual: p.b.dims().to_vec(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> std::result::Result<AdapterConfig, AdapterError> {
        AdapterConfig::from_json(s.as_bytes(), Path::new("adapter_config.json"))
    }

    #[test]
    fn targets_layers_and_patterns() {
        let c = cfg(r#"{"peft_type":"LORA","r":4,"lora_alpha":8,
            "target_modules":["q_proj","down_proj"],"layers_to_transform":[1],
            "rank_pattern":{"down_proj":2},"alpha_pattern":{"layers.1.self_attn.q_proj":16}}"#)
        .expect("config");
        assert!(c.targets(1, "model.layers.1.self_attn.q_proj"));
        assert!(!c.targets(0, "model.layers.0.self_attn.q_proj"));
        assert!(!c.targets(1, "model.layers.1.self_attn.k_proj"));
        assert_eq!(c.rank_and_scale("model.layers.1.mlp.down_proj"), (2, 4.0));
        assert_eq!(
            c.rank_and_scale("model.layers.1.self_attn.q_proj"),
            (4, 4.0)
        );
        assert_eq!(
            c.rank_and_scale("model.layers.1.self_attn.v_proj"),
            (4, 2.0)
        );
    }

    #[test]
    fn regex_targets_and_rslora() {
        let c = cfg(r#"{"r":16,"lora_alpha":8,"use_rslora":true,
            "target_modules":".*\\.(q|v)_proj","layers_to_transform":0}"#)
        .expect("config");
        assert!(c.targets(0, "model.layers.0.self_attn.v_proj"));
        assert!(!c.targets(0, "model.layers.0.self_attn.k_proj"));
        assert!(!c.targets(1, "model.layers.1.self_attn.v_proj"));
        assert_eq!(c.rank_and_scale("x").1, 2.0);
    }

    #[test]
    fn refuses_unsupported_features() {
        for bad in [
            r#"{"target_modules":["q_proj"],"use_dora":true}"#,
            r#"{"target_modules":["q_proj"],"bias":"all"}"#,
            r#"{"target_modules":["q_proj"],"modules_to_save":["lm_head"]}"#,
            r#"{"target_modules":["q_proj"],"peft_type":"IA3"}"#,
        ] {
            assert!(
                matches!(cfg(bad), Err(AdapterError::Unsupported { .. })),
                "{bad}"
            );
        }
        for bad in [
            r#"{"r":4}"#,
            "[]",
            "{",
            r#"{"target_modules":["q"],"r":-1}"#,
        ] {
            assert!(
                matches!(cfg(bad), Err(AdapterError::Config { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn peft_json_round_trips() {
        let mut c = AdapterConfig::new(4, 8.0, &[Target::Q, Target::Down]);
        c.layers_to_transform = Some(vec![0, 1]);
        c.rank_pattern.insert("q_proj".into(), 2);
        let bytes = serde_json::to_vec(&c.to_peft_json()).expect("json");
        assert_eq!(
            AdapterConfig::from_json(&bytes, Path::new("x")).expect("parse"),
            c
        );
    }
}
