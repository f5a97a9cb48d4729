//! Fidelity against transformers + PEFT (reference logits and greedy continuations made by
//! `scripts/make_fixtures.py`), and the cache / batching / adapter invariants.

use tandem_model::test_util as common;

use std::ops::ControlFlow;

use candle_core::{DType, IndexOp, Tensor};
use common::*;
use tandem_model::{Cache, GenerateParams, SamplingParams};

const TOL: f32 = 1e-4;

#[test]
fn logits_match_transformers_at_every_position() {
    let r = reference();
    for case in &r.cases {
        let m = model(&case.model, DType::F32);
        let a = case.adapter.as_deref().map(|n| adapter(n, &m));
        let ids = &r.encodings[case.prompt];
        let mut cache = Cache::new(&m.model, 1, ids.len()).expect("cache");
        let logits = m
            .model
            .forward(
                &m.model.tokens_tensor(ids).expect("ids"),
                a.as_ref().map(|a| &a.adapter),
                &mut cache,
            )
            .expect("forward")
            .squeeze(0)
            .expect("squeeze");
        let want = reference_logits(&case.logits);
        let d = max_abs_diff(&logits, &want);
        assert!(d < TOL, "{}: max |Δlogit| = {d}", case.logits);
        // The adapter must matter, or the test would not see a broken adapter path.
        if case.adapter.is_some() {
            let plain = reference_logits(
                &case
                    .logits
                    .replace(case.adapter.as_deref().unwrap_or_default(), &case.model),
            );
            assert!(
                max_abs_diff(&plain, &want) > 0.1,
                "{}: adapter is a no-op",
                case.logits
            );
        }
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    let r = reference();
    for case in &r.cases {
        let m = model(&case.model, DType::F32);
        let a = case.adapter.as_deref().map(|n| adapter(n, &m));
        let params = GenerateParams {
            max_tokens: case.greedy.len(),
            sampling: SamplingParams::default(),
            stop_strings: vec![],
            eos_token_ids: Some(vec![]),
        };
        let mut streamed = String::new();
        let g = m
            .model
            .generate(
                &m.tokenizer,
                &r.encodings[case.prompt],
                a.as_ref().map(|a| &a.adapter),
                &params,
                |d| {
                    // (A random model may emit invalid byte sequences, so U+FFFD can appear
                    // here legitimately; splitting is tested in `streaming_never_splits_utf8`.)
                    streamed.push_str(d);
                    ControlFlow::Continue(())
                },
            )
            .expect("generate");
        assert_eq!(g.tokens, case.greedy, "{}", case.logits);
        assert_eq!(streamed, g.text);
        // The token-carrying variant hands over every generated id exactly once, in order.
        let (mut ids, mut text) = (Vec::new(), String::new());
        let g2 = m
            .model
            .generate_with_tokens(
                &m.tokenizer,
                &r.encodings[case.prompt],
                a.as_ref().map(|a| &a.adapter),
                &params,
                |d, t| {
                    text.push_str(d);
                    ids.extend_from_slice(t);
                    ControlFlow::Continue(())
                },
            )
            .expect("generate_with_tokens");
        assert_eq!(ids, g2.tokens);
        assert_eq!(g2.tokens, g.tokens);
        assert_eq!(text, g.text);
        assert_eq!(g.text, m.tokenizer.decode(&g.tokens).expect("decode"));
    }
}

#[test]
fn tokenizer_matches_transformers_and_adds_no_bos() {
    let r = reference();
    let m = model("tied_gqa", DType::F32);
    for (p, ids) in r.prompts.iter().zip(&r.encodings) {
        assert_eq!(&m.tokenizer.encode(p).expect("encode"), ids);
        assert_eq!(&m.tokenizer.decode(ids).expect("decode"), p);
    }
    // A post-processor that adds BOS is honoured.
    let path = fixtures().join("tokenizer/tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    tok["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}
    });
    let t =
        tandem_model::Tokenizer::from_bytes(tok.to_string().as_bytes(), &path).expect("tokenizer");
    let ids = t.encode(&r.prompts[0]).expect("encode");
    assert_eq!(ids[0], 0);
    assert_eq!(&ids[1..], &r.encodings[0][..]);
}

