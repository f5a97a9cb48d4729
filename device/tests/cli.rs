//! The `tandem` binary's client commands on the embedded device model (local route; the
//! remote route is exercised end to end in `node/tests/e2e_device.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ask_json_is_one_object_with_route_and_reason() {
    let o = tandem(&["ask", "The king said", "--max-tokens", "12", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["route"], "local");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("fit the local budget"),
        "{v}"
    );
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 12);
    assert_eq!(v["completion_tokens"], 12);
    assert!(v["receipt"].is_null());
    assert!(!v["text"].as_str().unwrap().is_empty());
    // Greedy decoding is deterministic: the same request gives the same tokens.
    let again: serde_json::Value = serde_json::from_slice(
        &tandem(&["ask", "The king said", "--max-tokens", "12", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(again["token_ids"], v["token_ids"]);
}

#[test]
fn ask_streams_text_then_says_where_it_ran() {
    let o = tandem(&["ask", "The king said", "--max-tokens", "8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!o.stdout.is_empty());
    let e = stderr(&o);
    assert!(e.contains("[ran local on the device model:"), "{e}");
}

#[test]
fn task_adapter_wraps_the_input_in_the_task_prompt() {
    let o = tandem(&[
        "ask",
        "Thsi is a sentnce.",
        "--adapter",
        "proofread",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // "Task: proofread\nInput: Thsi is a sentnce.\nOutput:" is longer than the raw input.
    let raw: serde_json::Value = serde_json::from_slice(
        &tandem(&[
            "ask",
            "Thsi is a sentnce.",
            "--adapter",
            "proofread",
            "--raw",
            "--max-tokens",
            "8",
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    assert!(
        v["prompt_tokens"].as_u64().unwrap() > raw["prompt_tokens"].as_u64().unwrap(),
        "{v} vs {raw}"
    );
    assert!(v["adapter_digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn requests_that_cannot_run_fail_with_the_reason() {
    for (args, want) in [
        (
            vec!["ask", "hi", "--model", "server"],
            "the server model runs only on nodes, but no gateway",
        ),
        (vec!["ask", "hi", "--route", "remote"], "no gateway"),
        (
            vec!["ask", "hi", "--adapter", "summarize", "--route", "local"],
            "no adapter `summarize` (installed: proofread, truecase)",
        ),
        (
            vec!["ask", "hi", "--max-tokens", "300", "--route", "local"],
            "exceed the local budget of 256",
        ),
        (vec!["ask", "hi", "--route", "cloud"], "unknown route"),
        // Issue 19 (6): zero new tokens is refused, not an empty success.
        (vec!["ask", "hi", "--max-tokens", "0"], "--max-tokens"),
        (vec!["chat", "--max-tokens", "0"], "--max-tokens"),
        (
            vec!["ask", "hi", "--gateway", "http://127.0.0.1:1"],
            "no trust policy",
        ),
        (vec!["nodes"], "no gateway and trust policy are configured"),
    ] {
        let o = tandem(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
}

#[test]
fn config_init_writes_a_loadable_config_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tandem.json");
    let o = tandem(&["config", "init", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = tandem_device::Config::load(&out).expect("loads");
    assert!(cfg.models.device.unwrap().join("config.json").is_file());
    let o = tandem(&["config", "init", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"));
    // The written config drives `ask`.
    let o = tandem(&[
        "ask",
        "The king said",
        "--max-tokens",
        "4",
        "--json",
        "--config",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{\"routing\":{\"candidates\":99}}").unwrap();
    let o = tandem(&["ask", "x", "--config", bad.to_str().unwrap()]);
    assert!(stderr(&o).contains("routing.candidates"), "{}", stderr(&o));
}

#[test]
fn chat_answers_each_line_locally_and_ends_on_an_empty_line() {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["chat", "--max-tokens", "6", "--temperature", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"The king said\nAnd the queen\n\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 2, "{out}");
    assert!(stderr(&o).contains("stays on this device"));
}
