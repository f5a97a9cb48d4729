//! Turning a corpus into training batches.
//!
//! The corpus text is a sequence of documents separated by lines holding exactly
//! [`DOC_SEPARATOR`]. Each document is tokenized and followed by the end-of-text token, and all of
//! them are concatenated into one token stream. A training batch is `batch` windows of
//! `seq_len + 1` tokens at offsets drawn from the stream with [`SplitMix64::derive`]`(seed,
//! "batch", step)`: the batch for a step depends on nothing else, so a resumed run sees the same
//! batches as an uninterrupted one.

use candle_core::{Device, Tensor};

use super::TrainError;
use super::rng::SplitMix64;
use crate::Result;

/// Line that separates documents in corpus files (also the tokenizer's end-of-text token).
pub const DOC_SEPARATOR: &str = "<|endoftext|>";

/// Splits corpus text into documents (non-empty, trimmed of the separator lines).
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end_matches(['\n', '\r']) == DOC_SEPARATOR {
            docs.push(&text[start..pos]);
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .map(|d| d.trim_matches('\n'))
        .filter(|d| !d.trim().is_empty())
        .collect()
}

/// A tokenized corpus: documents concatenated, each followed by the end-of-text id.
#[derive(Debug, Clone)]
pub struct TokenStream {
    tokens: Vec<u32>,
}

impl TokenStream {
    /// Wraps already-tokenized documents, appending `eos` after each.
    pub fn from_documents(docs: impl IntoIterator<Item = Vec<u32>>, eos: u32) -> Self {
        let mut tokens = Vec::new();
        for d in docs {
            tokens.extend_from_slice(&d);
            tokens.push(eos);
        }
        Self { tokens }
    }

    /// Wraps a raw token stream (e.g. one read back from a cache file).
    pub fn from_tokens(tokens: Vec<u32>) -> Self {
        Self { tokens }
    }

