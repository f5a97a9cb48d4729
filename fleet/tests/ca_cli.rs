//! `tandem-fleet ca …` run as a real process: the operator's fleet CA commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem-fleet");

/// The operator's CA commands: `ca init` makes a CA, `ca identity` a node identity that the
/// node loads and a policy pinning `ca.pub.pem` accepts; bad inputs are clear errors.
#[test]
fn ca_commands_make_identities_a_policy_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&std::ffi::OsStr]| Command::new(BIN).args(args).output().unwrap();
    let ca_dir = dir.path().join("ca");
    let o = run(&[
        "ca".as_ref(),
        "init".as_ref(),
        "--out".as_ref(),
        ca_dir.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Never overwrites a CA key.
    let o = run(&[
        "ca".as_ref(),
        "init".as_ref(),
        "--out".as_ref(),
        ca_dir.as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("must not exist yet"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(ca_dir.join("ca.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private: {mode:o}");
    }
    let node_dir = dir.path().join("node-1");
    let ca_key = ca_dir.join("ca.key.pem");
    // `tandem-fleet ca identity --ca-key KEY --subject node-1 --out DIR [--json]`.
    let identity = |key: &Path, out: &Path, json: bool| {
        let mut c = Command::new(BIN);
        c.args(["ca", "identity", "--subject", "node-1", "--ca-key"])
            .arg(key)
            .arg("--out")
            .arg(out);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let o = identity(&ca_key, &node_dir, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["subject"], "node-1");
    // The node loads it, and the certificate verifies under ca.pub.pem.
    let mut root = tandem_node::node::identity::load_software_root(
        &node_dir.join("identity.key.pem"),
        &node_dir.join("identity.cert.json"),
    )
    .unwrap();
    let ca_pub = tandem_attest::evidence::FleetCaKey::from_pem(
        &std::fs::read_to_string(ca_dir.join("ca.pub.pem")).unwrap(),
    )
    .unwrap();
    let claims = tandem_attest::evidence::EvidenceClaims {
        key_config_digest: tandem_attest::digest::Sha256Digest::of(b"k"),
        release_digest: tandem_attest::digest::Sha256Digest::of(b"r"),
        key_expiry: tandem_service::unix_now() + 60,
        nonce: None,
    };
    let ev = tandem_attest::evidence::RootOfTrust::attest(&mut root, &claims).unwrap();
    ev.verify_root(&[ca_pub]).unwrap();
    // A second identity into the same directory is refused; a wrong CA key file is explained.
    let again = identity(&ca_key, &node_dir, false);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds an identity"));
    let bad = identity(&ca_dir.join("ca.pub.pem"), &dir.path().join("x"), false);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a fleet CA key"));
}

/// `tandem-fleet dev --node-start-timeout` is bounded (1..=3600 s), checked before anything
/// starts.
#[test]
fn dev_refuses_unbounded_node_start_timeout() {
    for t in ["0", "3601", "18446744073709551615"] {
        let o = Command::new(BIN)
            .args(["dev", "--node-start-timeout", t, "--node-binary", BIN])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{t}: {err}");
        assert!(err.contains("--node-start-timeout"), "{t}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