#[test]
fn streaming_never_splits_utf8() {
    let m = model("tied_gqa", DType::F32);
    let text = "naïve café ✓ ✓✓ done";
    let ids = m.tokenizer.encode(text).expect("encode");
    assert!(ids.len() > text.chars().count() / 2);
    let mut d = tandem_model::StreamDecoder::new(&m.tokenizer);
    let mut out = String::new();
    let mut held = 0;
    for &id in &ids {
        match d.push(id).expect("push") {
            Some(piece) => {
                assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                out.push_str(&piece);
            }
            None => held += 1,
        }
    }
    if let Some(rest) = d.finish().expect("finish") {
        out.push_str(&rest);
    }
    assert_eq!(out, text);
    assert!(
        held > 0,
        "byte-level tokens of ✓ should have been held back"
    );
}

#[test]
fn kv_cache_decode_equals_full_recompute() {
    for (name, adapter_name) in [
        ("tied_gqa", Some("tied_gqa_lora")),
        ("untied_gqa_sharded", None),
    ] {
        let m = model(name, DType::F32);
        let a = adapter_name.map(|n| adapter(n, &m));
        let a = a.as_ref().map(|a| &a.adapter);
        let ids = reference().encodings[0].clone();
        let full = {
            let mut c = Cache::new(&m.model, 1, ids.len()).expect("cache");
            m.model
                .forward(&m.model.tokens_tensor(&ids).expect("ids"), a, &mut c)
                .expect("forward")
        };
        let mut c = Cache::new(&m.model, 1, ids.len()).expect("cache");
        let split = 5;
        let mut parts = vec![
            m.model
                .forward(
                    &m.model.tokens_tensor(&ids[..split]).expect("ids"),
                    a,
                    &mut c,
                )
                .expect("prefill"),
        ];
        for &t in &ids[split..] {
            parts.push(
                m.model
                    .forward(&m.model.tokens_tensor(&[t]).expect("id"), a, &mut c)
                    .expect("decode"),
            );
        }
        let stepped = Tensor::cat(&parts, 1).expect("cat");
        let d = max_abs_diff(&full, &stepped);
        assert!(d < TOL, "{name}: cached decode differs by {d}");
        // The cache is full now: one more token is a usage error, not a panic.
        assert!(
            m.model
                .forward(&m.model.tokens_tensor(&[1]).expect("id"), a, &mut c)
                .is_err()
        );
    }
}

#[test]
fn batch_of_different_lengths_equals_each_alone() {
    let m = model("tied_gqa", DType::F32);
    let la = adapter("tied_gqa_lora", &m);
    for a in [None, Some(&la.adapter)] {
        let r = reference();
        let seqs: Vec<&[u32]> = vec![&r.encodings[0], &r.encodings[1][..7]];
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let steps = [5u32, 17, 42];
        let mut batch = Cache::new(&m.model, 2, longest + steps.len()).expect("cache");
        let logits = m
            .model
            .prefill_batch(&seqs, a, &mut batch)
            .expect("batch prefill");
        let mut batch_steps = vec![];
        for &t in &steps {
            let input = Tensor::new(&[[t], [t]], m.model.device()).expect("input");
            batch_steps.push(
                m.model
                    .forward(&input, a, &mut batch)
                    .expect("batch decode"),
            );
        }
        for (b, s) in seqs.iter().enumerate() {
            let mut alone = Cache::new(&m.model, 1, s.len() + steps.len()).expect("cache");
            let want = m
                .model
                .forward(&m.model.tokens_tensor(s).expect("ids"), a, &mut alone)
                .expect("alone");
            let got = logits.i((b, longest - s.len()..)).expect("slice");
            let d = max_abs_diff(&want.squeeze(0).expect("squeeze"), &got);
            assert!(d < TOL, "sequence {b} prefill differs by {d}");
            for (i, &t) in steps.iter().enumerate() {
                let want = m
                    .model
                    .forward(&m.model.tokens_tensor(&[t]).expect("id"), a, &mut alone)
                    .expect("alone decode");
                let got = batch_steps[i].i(b).expect("row");
                let d = max_abs_diff(&want.squeeze(0).expect("squeeze"), &got);
                assert!(d < TOL, "sequence {b} decode step {i} differs by {d}");
            }
        }
    }
}

