//! `tandem-node` run as a real process: it offers only what a node runs, and a bad config is a
//! clear error before anything is loaded or bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem-node");

#[test]
fn offers_only_node_commands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("serve") && help.contains("tpm-ak"), "{help}");
    for gone in ["gateway", "dev", " ca "] {
        assert!(
            !help.contains(gone),
            "`{gone}` is not a node command:\n{help}"
        );
    }
}

#[test]
fn missing_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("node.toml");
    let mut cmd = Command::new(BIN);
    // `cargo test` sets LD_LIBRARY_PATH, which the node refuses (`tests/node_environment.rs`).
    tandem_node::node::environ::scrub(&mut cmd);
    let out = cmd
        .args(["serve", "--check", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node.toml"), "names the file: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty());
}
