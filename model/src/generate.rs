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
        on_text: impl FnMut(&str, &[u32]) -> ControlFlow<()>,
    ) -> Result<Generation> {
        self.generate_speculative(tokenizer, prompt, adapter, params, None, on_text)
            .map(|(g, _)| g)
    }

    /// Like [`Model::generate_with_tokens`], with prompt-lookup speculative decoding when
    /// `speculate` is given and sampling is greedy (see [`PromptLookup`]); also returns how many
    /// tokens were proposed and accepted. Sampled requests decode one token at a time, so their
    /// distribution is untouched.
    pub fn generate_speculative(
        &self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        adapter: Option<&Adapter>,
        params: &GenerateParams,
        speculate: Option<PromptLookup>,
        mut on_text: impl FnMut(&str, &[u32]) -> ControlFlow<()>,
    ) -> Result<(Generation, SpeculationStats)> {
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
        let speculate = speculate
            .filter(|s| params.sampling.temperature == 0.0 && s.ngram > 0 && s.max_draft > 0);
        let mut stats = SpeculationStats::default();
        let eos = params
            .eos_token_ids
            .clone()
            .unwrap_or_else(|| self.config().eos_token_ids.clone());
        let mut sampler = Sampler::new(params.sampling.clone())?;
        let capacity = (prompt.len() + params.max_tokens).min(max_ctx);
        let mut cache = Cache::new(self, 1, capacity)?;
        let mut out = Output {
            eos: &eos,
            decoder: StreamDecoder::new(tokenizer),
            stop: StopFilter {
                stops: &params.stop_strings,
                text: String::new(),
                emitted: 0,
            },
            context: prompt.to_vec(),
            generated: Vec::new(),
            pending: Vec::new(),
        };
        let mut finish = FinishReason::Length;
        // Consecutive drafts with nothing accepted (at most 4), and steps left without drafting.
        let (mut misses, mut pause) = (0u32, 0usize);
        if params.max_tokens > 0 {
            // Logits for the token after everything in the cache.
            let mut logits = self
                .forward_last(&self.tokens_tensor(prompt)?, adapter, &mut cache)?
                .squeeze(0)?
                .to_vec1::<f32>()?;
            'decode: loop {
                let next = sampler.sample(&logits, &out.context)?;
                if let Some(f) = out.take(next, &mut on_text)? {
                    finish = f;
                    break;
                }
                if out.generated.len() >= params.max_tokens || cache.len() >= capacity {
                    break;
                }
                // Prompt lookup: tokens that followed the latest earlier occurrence of the
                // context's last n-gram, verified together with `next` in one forward pass.
                let room =
                    (capacity - cache.len() - 1).min(params.max_tokens - out.generated.len());
                // After a draft with nothing accepted, drafting pauses for 1, 3, 7, then 15
                // steps: where lookups keep missing (open-ended text), each rejected draft
                // would still widen the forward pass.
                let draft: Vec<u32> = match speculate {
                    Some(s) if pause == 0 => {
                        propose(&out.context, s.min_ngram..=s.ngram, s.max_draft.min(room)).to_vec()
                    }
                    _ => Vec::new(),
                };
                pause = pause.saturating_sub(1);
                let mut ids = Vec::with_capacity(draft.len() + 1);
                ids.push(next);
                ids.extend_from_slice(&draft);
                let base = cache.len();
                let rows = self
                    .forward(&self.tokens_tensor(&ids)?, adapter, &mut cache)?
                    .squeeze(0)?
                    .to_vec2::<f32>()?;
                stats.proposed += draft.len();
                // Greedy verification: row i holds the logits after `next, draft[..i]`; a draft
                // token stands only where greedy decoding would have picked it.
                let mut accepted = 0;
                for (i, &d) in draft.iter().enumerate() {
                    if sampler.sample(&rows[i], &out.context)? != d {
                        break;
                    }
                    accepted += 1;
                    stats.accepted += 1;
                    if let Some(f) = out.take(d, &mut on_text)? {
                        finish = f;
                        break 'decode;
                    }
                    if out.generated.len() >= params.max_tokens {
                        break 'decode;
                    }
                }
                if !draft.is_empty() {
                    if accepted == 0 {
                        misses = (misses + 1).min(4);
                        pause = (1 << misses) - 1;
                    } else {
                        misses = 0;
                    }
                }
                cache.truncate(base + 1 + accepted);
                logits = rows.into_iter().nth(accepted).unwrap_or_default();
            }
        }
        let Output {
            mut decoder,
            mut stop,
            generated,
            mut pending,
            ..
        } = out;
        if finish != FinishReason::StopString && finish != FinishReason::Cancelled {
            if let Some(rest) = decoder.finish()? {
                let (piece, hit) = stop.push(&rest);
                if !piece.is_empty() {
                    let _ = on_text(&piece, &pending);
                    pending.clear();
                }
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
        Ok((
            Generation {
                text: stop.text,
                tokens: generated,
                prompt_tokens: prompt.len(),
                finish,
            },
            stats,
        ))
    }
}

