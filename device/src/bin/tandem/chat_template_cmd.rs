//! `tandem model chat-template`: a conversation rendered with a model's chat template, exactly
//! as the model will see it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use tandem_model::chat_template::{ChatTemplate, Message};

/// `tandem model chat-template`.
#[derive(Debug, Args)]
pub struct ChatTemplateArgs {
    /// Model directory (its `chat_template.jinja` or `tokenizer_config.json`).
    #[arg(long)]
    model: PathBuf,
    /// JSON file with the conversation: an array of {role, content}, or an object with a
    /// `messages` array (e.g. an OpenAI chat request; other fields are ignored). `-` is stdin.
    #[arg(long)]
    messages: PathBuf,
    /// Do not end the prompt with the header of an assistant turn.
    #[arg(long)]
    no_generation_prompt: bool,
    /// Print one JSON object {"prompt": ...} instead of the bare prompt.
    #[arg(long)]
    json: bool,
}

/// The model's chat template, or an error saying it has none.
pub fn load_template(model: &Path) -> Result<ChatTemplate> {
    ChatTemplate::from_model_dir(model)
        .with_context(|| format!("reading the chat template of {}", model.display()))?
        .with_context(|| {
            format!(
                "{} has no chat template (no chat_template.jinja, and tokenizer_config.json has no chat_template)",
                model.display()
            )
        })
}

pub use tandem_device::prompt::{Prompter, render};

/// Renders `history` (an optional system message, then user/assistant turns, ending with the
/// new user turn) so that it fits `budget` tokens, dropping the oldest user/assistant pairs
/// from `history` (never a system message, never the last turn) until it does. Returns the
/// prompt and how many pairs were dropped; if even the last turn alone does not fit, the
/// prompt of what is left (the router then says where, or whether, it can run).
pub fn fit_history(
    history: &mut Vec<Message>,
    budget: usize,
    mut render: impl FnMut(&[Message]) -> Result<String>,
    count: impl Fn(&str) -> usize,
) -> Result<(String, usize)> {
    let mut dropped = 0;
    loop {
        let prompt = render(history)?;
        if count(&prompt) <= budget {
            return Ok((prompt, dropped));
        }
        let Some(first) = history.iter().position(|m| m.role != "system") else {
            return Ok((prompt, dropped));
        };
        // Keep at least the last message.
        if first + 1 >= history.len() {
            return Ok((prompt, dropped));
        }
        let pair = history[first].role == "user"
            && history[first + 1].role == "assistant"
            && first + 2 < history.len();
        history.drain(first..first + if pair { 2 } else { 1 });
        dropped += 1;
    }
}

/// Parses a conversation: an array of messages or an object with a `messages` array.
pub fn parse_messages(bytes: &[u8]) -> Result<Vec<Message>> {
    let v: Value = serde_json::from_slice(bytes).context("the messages are not JSON")?;
    let list = match &v {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("messages") {
            Some(Value::Array(a)) => a,
            _ => bail!("the messages object has no `messages` array"),
        },
        _ => bail!(
            "the messages must be a JSON array of {{role, content}} or an object with `messages`"
        ),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| {
                m.get(k).and_then(Value::as_str).with_context(|| {
                    format!("message {i} has no string `{k}` (only text content is supported)")
                })
            };
            Ok(Message::new(field("role")?, field("content")?))
        })
        .collect()
}

pub fn run(a: ChatTemplateArgs) -> Result<()> {
    let bytes = if a.messages.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("reading the messages from stdin")?;
        b
    } else {
        std::fs::read(&a.messages).with_context(|| format!("reading {}", a.messages.display()))?
    };
    let messages =
        parse_messages(&bytes).with_context(|| format!("parsing {}", a.messages.display()))?;
    let t = load_template(&crate::model_cmd::resolve(&a.model)?)?;
    let prompt = render(&t, &messages, !a.no_generation_prompt)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", json!({ "prompt": prompt }))?;
    } else {
        out.write_all(prompt.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(turns: &[(&str, &str)]) -> Vec<Message> {
        turns.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    /// One "token" per message in this test's renderer: `[role:content]`.
    fn fit(history: &mut Vec<Message>, budget: usize) -> (String, usize) {
        fit_history(
            history,
            budget,
            |m| {
                Ok(m.iter()
                    .map(|m| format!("[{}:{}]", m.role, m.content))
                    .collect())
            },
            |p| p.matches('[').count(),
        )
        .expect("renders")
    }

    #[test]
    fn fit_history_drops_oldest_pairs_and_keeps_the_system_message() {
        let full = chat(&[
            ("system", "s"),
            ("user", "u1"),
            ("assistant", "a1"),
            ("user", "u2"),
            ("assistant", "a2"),
            ("user", "u3"),
        ]);
        // Fits: nothing dropped.
        let mut h = full.clone();
        assert_eq!(
            fit(&mut h, 6),
            (
                full.iter()
                    .map(|m| format!("[{}:{}]", m.role, m.content))
                    .collect(),
                0
            )
        );
        assert_eq!(h, full);
        // One pair too many.
        let mut h = full.clone();
        assert_eq!(
            fit(&mut h, 5),
            ("[system:s][user:u2][assistant:a2][user:u3]".into(), 1)
        );
        assert_eq!(h.len(), 4);
        // Down to the system message and the last turn, which are always kept.
        for budget in [0, 1, 2, 3] {
            let mut h = full.clone();
            let (p, dropped) = fit(&mut h, budget);
            assert_eq!(
                (p.as_str(), dropped),
                ("[system:s][user:u3]", 2),
                "budget {budget}"
            );
        }
        // No system message.
        let mut h = chat(&[("user", "u1"), ("assistant", "a1"), ("user", "u2")]);
        assert_eq!(fit(&mut h, 1), ("[user:u2]".into(), 1));
        // One message, over budget: returned as is.
        let mut h = chat(&[("user", "u1")]);
        assert_eq!(fit(&mut h, 0), ("[user:u1]".into(), 0));
        // An odd shape (two users in a row) drops one message at a time.
        let mut h = chat(&[
            ("user", "u1"),
            ("user", "u2"),
            ("assistant", "a2"),
            ("user", "u3"),
        ]);
        assert_eq!(
            fit(&mut h, 3),
            ("[user:u2][assistant:a2][user:u3]".into(), 1)
        );
    }

    #[test]
    fn fit_history_with_a_real_template() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            None,
            Some("<|im_end|>".into()),
        )
        .expect("compiles");
        let mut h = chat(&[
            ("system", "be brief"),
            ("user", "a long first question that takes room"),
            ("assistant", "a long first answer that takes room"),
            ("user", "next?"),
        ]);
        let (p, dropped) =
            fit_history(&mut h, 40, |m| Ok(render(&t, m, true)?), |s| s.len() / 2).expect("fits");
        assert_eq!(dropped, 1);
        assert_eq!(
            p,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nnext?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn messages_as_array_or_request_body() {
        let want = vec![Message::new("system", "s"), Message::new("user", "u")];
        let arr = br#"[{"role": "system", "content": "s"}, {"role": "user", "content": "u", "name": "x"}]"#;
        assert_eq!(parse_messages(arr).expect("array"), want);
        let body = br#"{"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}"#;
        assert_eq!(parse_messages(body).expect("object"), want);
        for bad in [
            &b"{}"[..],
            b"3",
            b"[{\"role\": \"user\"}]",
            b"[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"x\"}]}]",
            b"not json",
        ] {
            assert!(
                parse_messages(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