    /// The tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Little-endian u16 encoding (the cache format; every id must be < 65536).
    pub fn to_u16_le(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.tokens.len() * 2);
        for &t in &self.tokens {
            let t = u16::try_from(t).map_err(|_| {
                TrainError::Data(format!(
                    "token id {t} does not fit the u16 cache format; use a vocabulary below 65536"
                ))
            })?;
            out.extend_from_slice(&t.to_le_bytes());
        }
        Ok(out)
    }

    /// Decodes the u16 cache format; `vocab` bounds every id.
    pub fn from_u16_le(bytes: &[u8], vocab: usize) -> Result<Self> {
        if !bytes.len().is_multiple_of(2) {
            return Err(TrainError::Data(format!(
                "token cache has odd length {}; delete it so it is rebuilt",
                bytes.len()
            ))
            .into());
        }
        let mut tokens = Vec::with_capacity(bytes.len() / 2);
        for c in bytes.chunks_exact(2) {
            let t = u32::from(u16::from_le_bytes([c[0], c[1]]));
            if t as usize >= vocab {
                return Err(TrainError::Data(format!(
                    "token cache holds id {t} but the vocabulary has {vocab}; delete the cache so it is rebuilt"
                )).into());
            }
            tokens.push(t);
        }
        Ok(Self { tokens })
    }

    /// The `(inputs, targets)` batch for optimizer step `step`: two `(batch, seq_len)` u32
    /// tensors, targets shifted one token to the left.
    pub fn batch(
        &self,
        seed: u64,
        step: u64,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let window = seq_len + 1;
        if self.tokens.len() < window {
            return Err(TrainError::Data(format!(
                "corpus has {} tokens, fewer than one window of {window}",
                self.tokens.len()
            ))
            .into());
        }
        let mut rng = SplitMix64::derive(seed, "batch", step);
        let span = (self.tokens.len() - window + 1) as u64;
        let mut inputs = Vec::with_capacity(batch * seq_len);
        let mut targets = Vec::with_capacity(batch * seq_len);
        for _ in 0..batch {
            let off = rng.below(span) as usize;
            let w = &self.tokens[off..off + window];
            inputs.extend_from_slice(&w[..seq_len]);
            targets.extend_from_slice(&w[1..]);
        }
        let x = Tensor::from_vec(inputs, (batch, seq_len), device)?;
        let y = Tensor::from_vec(targets, (batch, seq_len), device)?;
        Ok((x, y))
    }

    /// Non-overlapping evaluation windows of `seq_len + 1` tokens (the last partial window is
    /// dropped), at most `max_windows` of them, evenly spread over the stream so a small slice
    /// still covers every source.
    pub fn eval_windows(&self, seq_len: usize, max_windows: usize) -> Vec<&[u32]> {
        let window = seq_len + 1;
        let n = self.tokens.len() / window;
        if n == 0 || max_windows == 0 {
            return Vec::new();
        }
        let take = n.min(max_windows);
        (0..take)
            .map(|i| {
                let idx = i * n / take;
                &self.tokens[idx * window..(idx + 1) * window]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_on_separator_lines_only() {
        let text = "a b\n<|endoftext|>\nc <|endoftext|> d\n<|endoftext|>\n\n<|endoftext|>\ne\n";
        assert_eq!(split_documents(text), vec!["a b", "c <|endoftext|> d", "e"]);
        assert_eq!(split_documents(""), Vec::<&str>::new());
    }

    #[test]
    fn batches_are_shifted_deterministic_and_vary_by_step() -> Result<()> {
        let s = TokenStream::from_tokens((0..1000).collect());
        let dev = Device::Cpu;
        let (x, y) = s.batch(1, 5, 3, 8, &dev)?;
        let xv = x.to_vec2::<u32>()?;
        let yv = y.to_vec2::<u32>()?;
        for (a, b) in xv.iter().zip(&yv) {
            for k in 0..8 {
                assert_eq!(a[k] + 1, b[k]);
            }
        }
        let (x2, _) = s.batch(1, 5, 3, 8, &dev)?;
        assert_eq!(x2.to_vec2::<u32>()?, xv);
        let (x3, _) = s.batch(1, 6, 3, 8, &dev)?;
        assert_ne!(x3.to_vec2::<u32>()?, xv);
        let (x4, _) = s.batch(2, 5, 3, 8, &dev)?;
        assert_ne!(x4.to_vec2::<u32>()?, xv);
        Ok(())
    }

    #[test]
    fn too_short_corpus_is_an_error() {
        let s = TokenStream::from_tokens(vec![1, 2, 3]);
        assert!(s.batch(0, 0, 1, 8, &Device::Cpu).is_err());
    }

    #[test]
    fn eos_follows_each_document() {
        let s = TokenStream::from_documents(vec![vec![5, 6], vec![7]], 0);
        assert_eq!(s.tokens(), &[5, 6, 0, 7, 0]);
    }

    #[test]
    fn u16_cache_round_trips_and_rejects_bad_bytes() -> Result<()> {
        let s = TokenStream::from_tokens(vec![0, 1, 4095, 17]);
        let b = s.to_u16_le()?;
        assert_eq!(TokenStream::from_u16_le(&b, 4096)?.tokens(), s.tokens());
        assert!(TokenStream::from_u16_le(&b[..3], 4096).is_err());
        assert!(TokenStream::from_u16_le(&b, 100).is_err());
        assert!(TokenStream::from_tokens(vec![70_000]).to_u16_le().is_err());
        Ok(())
    }

    #[test]
    fn every_truncation_and_byte_flip_of_the_token_cache_is_handled() -> Result<()> {
        let s = TokenStream::from_tokens(vec![0, 1, 4095, 17, 300]);
        let b = s.to_u16_le()?;
        for cut in 0..b.len() {
            let r = TokenStream::from_u16_le(&b[..cut], 4096);
            assert_eq!(r.is_ok(), cut % 2 == 0, "cut {cut}");
        }
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut f = b.clone();
                f[i] ^= 1 << bit;
                // Ids stay in range or the cache is rejected; never a panic.
                if let Ok(t) = TokenStream::from_u16_le(&f, 4096) {
                    assert!(t.tokens().iter().all(|&x| x < 4096));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn eval_windows_are_disjoint_and_spread() {
        let s = TokenStream::from_tokens((0..100).collect());
        let w = s.eval_windows(9, 3);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0][0], 0);
        assert!(w.iter().all(|x| x.len() == 10));
        assert!(w[1][0] >= 30 && w[2][0] >= 60);
        assert_eq!(s.eval_windows(9, 100).len(), 10);
        assert!(s.eval_windows(200, 3).is_empty());
    }
}