#[test]
fn one_model_serves_different_adapters_concurrently() {
    let m = model("tied_gqa", DType::F32);
    let la = adapter("tied_gqa_lora", &m);
    let r = reference();
    let ids = &r.encodings[0];
    let run = |a: Option<&tandem_model::Adapter>| {
        let mut c = Cache::new(&m.model, 1, ids.len()).expect("cache");
        m.model
            .forward(&m.model.tokens_tensor(ids).expect("ids"), a, &mut c)
            .expect("forward")
            .squeeze(0)
            .expect("squeeze")
    };
    let (plain, adapted) = std::thread::scope(|s| {
        let h1 = s.spawn(|| run(None));
        let h2 = s.spawn(|| run(Some(&la.adapter)));
        (h1.join().expect("thread"), h2.join().expect("thread"))
    });
    assert!(max_abs_diff(&plain, &reference_logits("tied_gqa/p0")) < TOL);
    assert!(max_abs_diff(&adapted, &reference_logits("tied_gqa_lora/p0")) < TOL);
    // Merging gives the adapter's logits without passing it.
    let merged = m.model.merge_adapter(&la.adapter).expect("merge");
    let mut c = Cache::new(&merged, 1, ids.len()).expect("cache");
    let got = merged
        .forward(&merged.tokens_tensor(ids).expect("ids"), None, &mut c)
        .expect("forward")
        .squeeze(0)
        .expect("squeeze");
    assert!(max_abs_diff(&got, &reference_logits("tied_gqa_lora/p0")) < TOL);
    // The base is untouched by the merge.
    assert!(max_abs_diff(&run(None), &plain) == 0.0);
}

#[test]
fn transformers_4x_config_form_loads_identically() {
    let dir = copy_fixture("tied_gqa");
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    assert!(
        cfg.get("rope_parameters").is_some(),
        "fixture is in 5.x form"
    );
    let theta = cfg["rope_parameters"]["rope_theta"].clone();
    let obj = cfg.as_object_mut().expect("object");
    obj.remove("rope_parameters");
    obj.remove("dtype");
    obj.insert("rope_theta".into(), theta);
    obj.insert("rope_scaling".into(), serde_json::Value::Null);
    obj.insert("torch_dtype".into(), "float32".into());
    obj.insert("transformers_version".into(), "4.46.0".into());
    std::fs::write(&path, cfg.to_string()).expect("write");
    let m4 = tandem_model::load_model(dir.path(), DType::F32, &candle_core::Device::Cpu)
        .expect("4.x config loads");
    let m5 = model("tied_gqa", DType::F32);
    assert_eq!(m4.model.config(), m5.model.config());
    assert_ne!(m4.digest, m5.digest, "the digest covers config.json");
}

#[test]
fn f16_and_bf16_compute_stay_close() {
    let r = reference();
    let ids = &r.encodings[0];
    for dtype in [DType::F16, DType::BF16] {
        let m = model("tied_gqa", dtype);
        let mut c = Cache::new(&m.model, 1, ids.len()).expect("cache");
        let got = m
            .model
            .forward(&m.model.tokens_tensor(ids).expect("ids"), None, &mut c)
            .expect("forward")
            .squeeze(0)
            .expect("squeeze");
        let want = reference_logits("tied_gqa/p0");
        let d = max_abs_diff(&got, &want);
        let scale = max_abs_diff(&want, &want.zeros_like().expect("zeros"));
        assert!(d < 0.05 * scale, "{dtype:?}: {d} vs logit scale {scale}");
        let argmax_got = got.argmax(1).expect("argmax").to_vec1::<u32>().expect("v");
        let argmax_want = want.argmax(1).expect("argmax").to_vec1::<u32>().expect("v");
        let same = argmax_got
            .iter()
            .zip(&argmax_want)
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            same * 10 >= argmax_want.len() * 8,
            "{dtype:?}: argmax agreement {same}/{}",
            argmax_want.len()
        );
    }
}

