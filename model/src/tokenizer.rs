//! `tokenizer.json` via the `tokenizers` crate, and a streaming detokenizer.
//!
//! Encoding applies the file's post-processor (like `tokenizer(text)` in transformers), so a BOS
//! token appears exactly when `tokenizer.json` says so and never otherwise.

use std::path::Path;

use crate::error::{Error, LoadError, Result};

/// A Hugging Face tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Parses `tokenizer.json` bytes (`path` for messages only).
    ///
    /// The word cache of BPE and Unigram models (up to 10,000 recently seen words of input
    /// text, kept for the life of the tokenizer) is turned off: a node tokenizes other people's
    /// prompts and must not keep their words after a request (ARCHITECTURE.md, "plaintext in
    /// memory after a request"); tokenizing is a negligible part of a request either way.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> std::result::Result<Self, LoadError> {
        let mut inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| LoadError::Tokenizer {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let mut model = inner.get_model().clone();
        model.resize_cache(0);
        inner.with_model(model);
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, with exactly the special tokens the post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenize(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Turns a stream of token ids into text deltas that never split a UTF-8 character.
///
/// Byte-level tokens can end in the middle of a multi-byte character; decoding then yields
/// U+FFFD. The decoder holds such tokens back until the character is complete. It decodes a
/// short window (`prefix..`) rather than the whole text so that decoders which treat the first
/// token specially (e.g. leading-space stripping) see context.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder with no tokens yet.
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        StreamDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token; returns the new complete text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
            && now.starts_with(&before)
        {
            let delta = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(Some(delta));
        }
        Ok(None)
    }

    /// Text still held back (an incomplete character at the end of the stream), decoded lossily.
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        match now.get(before.len()..) {
            Some(rest) if now.starts_with(&before) && !rest.is_empty() => {
                Ok(Some(rest.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
