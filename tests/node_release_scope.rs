//! The node's release measures its own executable, so that executable must hold only node code:
//! a change to the gateway, the fleet tools or the CA must not change any node's release digest.
//! Checked two ways: `tandem-node`'s package depends on no package of those programs (so their
//! code cannot be compiled into it), and the built executable names no source file of theirs
//! (panic locations and line tables name every linked source file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
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
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of: BTreeMap<&str, &str> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    // Normal (non-dev) dependency edges of the resolved graph.
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in m["resolve"]["nodes"].as_array().unwrap() {
        let deps = n["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap())
            .collect();
        edges.insert(n["id"].as_str().unwrap(), deps);
    }
    let node = name_of
        .iter()
        .find(|(_, n)| **n == "tandem-node")
        .map(|(id, _)| *id)
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut todo = vec![node];
    while let Some(id) = todo.pop() {
        if seen.insert(id) {
            todo.extend(edges.get(id).into_iter().flatten().copied());
        }
    }
    let names: BTreeSet<&str> = seen.iter().map(|id| name_of[id]).collect();
    assert!(
        names.contains("tandem-model"),
        "sanity: the node runs the model"
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
