//! Streaming text generation: prefill the prompt, then sample one token at a time from the
//! KV cache, handing text deltas (never a split UTF-8 character) to a callback as they appear.

use std::ops::ControlFlow;

use crate::error::{Result, UsageError};
use crate::llama::{Cache, Model};
use crate::lora::Adapter;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most new tokens to produce.
    pub max_tokens: usize,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Stop when the text contains one of these (the stop string is not returned).
    pub stop_strings: Vec<String>,
    /// Stop on these token ids; `None` uses the config's `eos_token_id`.
    pub eos_token_ids: Option<Vec<u32>>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 64,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            eos_token_ids: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was sampled.
    Eos,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` reached, or the model's context is full.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

impl FinishReason {
    /// Short name for JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::StopString => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text (stop string excluded).
    pub text: String,
    /// The generated token ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish: FinishReason,
}

/// Holds back text that might be the beginning of a stop string.
struct StopFilter<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
}

impl StopFilter<'_> {
    /// Appends `delta`; returns the text now safe to emit and whether a stop string was hit.
    fn push(&mut self, delta: &str) -> (String, bool) {
        self.text.push_str(delta);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                self.text[self.emitted.min(self.text.len())..]
                    .find(s.as_str())
                    .map(|i| i + self.emitted)
            })
            .min();
        if let Some(at) = hit {
            let at = at.max(self.emitted);
            let out = self.text[self.emitted..at].to_string();
            self.text.truncate(at);
            self.emitted = at;
            return (out, true);
        }
        // Longest suffix of the text that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let safe = (self.text.len() - hold).max(self.emitted);
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

impl Model {
    /// Generates a continuation of `prompt` (token ids), calling `on_text` with each new piece
    /// of text; returning `ControlFlow::Break` from it stops generation.
    pub fn generate(
        &self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        adapter: Option<&Adapter>,
        params: &GenerateParams,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        self.generate_with_tokens(tokenizer, prompt, adapter, params, |text, _| on_text(text))
    }

    /// Like [`Model::generate`], but the callback also receives the ids of the tokens generated
    /// since its previous call (the ones that produced `text`; a final call with empty text
    /// hands over tokens whose text was held back or cut by a stop string). Concatenating every
    /// call's ids gives [`Generation::tokens`].
    pub fn generate_with_tokens(
        &self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        adapter: Option<&Adapter>,
        params: &GenerateParams,
        mut on_text: impl FnMut(&str, &[u32]) -> ControlFlow<()>,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(UsageError::Empty("the prompt has no tokens").into());
        }
        let max_ctx = self.config().max_position_embeddings;
        if prompt.len() >= max_ctx {
            return Err(UsageError::CacheFull {
                used: 0,
                capacity: max_ctx,
                requested: prompt.len() + 1,
            }
            .into());
        }
        let eos = params
            .eos_token_ids
            .clone()
            .unwrap_or_else(|| self.config().eos_token_ids.clone());
        let mut sampler = Sampler::new(params.sampling.clone())?;
        let capacity = (prompt.len() + params.max_tokens).min(max_ctx);
        let mut cache = Cache::new(self, 1, capacity)?;
        let mut decoder = StreamDecoder::new(tokenizer);
        let mut stop = StopFilter {
            stops: &params.stop_strings,
            text: String::new(),
            emitted: 0,
        };
        let mut context = prompt.to_vec();
        let mut generated = Vec::new();
        let mut input = self.tokens_tensor(prompt)?;
        let mut finish = FinishReason::Length;
        let mut pending: Vec<u32> = Vec::new();
        let mut emit =
            |piece: &str, stop: &mut StopFilter, pending: &mut Vec<u32>| -> (bool, bool) {
                let (out, hit) = stop.push(piece);
                let cancelled = !out.is_empty() && {
                    let flow = on_text(&out, pending);
                    pending.clear();
                    flow.is_break()
                };
                (hit, cancelled)
            };
        while generated.len() < params.max_tokens && cache.len() < capacity {
            let logits = self
                .forward_last(&input, adapter, &mut cache)?
                .squeeze(0)?
                .to_vec1::<f32>()?;
            let next = sampler.sample(&logits, &context)?;
            if eos.contains(&next) {
                finish = FinishReason::Eos;
                break;
            }
            generated.push(next);
            context.push(next);
            pending.push(next);
            if let Some(piece) = decoder.push(next)? {
                let (hit, cancelled) = emit(&piece, &mut stop, &mut pending);
                if hit {
                    finish = FinishReason::StopString;
                    break;
                }
                if cancelled {
                    finish = FinishReason::Cancelled;
                    break;
                }
            }
            input = self.tokens_tensor(&[next])?;
        }
        if finish != FinishReason::StopString && finish != FinishReason::Cancelled {
            if let Some(rest) = decoder.finish()? {
                let (hit, _) = emit(&rest, &mut stop, &mut pending);
                if hit {
                    finish = FinishReason::StopString;
                }
            }
            let rest = stop.flush();
            if !rest.is_empty() {
                let _ = on_text(&rest, &pending);
                pending.clear();
            }
        }
        if !pending.is_empty() {
            let _ = on_text("", &pending);
        }
        Ok(Generation {
            text: stop.text,
            tokens: generated,
            prompt_tokens: prompt.len(),
            finish,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_filter_holds_back_possible_prefixes() {
        let stops = vec!["END".to_string()];
        let mut f = StopFilter {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
        assert_eq!(f.push("abcE"), ("abc".to_string(), false));
        assert_eq!(f.push("x"), ("Ex".to_string(), false));
        assert_eq!(f.push("yEN"), ("y".to_string(), false));
        assert_eq!(f.push("Dzz"), (String::new(), true));
        assert_eq!(f.text, "abcExy");
        let mut f = StopFilter {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
        assert_eq!(f.push("éE"), ("é".to_string(), false));
        assert_eq!(f.flush(), "E");
    }
}
