//! Function-preserving depth growth: a deeper model initialised from a trained shallower one.
//!
//! Destination layer `d` copies source layer `d / factor`. In every copy except the first of
//! each group, the two projections that write into the residual stream (`self_attn.o_proj`,
//! `mlp.down_proj`) are zeroed, so the new block adds nothing and the grown model computes
//! exactly the source model's function at initialisation (the "identity init" of Net2Net-style
//! growth, Chen, Goodfellow & Shlens, ICLR 2016). Training then uses the extra depth.
//!
//! Tandem uses this to start the server model from the device model: both are trained on the
//! same corpus, and this machine's CPU budget does not allow training the larger model from
//! scratch for as many tokens.

use candle_core::Tensor;

use super::TrainError;
use crate::Result;

/// Grows `src` (transformers names, `src_layers` decoder layers) to `src_layers * factor`
/// layers. Non-layer tensors (embeddings, final norm) are copied unchanged.
pub fn grow_depth(
    src: &[(String, Tensor)],
    src_layers: usize,
    factor: usize,
) -> Result<Vec<(String, Tensor)>> {
    if factor == 0 || src_layers == 0 {
        return Err(TrainError::Setting(format!(
            "cannot grow {src_layers} layers by a factor of {factor}"
        ))
        .into());
    }
    let mut out = Vec::new();
    for (name, t) in src {
        let Some(rest) = name.strip_prefix("model.layers.") else {
            out.push((name.clone(), t.clone()));
            continue;
        };
        let (idx, suffix) = rest.split_once('.').ok_or_else(|| {
            TrainError::Checkpoint(format!("tensor name `{name}` has no layer suffix"))
        })?;
        let i: usize = idx.parse().map_err(|_| {
            TrainError::Checkpoint(format!("tensor name `{name}` has a bad layer index"))
        })?;
        if i >= src_layers {
            return Err(TrainError::Checkpoint(format!(
                "tensor `{name}` is beyond the {src_layers} source layers"
            ))
            .into());
        }
        for k in 0..factor {
            let d = i * factor + k;
            let zero =
                k > 0 && (suffix == "self_attn.o_proj.weight" || suffix == "mlp.down_proj.weight");
            let v = if zero { t.zeros_like()? } else { t.copy()? };
            out.push((format!("model.layers.{d}.{suffix}"), v));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_model::{Config, DType, Device, Model, VarBuilder, VarMap};

    fn cfg(layers: usize) -> Config {
        Config {
            vocab_size: 50,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: layers,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 32,
            tie_word_embeddings: true,
            eos_token_ids: vec![0],
            bos_token_id: None,
            base_adapter: None,
        }
    }

    #[test]
    fn grown_model_computes_the_same_logits() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let small = Model::new(&cfg(2), VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        // Make the residual projections non-trivial so zeroing matters.
        let grown = grow_depth(&small.named_tensors(), 2, 3)?;
        assert_eq!(
            grown
                .iter()
                .filter(|(n, _)| n.ends_with("o_proj.weight"))
                .count(),
            6
        );
        let map: std::collections::HashMap<String, Tensor> = grown.into_iter().collect();
        let big = Model::new(&cfg(6), VarBuilder::from_tensors(map, DType::F32, &dev))?;
        let ids = Tensor::new(&[[1u32, 5, 7, 9, 2]], &dev)?;
        let a = small.forward_train(&ids, None)?;
        let b = big.forward_train(&ids, None)?;
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "max diff {d}");
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let t = Tensor::zeros(2, DType::F32, &dev)?;
        assert!(grow_depth(&[], 2, 0).is_err());
        assert!(grow_depth(&[("model.layers.x.w".into(), t.clone())], 2, 2).is_err());
        assert!(grow_depth(&[("model.layers.5.w".into(), t.clone())], 2, 2).is_err());
        assert!(grow_depth(&[("model.layers.1".into(), t)], 2, 2).is_err());
        Ok(())
    }
}