#[test]
fn digests_are_stable_and_content_addressed() {
    let a = model("tied_gqa", DType::F32);
    let b = model("tied_gqa", DType::F16);
    assert_eq!(
        a.digest, b.digest,
        "compute dtype does not change the files"
    );
    let s = a.digest.to_string();
    assert!(s.starts_with("sha256:") && s.len() == 71, "{s}");
    let la = adapter("tied_gqa_lora", &a);
    let lb = adapter(
        "untied_lora_rslora",
        &model("untied_gqa_sharded", DType::F32),
    );
    assert_ne!(la.digest, lb.digest);
}

#[test]
fn adapter_cache_is_lru_by_bytes() {
    use tandem_model::AdapterCache;
    let m = model("tied_gqa", DType::F32);
    let la = adapter("tied_gqa_lora", &m);
    let size = la.adapter.bytes();
    let mut cache = AdapterCache::new(2 * size);
    let d = |i: u8| tandem_model::AdapterDigest(tandem_model::Sha256Digest([i; 32]));
    let mut loads = 0;
    let mut get = |cache: &mut AdapterCache, i| {
        cache
            .get_or_try_insert_with(d(i), || {
                loads += 1;
                Ok::<_, ()>(la.adapter.clone())
            })
            .expect("load")
    };
    get(&mut cache, 1);
    get(&mut cache, 2);
    get(&mut cache, 1); // hit; 2 is now least recently used
    get(&mut cache, 3); // evicts 2
    assert!(cache.contains(&d(1)) && cache.contains(&d(3)) && !cache.contains(&d(2)));
    let s = cache.stats();
    assert_eq!(
        (s.hits, s.misses, s.evictions, s.entries, s.bytes),
        (1, 3, 1, 2, 2 * size)
    );
    get(&mut cache, 2);
    assert_eq!(loads, 4);
    // Too big for the budget: returned, not kept.
    let mut tiny = AdapterCache::new(size - 1);
    assert!(
        tiny.get_or_try_insert_with(d(9), || Ok::<_, ()>(la.adapter.clone()))
            .is_ok()
    );
    assert_eq!(tiny.stats().entries, 0);
}

#[test]
fn f16_decode_path_matches_f16_prefill() {
    // Single-token decode steps in f16 agree with one multi-token f16 forward and the f32 reference.
    let m = model("untied_gqa_sharded", DType::F16);
    let ids = reference().encodings[1].clone();
    let mut c = Cache::new(&m.model, 1, ids.len()).expect("cache");
    let full = m
        .model
        .forward(&m.model.tokens_tensor(&ids).expect("ids"), None, &mut c)
        .expect("forward");
    let mut c = Cache::new(&m.model, 1, ids.len()).expect("cache");
    let steps: Vec<Tensor> = ids
        .iter()
        .map(|&t| {
            m.model
                .forward(&m.model.tokens_tensor(&[t]).expect("id"), None, &mut c)
                .expect("step")
        })
        .collect();
    let stepped = Tensor::cat(&steps, 1).expect("cat");
    let d = max_abs_diff(&full, &stepped);
    let want = reference_logits("untied_gqa_sharded/p1");
    let scale = max_abs_diff(&want, &want.zeros_like().expect("zeros"));
    assert!(d < 0.02 * scale, "f16 step vs prefill: {d} (scale {scale})");
    let d32 = max_abs_diff(&stepped.squeeze(0).expect("squeeze"), &want);
    assert!(
        d32 < 0.05 * scale,
        "f16 steps vs f32 reference: {d32} (scale {scale})"
    );
}
