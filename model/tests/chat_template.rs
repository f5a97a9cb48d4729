//! Chat templates rendered here against what Hugging Face transformers renders for them
//! (`tests/fixtures/chat_templates/expected.json`, written by `make.py` there), byte for byte,
//! and the error cases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tandem_model::Error;
use tandem_model::chat_template::{ChatTemplate, Message};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

#[derive(Deserialize)]
struct Expected {
    generated_by: String,
    fixtures: BTreeMap<String, Vec<Case>>,
}

#[derive(Deserialize)]
struct Case {
    conversation: String,
    add_generation_prompt: bool,
    prompt: Option<String>,
    error: Option<String>,
}

fn load_json<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let p = fixtures().join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn template(name: &str) -> ChatTemplate {
    ChatTemplate::from_model_dir(&fixtures().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name} has no template"))
}

#[test]
fn renders_like_transformers() {
    let expected: Expected = load_json("expected.json");
    let conversations: BTreeMap<String, Vec<Message>> = load_json("conversations.json");
    assert!(
        expected.generated_by.contains("transformers 5.23.0"),
        "{}",
        expected.generated_by
    );
    // The SmolLM2 template and at least two other families are covered.
    for name in [
        "smollm2", "llama3", "llama2", "mistral", "gemma", "qwen2_5", "phi3",
    ] {
        assert!(expected.fixtures.contains_key(name), "{name} missing");
    }
    let mut checked = 0;
    for (name, cases) in &expected.fixtures {
        let t = template(name);
        for c in cases {
            let messages = &conversations[&c.conversation];
            let got = t.render(messages, c.add_generation_prompt);
            let what = format!(
                "{name} / {} / add_generation_prompt={}",
                c.conversation, c.add_generation_prompt
            );
            match (&c.prompt, &c.error, got) {
                (Some(want), None, Ok(got)) => assert_eq!(&got, want, "{what}"),
                (None, Some(want), Err(e)) => {
                    assert!(matches!(e, Error::ChatTemplate { .. }), "{what}: {e:?}");
                    let msg = e.to_string();
                    assert!(msg.contains(want.as_str()), "{what}: {msg}");
                    assert!(msg.contains("raise_exception"), "{what}: {msg}");
                }
                (Some(_), None, Err(e)) => {
                    panic!("{what}: transformers rendered it, we failed: {e}")
                }
                (None, Some(want), Ok(got)) => {
                    panic!("{what}: transformers raised {want:?}, we rendered {got:?}")
                }
                _ => panic!("{what}: bad expected.json case"),
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "only {checked} cases");
}

#[test]
fn smollm2_prompt_is_chatml_with_its_default_system_message() {
    let t = template("smollm2");
    assert_eq!(t.bos_token(), Some("<|im_start|>"));
    assert_eq!(t.eos_token(), Some("<|im_end|>"));
    let p = t
        .render(&[Message::new("user", "Hi")], true)
        .expect("renders");
    assert_eq!(
        p,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn lookup_order_and_token_objects() {
    // qwen2_5 has both files; its tokenizer_config.json template would raise if it were used.
    let q = template("qwen2_5");
    assert!(
        q.origin().ends_with("chat_template.jinja"),
        "{}",
        q.origin()
    );
    assert_eq!((q.bos_token(), q.eos_token()), (None, Some("<|im_end|>")));
    // {"__type": "AddedToken", "content": ...} objects.
    let l = template("llama2");
    assert_eq!((l.bos_token(), l.eos_token()), (Some("<s>"), Some("</s>")));
    // A list of named templates: the one named `default`.
    let n = template("named_list");
    assert!(
        n.render(&[Message::new("user", "x")], false)
            .expect("the default template renders")
            .starts_with("<|im_start|>user\nx")
    );
}

#[test]
fn no_template_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        ChatTemplate::from_model_dir(dir.path())
            .expect("no files is fine")
            .is_none()
    );
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    )
    .expect("write");
    assert!(
        ChatTemplate::from_model_dir(dir.path())
            .expect("a config without chat_template is fine")
            .is_none()
    );
    // The repository's tiny tokenizer fixture directory has no template either.
    let tok_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    assert!(
        ChatTemplate::from_model_dir(&tok_dir)
            .expect("reads")
            .is_none()
    );
}

#[test]
fn bad_syntax_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("chat_template.jinja");
    std::fs::write(&p, "{% for m in messages %}{{ m.content }").expect("write");
    let e = ChatTemplate::from_model_dir(dir.path()).expect_err("does not compile");
    let msg = e.to_string();
    assert!(matches!(e, Error::ChatTemplate { .. }), "{e:?}");
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("does not compile"), "{msg}");
    assert!(msg.contains("syntax error"), "{msg}");

    std::fs::remove_file(&p).expect("rm");
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{% if %}"}"#,
    )
    .expect("write");
    let msg = ChatTemplate::from_model_dir(dir.path())
        .expect_err("does not compile")
        .to_string();
    assert!(
        msg.contains("tokenizer_config.json (chat_template)"),
        "{msg}"
    );

    std::fs::write(dir.path().join("tokenizer_config.json"), b"{oops").expect("write");
    let msg = ChatTemplate::from_model_dir(dir.path())
        .expect_err("not JSON")
        .to_string();
    assert!(msg.contains("not valid JSON"), "{msg}");
}

#[test]
fn runtime_failures_are_errors_not_panics() {
    let user = [Message::new("user", "hi")];
    for (src, want) in [
        ("{{ raise_exception('no system role') }}", "no system role"),
        ("{{ messages[0].content + 1 }}", "invalid operation"),
        ("{{ messages.nope.deeper }}", "undefined"),
        ("{{ messages | tojson(indent=[1]) }}", "indent"),
        ("{{ messages | tojson(bogus=1) }}", "bogus"),
        ("{% for x in 3 %}{% endfor %}", "not iterable"),
    ] {
        let t = ChatTemplate::from_source("test.jinja", src, None, None)
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        let msg = t.render(&user, true).expect_err(src).to_string();
        assert!(
            msg.starts_with("test.jinja: chat template failed"),
            "{src}: {msg}"
        );
        assert!(msg.to_lowercase().contains(want), "{src}: {msg}");
    }
    // An empty conversation is refused, as transformers refuses it.
    let t = template("smollm2");
    assert!(t.render(&[], true).is_err());
    // Unknown roles: templates that check roles raise; the error says why.
    let msg = template("mistral")
        .render(
            &[Message::new("user", "a"), Message::new("robot", "b")],
            false,
        )
        .expect_err("mistral refuses other roles")
        .to_string();
    assert!(
        msg.contains("Only user and assistant roles are supported!"),
        "{msg}"
    );
}

#[test]
fn long_conversations_fit_the_fuel() {
    let messages: Vec<Message> = (0..2000)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            Message::new(role, format!("message number {i}"))
        })
        .collect();
    for name in ["qwen2_5", "llama2", "smollm2"] {
        let p = template(name)
            .render(&messages, true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(p.contains("message number 1999"), "{name}");
    }
}

#[test]
fn from_source_for_gguf_callers() {
    let t = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{{ eos_token }}",
        Some("<s>".into()),
        Some("</s>".into()),
    )
    .expect("compiles");
    assert_eq!(
        t.render(
            &[Message::new("user", "a"), Message::new("assistant", "b")],
            false
        )
        .expect("renders"),
        "<s>user: a\nassistant: b\n</s>"
    );
}
