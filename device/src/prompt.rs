//! A conversation turned into a model's prompt with the model's own chat template: what
//! `tandem ask`/`tandem chat` and the daemon's `Chat` RPC and `/v1/chat/completions` share.

use std::path::Path;

use tandem_model::Tokenizer;
use tandem_model::chat_template::{ChatTemplate, Message};

/// Renders with the current time for templates that call `strftime_now`.
pub fn render(
    t: &ChatTemplate,
    messages: &[Message],
    add_generation_prompt: bool,
) -> tandem_model::Result<String> {
    let now = i64::try_from(tandem_service::unix_now()).unwrap_or(i64::MAX);
    t.render_at(messages, add_generation_prompt, now)
}

/// What `tandem ask`, `tandem chat` and the daemon need to turn a conversation into a model's
/// prompt.
#[derive(Debug)]
pub struct Prompter {
    template: ChatTemplate,
    /// The model's tokenizer, if it loads: counts tokens exactly and tells whether encoding
    /// adds a BOS itself.
    tokenizer: Option<Tokenizer>,
}

impl Prompter {
    /// The chat template of the model in `dir`, or `None` if it has none.
    pub fn for_model(dir: &Path) -> tandem_model::Result<Option<Prompter>> {
        let Some(template) = ChatTemplate::from_model_dir(dir)? else {
            return Ok(None);
        };
        let p = dir.join("tokenizer.json");
        let tokenizer = std::fs::read(&p)
            .ok()
            .and_then(|b| Tokenizer::from_bytes(&b, &p).ok());
        Ok(Some(Prompter {
            template,
            tokenizer,
        }))
    }

    /// `messages` rendered with a generation prompt.
    ///
    /// Nodes and the local engine encode a prompt with the tokenizer's post-processor (like
    /// `tokenizer(text)` in transformers), while transformers encodes a templated prompt without
    /// it. When the template writes `bos_token` and the post-processor adds that same token,
    /// the template's copy is dropped so the model sees one BOS, not two.
    pub fn prompt(&self, messages: &[Message]) -> tandem_model::Result<String> {
        let prompt = render(&self.template, messages, true)?;
        drop_doubled_bos(prompt, self.template.bos_token(), self.tokenizer.as_ref())
    }

    /// Tokens of `text` with the model's tokenizer, or a conservative bytes/2 without one.
    pub fn count(&self, text: &str) -> usize {
        self.tokenizer
            .as_ref()
            .and_then(|t| t.encode(text).ok())
            .map_or(text.len() / 2, |ids| ids.len())
    }
}

/// `prompt` without its leading `bos` if encoding adds that very token anyway.
fn drop_doubled_bos(
    prompt: String,
    bos: Option<&str>,
    tok: Option<&Tokenizer>,
) -> tandem_model::Result<String> {
    if let (Some(bos), Some(tok)) = (bos, tok)
        && let Some(rest) = prompt.strip_prefix(bos)
    {
        let added = tok.encode("")?;
        if let (Some(first), Some(id)) = (added.first(), tok.token_to_id(bos))
            && *first == id
        {
            return Ok(rest.to_string());
        }
    }
    Ok(prompt)
}

/// The prompt of a conversation for a model without a chat template: each message's content on
/// its own line, roles left out, as `tandem chat` sends a conversation to such a model.
pub fn plain_prompt(messages: &[Message]) -> String {
    let mut p = String::new();
    for m in messages {
        p.push_str(&m.content);
        p.push('\n');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer whose post-processor puts `<s>` before every text (when `bos`).
    fn tokenizer(bos: bool) -> Tokenizer {
        let post = if bos {
            r#"{"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}"#
        } else {
            "null"
        };
        let json = format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null,
                "added_tokens": [{{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                                  "rstrip": false, "normalized": false, "special": true}}],
                "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}},
                "post_processor": {post}, "decoder": null,
                "model": {{"type": "WordLevel", "vocab": {{"<s>": 0, "hi": 1, "[UNK]": 2}}, "unk_token": "[UNK]"}}}}"#
        );
        Tokenizer::from_bytes(json.as_bytes(), Path::new("tokenizer.json")).expect("tokenizer")
    }

    #[test]
    fn a_template_bos_is_dropped_only_when_encoding_adds_it() {
        let adds = tokenizer(true);
        let plain = tokenizer(false);
        assert_eq!(adds.encode("hi").expect("encodes"), vec![0, 1]);
        let p = || "<s>hi".to_string();
        let drop = |bos, tok| drop_doubled_bos(p(), bos, tok).expect("ok");
        assert_eq!(drop(Some("<s>"), Some(&adds)), "hi");
        assert_eq!(drop(Some("<s>"), Some(&plain)), "<s>hi");
        assert_eq!(drop(Some("<s>"), None), "<s>hi");
        assert_eq!(drop(None, Some(&adds)), "<s>hi");
        assert_eq!(drop(Some("<bos>"), Some(&adds)), "<s>hi");
    }
}
