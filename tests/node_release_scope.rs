//! The node's release measures its own executable, so that executable must hold only node code:
//! a change to the gateway, the fleet tools or the CA must not change any node's release digest.
//! Checked two ways: `tandem-node`'s package depends on no package of those programs (so their
//! code cannot be compiled into it), and the built executable names no source file of theirs
//! (panic locations and line tables name every linked source file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;

/// Packages whose code must never reach the measured node binary.
const NOT_NODE: [&str; 4] = [
    "tandem-gateway",
    "tandem-fleet",
    "tandem-device",
    "tandem-attest-cli",
];

#[test]
fn node_package_depends_on_no_other_program() {
    // `cargo tree` resolves for this platform only, from the lock file, without the network.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "tandem-node",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
            "--locked",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains("tandem-model"),
        "sanity: the node runs the model: {names:?}"
    );
    for p in NOT_NODE {
        assert!(!names.contains(p), "tandem-node depends on {p}: {names:?}");
    }
}

#[test]
fn node_executable_holds_no_gateway_fleet_or_ca_code() {
    let bytes = std::fs::read(tandem_tests::bins::path("tandem-node")).unwrap();
    let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        has("node/src/node/"),
        "sanity: the node's own sources are named"
    );
    for dir in [
        "gateway/src/",
        "fleet/src/",
        "device/src/",
        "attest/cli/src/",
    ] {
        assert!(!has(dir), "tandem-node contains code from {dir}");
    }
}
