//! The local engine: the device model and its adapters, loaded once, generating on a blocking
//! thread. Nothing here does network I/O.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use tandem_model::{
    DType, Device, GenerateParams, Generation, LoadedAdapter, LoadedModel, SamplingParams,
    load_adapter, load_model,
};

use crate::error::Error;
use crate::models::ModelPin;

/// Compute dtype on both sides of Tandem (the node uses the same), so greedy decoding gives the
/// same tokens locally and remotely.
pub const COMPUTE_DTYPE: DType = DType::F32;

/// The device model with every installed adapter.
#[derive(Debug)]
pub struct LocalEngine {
    model: LoadedModel,
    adapters: BTreeMap<String, LoadedAdapter>,
}

/// Sampling settings shared by the local and remote paths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Most new tokens.
    pub max_new_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus threshold; `None` = off.
    pub top_p: Option<f32>,
    /// Seed.
    pub seed: u64,
}

impl Sampling {
    /// The model stack's parameters for these settings (identical on the node).
    pub fn params(&self) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_new_tokens as usize,
            sampling: SamplingParams {
                temperature: f64::from(self.temperature),
                top_p: self.top_p.map(f64::from),
                seed: self.seed,
                ..SamplingParams::default()
            },
            stop_strings: Vec::new(),
            eos_token_ids: None,
        }
    }
}

impl LocalEngine {
    /// Loads the pinned device model and its adapters, and checks the files still match the
    /// pin (they were hashed when the client started).
    pub fn load(pin: &ModelPin) -> Result<LocalEngine, Error> {
        let dev = Device::Cpu;
        let model = load_model(&pin.dir, COMPUTE_DTYPE, &dev)?;
        if model.digest != pin.digest {
            return Err(Error::ModelChanged(format!(
                "model files in {} changed since they were pinned ({} now, {} pinned); restart the client",
                pin.dir.display(),
                model.digest,
                pin.digest
            )));
        }
        let mut adapters = BTreeMap::new();
        for (name, a) in &pin.adapters {
            adapters.insert(
                name.clone(),
                load_adapter(&a.dir, model.model.config(), COMPUTE_DTYPE, &dev)?,
            );
        }
        Ok(LocalEngine { model, adapters })
    }

    /// Prompt length in tokens.
    pub fn count_tokens(&self, prompt: &str) -> tandem_model::Result<usize> {
        Ok(self.model.tokenizer.encode(prompt)?.len())
    }

    /// Generates, handing each text delta and its token ids to `on_delta` (return
    /// `ControlFlow::Break` to cancel).
    pub fn generate(
        &self,
        prompt: &str,
        adapter: Option<&str>,
        sampling: &Sampling,
        on_delta: impl FnMut(&str, &[u32]) -> ControlFlow<()>,
    ) -> Result<Generation, Error> {
        let ids = self.model.tokenizer.encode(prompt)?;
        let a = match adapter {
            None => None,
            Some(n) => Some(
                &self
                    .adapters
                    .get(n)
                    .ok_or_else(|| Error::Route(format!("adapter `{n}` is not installed locally")))?
                    .adapter,
            ),
        };
        Ok(self.model.model.generate_with_tokens(
            &self.model.tokenizer,
            &ids,
            a,
            &sampling.params(),
            on_delta,
        )?)
    }
}
