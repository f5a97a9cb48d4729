//! The `tandem model` CLI run as a real process on the tandem-model fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures")
}

fn tandem(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run tandem");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_and_inspect() {
    let model = fixtures().join("tied_gqa");
    let m = model.display().to_string();
    let (ok, out, err) = tandem(&[
        "model",
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hello world",
        "--max-tokens",
        "6",
        "--temperature",
        "0.7",
        "--seed",
        "5",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one json object");
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["tokens"], 6);
    let (ok2, out2, _) = tandem(&[
        "model",
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hello world",
        "--max-tokens",
        "6",
        "--temperature",
        "0.7",
        "--seed",
        "5",
        "--json",
    ]);
    let v2: serde_json::Value = serde_json::from_str(out2.trim()).expect("json");
    assert!(ok2);
    assert_eq!(v["text"], v2["text"], "same seed, same text");

    let (ok, out, err) = tandem(&["model", "inspect", &m, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["layers"], 2);
    assert_eq!(v["tied_embeddings"], true);
    assert!(v["digest"].as_str().expect("digest").starts_with("sha256:"));

    let (ok, _, err) = tandem(&["model", "inspect", "/nonexistent-dir"]);
    assert!(!ok);
    assert!(err.contains("config.json"), "{err}");
}