/// Prompt-lookup speculative decoding (Saxena 2023's "prompt lookup decoding"; the seed's
/// speculative decoding without a draft model): after each token, the last `ngram` tokens of
/// the context (prompt and output so far; shorter n-grams down to 1 when the longest does not
/// occur, down to `min_ngram`) are looked up at their latest earlier occurrence, and the up to `max_draft` tokens
/// that followed it are proposed. They are verified in the same forward pass as the token just
/// picked, and the longest prefix that greedy decoding would also have picked is kept; the KV
/// cache drops the rest. A draft of which nothing is kept pauses drafting for 1, 3, 7, then 15
/// steps, until one is accepted again.
///
/// Only greedy requests speculate: a sampled request decodes one token at a time, so its
/// sampling distribution is exactly that of plain decoding. Greedy output equals plain greedy
/// decoding up to floating-point reassociation (a pass over several tokens sums in another
/// order than one token at a time; checked on the real model by `tests/real_model.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLookup {
    /// Longest suffix of the context to look up (n-gram size).
    pub ngram: usize,
    /// Shortest suffix looked up: a match of a single token proposes noise more often than not.
    pub min_ngram: usize,
    /// Most tokens proposed per step.
    pub max_draft: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        PromptLookup {
            ngram: 3,
            min_ngram: 2,
            max_draft: 8,
        }
    }
}

/// Draft tokens (how many were proposed and kept) of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    /// Tokens proposed by prompt lookup.
    pub proposed: usize,
    /// Of those, tokens greedy decoding also picked.
    pub accepted: usize,
}

/// The tokens that followed the latest earlier occurrence of `context`'s last `n`-gram, for the
/// largest `n` in `ngrams` that occurs, at most `max_draft` of them; empty if none.
pub fn propose(
    context: &[u32],
    ngrams: std::ops::RangeInclusive<usize>,
    max_draft: usize,
) -> &[u32] {
    let len = context.len();
    if max_draft == 0 {
        return &[];
    }
    let shortest = (*ngrams.start()).max(1);
    let longest = (*ngrams.end()).min(len.saturating_sub(1));
    for n in (shortest..=longest).rev() {
        let suffix = &context[len - n..];
        // Latest start before the suffix itself.
        for start in (0..len - n).rev() {
            if &context[start..start + n] == suffix {
                let from = start + n;
                return &context[from..(from + max_draft).min(len)];
            }
        }
    }
    &[]
}

/// The generated tokens and what has been handed to the caller.
struct Output<'a, 't> {
    eos: &'a [u32],
    decoder: StreamDecoder<'t>,
    stop: StopFilter<'a>,
    context: Vec<u32>,
    generated: Vec<u32>,
    /// Ids whose text has not been handed over yet.
    pending: Vec<u32>,
}

impl Output<'_, '_> {
    /// Takes one picked token: end of sequence, or appended and its text (if complete) handed
    /// to `on_text`. Returns why generation ends, if it does.
    fn take(
        &mut self,
        next: u32,
        on_text: &mut impl FnMut(&str, &[u32]) -> ControlFlow<()>,
    ) -> Result<Option<FinishReason>> {
        if self.eos.contains(&next) {
            return Ok(Some(FinishReason::Eos));
        }
        self.generated.push(next);
        self.context.push(next);
        self.pending.push(next);
        if let Some(piece) = self.decoder.push(next)? {
            let (out, hit) = self.stop.push(&piece);
            if hit {
                // The text before the stop string still goes out.
                if !out.is_empty() {
                    let _ = on_text(&out, &self.pending);
                    self.pending.clear();
                }
                return Ok(Some(FinishReason::StopString));
            }
            if !out.is_empty() {
                let flow = on_text(&out, &self.pending);
                self.pending.clear();
                if flow.is_break() {
                    return Ok(Some(FinishReason::Cancelled));
                }
            }
        }
        Ok(None)
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
