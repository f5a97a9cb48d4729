//! Training the byte-level BPE tokenizer (GPT-2 style) with the `tokenizers` crate.
//!
//! Byte-level: every input byte has a token, so there is no unknown token. The only special token
//! is the end-of-text token [`EOT`] (id 0); there is no beginning-of-sequence token and no
//! post-processor adds one.

use std::collections::HashSet;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder, TokenizerImpl};

use super::TrainError;
use crate::Result;

/// The end-of-text token of Tandem's own tokenizers: separates documents, ends task answers,
/// stops generation. Code that works on any model asks [`end_of_text_id`] instead.
pub const EOT: &str = "<|endoftext|>";

/// The id that ends a document or a task answer for this model: the first of its
/// `eos_token_id`s (`config.json` / `generation_config.json`), else the tokenizer's
/// [`EOT`] token. Never assumes Tandem's own tokenizer.
pub fn end_of_text_id(
    config: &tandem_model::Config,
    tokenizer: &tandem_model::Tokenizer,
) -> Result<u32> {
    if let Some(&id) = config.eos_token_ids.first() {
        return Ok(id);
    }
    tokenizer.token_to_id(EOT).ok_or_else(|| {
        TrainError::Tokenizer(format!(
            "the model has no end-of-text token: config.json has no eos_token_id and the tokenizer has no {EOT}; set eos_token_id in config.json"
        ))
        .into()
    })
}

/// Trains a byte-level BPE tokenizer with `vocab_size` entries (including the 256 byte tokens
/// and [`EOT`]) on `docs` and returns its `tokenizer.json` text.
pub fn train_bpe<'a>(
    docs: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
) -> Result<String> {
    if vocab_size < 257 + 1 {
        return Err(TrainError::Tokenizer(format!(
            "vocabulary size {vocab_size} is too small: byte-level BPE needs 256 byte tokens plus {EOT}"
        ))
        .into());
    }
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(vec![AddedToken::from(EOT.to_string(), true)])
        .initial_alphabet(alphabet)
        .build();
    // add_prefix_space = false, trim_offsets = true, use_regex = true (the GPT-2 split).
    let byte_level = ByteLevel::new(false, true, true);
    let mut tk: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevelDecoder> =
        TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(Some(byte_level))
            .with_decoder(Some(ByteLevelDecoder::default()))
            .build()
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    tk.train(&mut trainer, docs)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    let json = tk
        .to_string(false)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_round_trips_and_has_eot_zero() -> Result<()> {
        let text = "the quick brown fox jumps over the lazy dog. ".repeat(50);
        let docs = [
            text.as_str(),
            "Hello, world! The world says hello.",
            "caf\u{e9} \u{1F600}",
        ];
        let json = train_bpe(docs.iter().copied(), 300)?;
        let tk = tokenizers::Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        assert_eq!(tk.token_to_id(EOT), Some(0));
        assert!(tk.get_vocab_size(true) <= 300);
        let s = "The lazy fox, unseen: caf\u{e9} \u{1F600}!";
        let enc = tk
            .encode(s, true)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        // No BOS/EOS is added by encoding.
        assert!(!enc.get_ids().contains(&0));
        let dec = tk
            .decode(enc.get_ids(), false)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        assert_eq!(dec, s);
        // Merges were learned: common words take fewer tokens than bytes.
        let n = tk
            .encode("the quick brown fox", false)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?
            .len();
        assert!(n < 10, "{n} tokens");
        // EOT in text is one token.
        let e = tk
            .encode("a<|endoftext|>b", false)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        assert!(e.get_ids().contains(&0));
        Ok(())
    }

    #[test]
    fn rejects_tiny_vocab() {
        assert!(train_bpe(["abc"].iter().copied(), 100).is_err());
    }
}
