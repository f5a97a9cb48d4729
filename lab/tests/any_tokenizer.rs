//! `tandem-lab` on a model that is not Tandem's own: a Llama with a `<s>`/`</s>` byte-level BPE
//! and no `<|endoftext|>` (the tiny GGUF of `tandem_model::test_util::tiny_gguf`, imported).
//! Perplexity and a calibrated palletization run, ending documents with the model's own EOS.

use std::path::Path;
use std::process::Command;

use candle_core::quantized::GgmlDType;
use tandem_model::test_util::tiny_gguf;

fn tandem_lab(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-lab"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run tandem-lab");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn perplexity_and_calibrated_palletize_use_the_models_eos() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bytes, _) = tiny_gguf(GgmlDType::F32);
    let gguf = tmp.path().join("tiny.gguf");
    std::fs::write(&gguf, bytes).expect("write");
    let model = tmp.path().join("hf");
    tandem_model::import_gguf(&gguf, &model, tandem_model::DType::F32, &mut |_| {})
        .expect("import");
    let tk = std::fs::read_to_string(model.join("tokenizer.json")).expect("tokenizer");
    assert!(
        !tk.contains("<|endoftext|>"),
        "the fixture must not have Tandem's EOT"
    );

    let text = tmp.path().join("text.txt");
    let doc = "the tea that the cat ate at ten, then the rat; ".repeat(6);
    std::fs::write(
        &text,
        format!("{doc}\n<|endoftext|>\n{doc}\n<|endoftext|>\n{doc}\n"),
    )
    .expect("text");

    let (ok, out, err) = tandem_lab(&[
        "eval",
        "perplexity",
        "--model",
        &s(&model),
        "--text",
        &s(&text),
        "--seq-len",
        "16",
        "--json",
    ]);
    assert!(ok, "perplexity failed: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert!(v["perplexity"].as_f64().expect("ppl").is_finite(), "{v}");
    // The token cache is named after the EOS id the documents end with: the model's `</s>`.
    let cached: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".u16"))
        .collect();
    assert!(
        cached.iter().all(|n| n.ends_with("-257.u16")) && !cached.is_empty(),
        "{cached:?}"
    );

    let out_dir = tmp.path().join("pallet");
    let (ok, _, err) = tandem_lab(&[
        "palletize",
        "--model",
        &s(&model),
        "--bpw",
        "3",
        // 259 vocabulary rows: one table per row.
        "--group-size",
        "1",
        "--calibration",
        &s(&text),
        "--seq-len",
        "16",
        "--windows",
        "4",
        "--out",
        &s(&out_dir),
        "--json",
    ]);
    assert!(ok, "palletize --calibration failed: {err}");
    tandem_model::load_model(
        &out_dir,
        tandem_model::DType::F32,
        &tandem_model::Device::Cpu,
    )
    .expect("the palletized model loads");
}
