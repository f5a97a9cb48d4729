//! `tandem-gateway` run as a real process: config errors are clear and come before anything is
//! bound. (The gateway serving real nodes is tested in the top-level `tests/gateway_e2e.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem-gateway");

fn run_with(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_field_is_refused_before_binding() {
    let (ok, stdout, err) =
        run_with("listen = \"127.0.0.1:0\"\nnodes = [\"http://127.0.0.1:1\"]\nbogus = 1\n");
    assert!(!ok);
    assert!(
        err.contains("gateway config") && err.contains("bogus"),
        "{err}"
    );
    assert!(stdout.is_empty(), "nothing was bound or printed: {stdout}");
}

#[test]
fn missing_config_names_the_file() {
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/gateway.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
