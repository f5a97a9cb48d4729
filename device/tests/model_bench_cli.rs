//! `tandem model bench` run as a real process on the tandem-model toy fixture: the JSON it
//! prints per run, `--threads` reaching the thread pool, and its errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn toy_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tied_gqa")
}

fn tandem(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RAYON_NUM_THREADS")
        .output()
        .expect("run tandem");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bench(extra: &[&str]) -> (bool, String, String) {
    let m = toy_model().display().to_string();
    let mut args = vec!["model", "bench", "--model", m.as_str()];
    args.extend_from_slice(extra);
    tandem(&args)
}

#[test]
fn bench_prints_one_json_object_per_run() {
    let (ok, out, err) = bench(&[
        "--prompt-tokens",
        "12",
        "--new-tokens",
        "5",
        "--threads",
        "1",
        "--repeat",
        "2",
        "--json",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one line per run: {out}");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one json object per line");
        assert_eq!(v["run"], i);
        assert_eq!(v["prompt_tokens"], 12);
        assert_eq!(v["new_tokens"], 5);
        assert_eq!(v["threads"], 1);
        assert_eq!(v["dtype"], "f32");
        assert!(v["cpus"].as_u64().expect("cpus") >= 1);
        for k in [
            "prefill_s",
            "prefill_tok_s",
            "ttft_s",
            "decode_s",
            "decode_tok_s",
            "load_s",
        ] {
            let x = v[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} is a number: {v}"));
            assert!(x.is_finite() && x > 0.0, "{k} = {x}");
        }
        assert!(v["ttft_s"].as_f64() >= v["prefill_s"].as_f64());
        let rss = v["peak_rss_bytes"].as_u64().expect("peak RSS");
        let weights = v["weight_bytes"].as_u64().expect("weight bytes");
        assert!(weights > 0 && rss > weights, "rss {rss} weights {weights}");
        // 2 layers x K and V x 2 KV heads x (12 + 5 + 1) slots x 16 dims x 4 bytes.
        assert_eq!(v["kv_cache_bytes"], 2 * 2 * 2 * 18 * 16 * 4);
        // One rayon worker and the main thread (nothing else is running in this process).
        let t = v["os_threads"].as_u64().expect("os thread count");
        assert!(t <= 2, "--threads 1 left {t} OS threads");
        assert_eq!(v["loadavg"].as_array().expect("loadavg").len(), 3);
        assert!(
            v["model_digest"]
                .as_str()
                .expect("digest")
                .starts_with("sha256:")
        );
    }

    // Two threads: the pool grows to two workers.
    let (ok, out, err) = bench(&[
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "2",
        "--threads",
        "2",
        "--dtype",
        "f16",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["threads"], 2);
    assert_eq!(v["dtype"], "f16");
    assert_eq!(v["os_threads"], 3, "main thread and two workers: {v}");

    // Without --json: a human summary on stdout.
    let (ok, out, err) = bench(&["--prompt-tokens", "4", "--new-tokens", "2"]);
    assert!(ok, "{err}");
    assert!(out.contains("decode") && out.contains("tok/s"), "{out}");
}

#[test]
fn bench_refuses_bad_input() {
    for (args, needle) in [
        (
            &["--prompt-tokens", "0"][..],
            "--prompt-tokens must be at least 1",
        ),
        (
            &["--new-tokens", "0"][..],
            "--new-tokens must be at least 1",
        ),
        (&["--repeat", "0"][..], "--repeat must be at least 1"),
        (&["--threads", "0"][..], "--threads must be at least 1"),
        (
            &["--prompt-tokens", "120", "--new-tokens", "8"][..],
            "the model's context is 128 tokens",
        ),
    ] {
        let (ok, out, err) = bench(args);
        assert!(!ok, "{args:?} should fail: {out}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
    }
    let (ok, _, err) = tandem(&["model", "bench", "--model", "/nonexistent-model-dir"]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent-model-dir") && err.contains("does not exist"),
        "{err}"
    );
}
