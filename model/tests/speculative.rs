//! Prompt-lookup speculative decoding (issue 17): greedy output with speculation equals plain
//! greedy decoding, token for token and in the streamed text, on the reference models and the
//! embedded device (palletized) and server models, with prompts that repeat themselves (where
//! drafts are accepted) and prompts that do not; sampled requests are not speculated.
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::Path;

use tandem_model::test_util::{model, reference};
use tandem_model::{
    DType, Device, GenerateParams, Generation, LoadedModel, PromptLookup, SamplingParams,
    SpeculationStats, load_model, propose,
};

#[test]
fn propose_follows_the_latest_earlier_occurrence() {
    // "a b c d a b" → the last 2-gram "a b" occurred at 0, followed by "c d a b".
    let ctx = [1, 2, 3, 4, 1, 2];
    assert_eq!(propose(&ctx, 1..=3, 8), &[3, 4, 1, 2]);
    assert_eq!(propose(&ctx, 1..=3, 2), &[3, 4]);
    // The latest occurrence wins.
    let ctx = [1, 2, 7, 1, 2, 8, 9, 1, 2];
    assert_eq!(propose(&ctx, 1..=2, 3), &[8, 9, 1]);
    // Falls back to shorter n-grams, down to the shortest allowed; nothing when the last token
    // never occurred before.
    assert_eq!(propose(&[5, 6, 9, 6], 1..=3, 4), &[9, 6]);
    assert_eq!(propose(&[5, 6, 9, 6], 2..=3, 4), &[] as &[u32]);
    assert_eq!(propose(&[1, 2, 3], 1..=3, 4), &[] as &[u32]);
    assert_eq!(propose(&[1], 1..=3, 4), &[] as &[u32]);
    assert_eq!(propose(&[], 1..=3, 4), &[] as &[u32]);
    assert_eq!(propose(&[1, 1], 1..=3, 0), &[] as &[u32]);
}

fn run(
    m: &LoadedModel,
    prompt: &[u32],
    params: &GenerateParams,
    spec: Option<PromptLookup>,
) -> (Generation, String, Vec<u32>, SpeculationStats) {
    let mut streamed = String::new();
    let mut ids = Vec::new();
    let (g, stats) = m
        .model
        .generate_speculative(&m.tokenizer, prompt, None, params, spec, |text, t| {
            streamed.push_str(text);
            ids.extend_from_slice(t);
            ControlFlow::Continue(())
        })
        .unwrap();
    (g, streamed, ids, stats)
}

/// Every prompt, with and without speculation: the same tokens, text, stream and finish.
fn check_equal(m: &LoadedModel, prompts: &[Vec<u32>], max_tokens: usize) -> SpeculationStats {
    let params = GenerateParams {
        max_tokens,
        sampling: SamplingParams::default(),
        stop_strings: vec![],
        eos_token_ids: Some(vec![]),
    };
    let mut total = SpeculationStats::default();
    for (i, p) in prompts.iter().enumerate() {
        let (plain, plain_text, plain_ids, none) = run(m, p, &params, None);
        assert_eq!(none, SpeculationStats::default());
        for spec in [
            PromptLookup::default(),
            PromptLookup {
                ngram: 1,
                min_ngram: 1,
                max_draft: 3,
            },
        ] {
            let (g, text, ids, stats) = run(m, p, &params, Some(spec));
            assert_eq!(g.tokens, plain.tokens, "prompt {i}, {spec:?}");
            assert_eq!(g.text, plain.text, "prompt {i}, {spec:?}");
            assert_eq!(g.finish, plain.finish, "prompt {i}, {spec:?}");
            assert_eq!(text, plain_text, "prompt {i}, {spec:?}: streamed text");
            assert_eq!(ids, plain_ids, "prompt {i}, {spec:?}: streamed ids");
            assert!(stats.accepted <= stats.proposed);
            total.proposed += stats.proposed;
            total.accepted += stats.accepted;
        }
    }
    total
}

/// The prompts of the reference cases, and each repeated twice (so lookup finds matches).
fn prompts_from(encodings: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for e in encodings {
        out.push(e.clone());
        out.push([e.as_slice(), e.as_slice()].concat());
    }
    out
}

#[test]
fn greedy_speculation_equals_plain_greedy_on_the_reference_models() {
    let r = reference();
    let prompts = prompts_from(&r.encodings);
    let mut names: Vec<&str> = r.cases.iter().map(|c| c.model.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let m = model(name, DType::F32);
        let stats = check_equal(&m, &prompts, 40);
        assert!(stats.proposed > 0, "{name}: nothing was ever proposed");
    }
}

#[test]
fn greedy_speculation_equals_plain_greedy_on_the_embedded_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    for name in ["server", "device"] {
        let m = load_model(&root.join(name), DType::F32, &Device::Cpu).unwrap();
        let enc = |s: &str| m.tokenizer.encode(s).unwrap();
        let text = "The king said to the queen that the king said to the queen";
        let prompts = vec![
            enc("Once upon a time"),
            enc(text),
            enc(
                "Fix the spelling: the quick brwon fox jumps over the lazy dog.\nAnswer: the quick",
            ),
        ];
        let stats = check_equal(&m, &prompts, 48);
        assert!(stats.proposed > 0, "{name}: nothing was ever proposed");
        assert!(stats.accepted > 0, "{name}: no draft was ever accepted");
    }
}

#[test]
fn sampled_requests_are_not_speculated() {
    let r = reference();
    let m = model(&r.cases[0].model, DType::F32);
    let params = GenerateParams {
        max_tokens: 24,
        sampling: SamplingParams {
            temperature: 0.8,
            seed: 7,
            ..Default::default()
        },
        stop_strings: vec![],
        eos_token_ids: Some(vec![]),
    };
    let p = [r.encodings[0].as_slice(), r.encodings[0].as_slice()].concat();
    let (plain, ..) = run(&m, &p, &params, None);
    let (g, _, _, stats) = run(&m, &p, &params, Some(PromptLookup::default()));
    assert_eq!(stats, SpeculationStats::default());
    assert_eq!(g.tokens, plain.tokens);
}
