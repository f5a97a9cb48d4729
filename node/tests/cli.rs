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

/// A config directory `serve --check` accepts: the embedded device model, a release file and an
/// identity directory (`--check` checks that they exist; it loads nothing).
fn check_world(top: &str, limits: &str) -> (tempfile::TempDir, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) =
        tandem_attest::log::NoteSigner::generate_with_rng(&mut rand::rngs::OsRng, "log.example")
            .unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/device");
    let text = format!(
        "{top}log_url = \"http://127.0.0.1:1\"\nlog_key = \"{}\"\nrelease_bundle = \"r.json\"\n\
         [[models]]\ndir = \"{}\"\n[root_of_trust]\nkind = \"software\"\n[limits]\n{limits}",
        signer.vkey(),
        model.display()
    );
    std::fs::write(dir.path().join("node.toml"), text).unwrap();
    std::fs::write(dir.path().join("r.json"), b"{}").unwrap();
    let id = dir.path().join("id");
    std::fs::create_dir(&id).unwrap();
    std::fs::write(id.join("identity.key.pem"), b"").unwrap();
    std::fs::write(id.join("identity.cert.json"), b"").unwrap();
    // `cargo test` sets LD_LIBRARY_PATH, which the node refuses (`tests/node_environment.rs`).
    let out = tandem_node::node::environ::scrub(&mut Command::new(BIN))
        .args(["serve", "--check", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.path().join("node.toml"))
        .arg("--identity")
        .arg(&id)
        .output()
        .unwrap();
    (dir, out)
}

/// The attack's values, in the real process: `--check` refuses each, naming the field, with
/// no panic; the same file with sane values passes.
#[test]
fn check_refuses_unbounded_settings() {
    let (_d, ok) = check_world("", "deadline_secs = 60\nqueue_depth = 64\n");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for (top, limits, field) in [
        (
            "",
            "deadline_secs = 9223372036854775807\n",
            "limits.deadline_secs",
        ),
        (
            "",
            "queue_depth = 4611686018427387904\n",
            "limits.queue_depth",
        ),
        ("", "queue_depth = 18446744073709551615\n", "queue_depth"),
        (
            "key_lifetime_secs = 18446744073709551615\n",
            "",
            "key_lifetime_secs",
        ),
    ] {
        let (_d, out) = check_world(top, limits);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{top}{limits}: {err}");
        assert!(err.contains(field), "{top}{limits}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty());
    }
}
