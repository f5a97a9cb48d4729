#![no_main]
//! Untrusted chat templates (a model's chat_template.jinja, tokenizer_config.json or GGUF key):
//! compiling and rendering never panics, and work is bounded (fuel).
use libfuzzer_sys::fuzz_target;
use tandem_model::chat_template::{ChatTemplate, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into())) {
        let messages = [
            Message::new("system", "s"),
            Message::new("user", "u"),
            Message::new("assistant", "a"),
        ];
        let _ = t.render_at(&messages, true, 1_700_000_000);
    }
});
