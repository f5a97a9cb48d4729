//! The `tandem-lab` CLI run as a real process on the tandem-model fixtures.

use std::path::Path;
use std::process::Command;

use tandem_model::test_util::fixtures;

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

/// Perplexity of `prompt` 0 from the transformers reference logits.
fn reference_perplexity(key: &str) -> (f64, usize) {
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("reference.json")).expect("reference.json"),
    )
    .expect("json");
    let ids: Vec<usize> = r["encodings"][0]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as usize)
        .collect();
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).expect("reference");
    let t = tandem_model::weights::load_from_bytes(
        &bytes,
        Path::new("reference"),
        tandem_model::DType::F32,
        &tandem_model::Device::Cpu,
    )
    .expect("tensors");
    let logits: Vec<Vec<f32>> = t[key].to_vec2().expect("rows");
    let mut nll = 0f64;
    for i in 1..ids.len() {
        let row = &logits[i - 1];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        nll += lse - row[ids[i]] as f64;
    }
    ((nll / (ids.len() - 1) as f64).exp(), ids.len())
}

#[test]
fn perplexity_json_matches_reference() {
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("reference.json")).expect("reference.json"),
    )
    .expect("json");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("t.txt");
    std::fs::write(&text, r["prompts"][0].as_str().expect("prompt")).expect("write");
    for (adapter, key) in [
        (None, "tied_gqa/p0"),
        (Some("tied_gqa_lora"), "tied_gqa_lora/p0"),
    ] {
        let model = fixtures().join("tied_gqa");
        let mut args = vec![
            "perplexity".to_string(),
            "--model".into(),
            model.display().to_string(),
            "--text".into(),
            text.display().to_string(),
            "--json".into(),
        ];
        if let Some(a) = adapter {
            args.push("--adapter".into());
            args.push(fixtures().join(a).display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = tandem_lab(&args);
        assert!(ok, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one JSON object: {out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
        let (want, n) = reference_perplexity(key);
        let got = v["perplexity"].as_f64().expect("perplexity");
        assert_eq!(v["tokens"].as_u64(), Some(n as u64));
        assert!((got - want).abs() / want < 1e-4, "{key}: {got} vs {want}");
    }
}
