//! The `attest` binary end to end: release create → keygen → sign → log-entry → (log) →
//! attach → show → verify release; verify node (pass, tamper, equivocation), exit codes and
//! JSON reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tandem_attest::log::merkle::MemoryTree;
use tandem_attest::log::note::sign_checkpoint;
use tandem_attest::log::{Checkpoint, InclusionBundle, NoteSigner};
use tandem_attest::test_util::*;

fn attest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attest"))
        .args(args)
        .output()
        .expect("run attest")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stderr: {}\nstdout: {}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn release_lifecycle_through_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("tandem-node"), b"\x7fELF node").unwrap();
    std::fs::write(dir.join("node.toml"), b"[node]\nport = 1").unwrap();
    std::fs::create_dir_all(dir.join("model")).unwrap();
    std::fs::write(dir.join("model/config.json"), b"{}").unwrap();
    std::fs::write(dir.join("model/model.safetensors"), BASE).unwrap();
    std::fs::write(dir.join("adapter.safetensors"), ADAPTER).unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();

    ok(&attest(&[
        "release",
        "create",
        "--name",
        "tandem-node 0.3.0",
        "--node-binary",
        &p(dir, "tandem-node"),
        "--node-config",
        &p(dir, "node.toml"),
        "--base-model",
        &p(dir, "model"),
        "--adapter",
        &p(dir, "adapter.safetensors"),
        "--tokenizer",
        &p(dir, "tokenizer.json"),
        "-o",
        &p(dir, "manifest.json"),
    ]));
    let pubkey = ok(&attest(&[
        "release",
        "keygen",
        "-o",
        &p(dir, "release.key"),
    ]));
    assert!(pubkey.contains("BEGIN PUBLIC KEY"));
    // keygen refuses to overwrite a key.
    assert!(
        !attest(&["release", "keygen", "-o", &p(dir, "release.key")])
            .status
            .success()
    );
    ok(&attest(&[
        "release",
        "sign",
        &p(dir, "manifest.json"),
        "--key",
        &p(dir, "release.key"),
        "-o",
        &p(dir, "signed.json"),
    ]));
    ok(&attest(&[
        "release",
        "log-entry",
        &p(dir, "signed.json"),
        "-o",
        &p(dir, "entry.bin"),
    ]));

    // The log: the library's tree and checkpoint signer (what `attest log serve` runs).
    let (signer, _skey) = NoteSigner::generate_with_rng(&mut rand::rngs::OsRng, ORIGIN).unwrap();
    let mut tree = MemoryTree::new();
    tree.push(b"earlier entry");
    let idx = tree.push(&std::fs::read(dir.join("entry.bin")).unwrap());
    let size = tree.size();
    let note = sign_checkpoint(
        &Checkpoint::new(ORIGIN, size, tree.root(size).unwrap()),
        &signer,
    )
    .unwrap();
    let inc = InclusionBundle::new(idx, size, &tree.inclusion_proof(idx, size).unwrap(), &note);
    std::fs::write(
        dir.join("inclusion.json"),
        serde_json::to_vec(&inc).unwrap(),
    )
    .unwrap();
    ok(&attest(&[
        "release",
        "attach",
        &p(dir, "signed.json"),
        "--inclusion",
        &p(dir, "inclusion.json"),
        "-o",
        &p(dir, "bundle.json"),
    ]));

    let shown: serde_json::Value = serde_json::from_str(&ok(&attest(&[
        "release",
        "show",
        &p(dir, "bundle.json"),
        "--json",
    ])))
    .unwrap();
    assert_eq!(shown["logEntry"]["logIndex"], 1);
    let artifacts = shown["manifest"]["artifacts"].as_array().unwrap();
    assert!(
        artifacts
            .iter()
            .any(|a| a["name"] == "model/model.safetensors")
    );

    let policy = serde_json::json!({
        "fleetCaKeys": [tandem_attest::evidence::FleetCa::generate_with_rng(&mut rand::rngs::OsRng).public_key().to_pem()],
        "releaseSigners": [pubkey.trim()],
        "logKeys": [signer.vkey()],
        "clockSkewSecs": 60,
    });
    std::fs::write(
        dir.join("policy.json"),
        serde_json::to_vec(&policy).unwrap(),
    )
    .unwrap();
    let adapter_digest = tandem_attest::digest::Sha256Digest::of(ADAPTER).to_string();
    let out = ok(&attest(&[
        "verify",
        "release",
        &p(dir, "bundle.json"),
        "--policy",
        &p(dir, "policy.json"),
        "--require",
        &adapter_digest,
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["verified"]["logIndex"], 1);
    // The unlogged bundle fails step 2 and exits non-zero with a human report naming it.
    let o = attest(&[
        "verify",
        "release",
        &p(dir, "signed.json"),
        "--policy",
        &p(dir, "policy.json"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("[FAIL] 2. log inclusion"), "{text}");
}

#[test]
fn verify_node_cli_pass_tamper_and_equivocation() {
    let f = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("node.json"), f.bundle.to_json()).unwrap();
    std::fs::write(
        dir.join("policy.json"),
        f.policy_json(serde_json::json!({})),
    )
    .unwrap();
    let now = NOW.to_string();
    let base = ["verify", "node"];

    let out = ok(&attest(
        &[
            &base[..],
            &[
                &p(dir, "node.json"),
                "--policy",
                &p(dir, "policy.json"),
                "--now",
                &now,
                "--json",
            ],
        ]
        .concat(),
    ));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["steps"].as_array().unwrap().len(), 8);
    // RFC 9458 key config bytes, base64.
    let kc = B64
        .decode(report["verified"]["keyConfigs"].as_str().unwrap())
        .unwrap();
    assert_eq!(kc, key_configs().bytes());

    // Expired: exit 1, step 7 named.
    let late = (KEY_EXPIRY + 1000).to_string();
    let o = attest(
        &[
            &base[..],
            &[
                &p(dir, "node.json"),
                "--policy",
                &p(dir, "policy.json"),
                "--now",
                &late,
            ],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("[FAIL] 7. expiry"));

    // Tampered key configs: step 2.
    let mut v = f.bundle.to_value();
    let mut raw = key_configs().bytes().to_vec();
    raw[10] ^= 1;
    v["keyConfigs"] = B64.encode(&raw).into();
    std::fs::write(dir.join("tampered.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let o = attest(
        &[
            &base[..],
            &[
                &p(dir, "tampered.json"),
                "--policy",
                &p(dir, "policy.json"),
                "--now",
                &now,
                "--json",
            ],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["steps"][2]["status"], "fail");

    // Equivocating checkpoint given as the newest known one: step 5.
    let mut forked = f.leaves.clone();
    forked[0] = leaf_hash(b"other history");
    let fork = signed_checkpoint(
        &f.log,
        f.leaves.len() as u64,
        &mth(&forked),
        &[&f.witness],
        NOW - 30,
    );
    std::fs::write(dir.join("known.cp"), fork).unwrap();
    let o = attest(
        &[
            &base[..],
            &[
                &p(dir, "node.json"),
                "--policy",
                &p(dir, "policy.json"),
                "--now",
                &now,
                "--checkpoint",
                &p(dir, "known.cp"),
            ],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("[FAIL] 5.") && text.contains("EQUIVOCATION"),
        "{text}"
    );

    // An older known checkpoint plus its consistency proof file: passes.
    let old = signed_checkpoint(&f.log, 3, &mth(&f.leaves[..3]), &[&f.witness], NOW - 4000);
    std::fs::write(dir.join("old.cp"), old).unwrap();
    let proof: String = consistency_proof(3, &f.leaves)
        .iter()
        .map(|h| format!("{}\n", B64.encode(h)))
        .collect();
    std::fs::write(dir.join("proof.txt"), proof).unwrap();
    ok(&attest(
        &[
            &base[..],
            &[
                &p(dir, "node.json"),
                "--policy",
                &p(dir, "policy.json"),
                "--now",
                &now,
                "--checkpoint",
                &p(dir, "old.cp"),
                "--consistency-proof",
                &p(dir, "proof.txt"),
            ],
        ]
        .concat(),
    ));

    // A bad policy file is an error (exit 1 through anyhow) with the reason.
    std::fs::write(dir.join("bad.json"), b"{\"releaseSigners\": []}").unwrap();
    let o = attest(
        &[
            &base[..],
            &[&p(dir, "node.json"), "--policy", &p(dir, "bad.json")],
        ]
        .concat(),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("policy"));
}

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real log server (`attest log serve`) on a loopback port: append the release entry, attach
/// the proof, grow the log, and verify with `--log URL` (checkpoint + consistency proof fetched).
#[test]
fn verify_release_against_a_running_log() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let origin = "tandem.example/cli-log";
    let vkey = ok(&attest(&[
        "log",
        "keygen",
        "--origin",
        origin,
        "--out",
        &p(dir, "log.key"),
    ]));
    let vkey = vkey.trim().lines().last().unwrap().trim().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_attest"))
            .args([
                "log",
                "serve",
                "--dir",
                &p(dir, "log"),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--key",
                &p(dir, "log.key"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "log server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let f = Fixture::new();
    let unlogged = f.release_key.sign(manifest("tandem-node 0.4.0"));
    std::fs::write(dir.join("signed.json"), unlogged.to_json()).unwrap();
    std::fs::write(dir.join("other.bin"), b"someone else's entry").unwrap();
    ok(&attest(&[
        "log",
        "append",
        "--log",
        &url,
        "--log-key",
        &vkey,
        &p(dir, "other.bin"),
    ]));
    ok(&attest(&[
        "release",
        "log-entry",
        &p(dir, "signed.json"),
        "-o",
        &p(dir, "entry.bin"),
    ]));
    let inc = ok(&attest(&[
        "log",
        "append",
        "--log",
        &url,
        "--log-key",
        &vkey,
        &p(dir, "entry.bin"),
        "--json",
    ]));
    std::fs::write(dir.join("inclusion.json"), inc).unwrap();
    ok(&attest(&[
        "release",
        "attach",
        &p(dir, "signed.json"),
        "--inclusion",
        &p(dir, "inclusion.json"),
        "-o",
        &p(dir, "bundle.json"),
    ]));

    let policy = serde_json::json!({
        "fleetCaKeys": [f.ca.public_key().to_pem()],
        "releaseSigners": [f.release_key.public_key().to_pem()],
        "logKeys": [vkey],
        "clockSkewSecs": 60,
    });
    std::fs::write(
        dir.join("policy.json"),
        serde_json::to_vec(&policy).unwrap(),
    )
    .unwrap();
    let verify = || {
        attest(&[
            "verify",
            "release",
            &p(dir, "bundle.json"),
            "--policy",
            &p(dir, "policy.json"),
            "--log",
            &url,
            "--json",
        ])
    };
    let r: serde_json::Value = serde_json::from_str(&ok(&verify())).unwrap();
    assert_eq!(r["passed"], true, "{r}");

    // The log grows; the bundle's older checkpoint must be proven consistent with the new one.
    for i in 0..5 {
        std::fs::write(dir.join("more.bin"), format!("later entry {i}")).unwrap();
        ok(&attest(&[
            "log",
            "append",
            "--log",
            &url,
            "--log-key",
            &vkey,
            &p(dir, "more.bin"),
        ]));
    }
    let r: serde_json::Value = serde_json::from_str(&ok(&verify())).unwrap();
    assert_eq!(r["passed"], true, "{r}");
    let detail = r["steps"][3]["detail"].as_str().unwrap();
    assert!(detail.contains("consistent"), "{detail}");

    // A wrong log URL is a clear error.
    let o = attest(&[
        "verify",
        "release",
        &p(dir, "bundle.json"),
        "--policy",
        &p(dir, "policy.json"),
        "--log",
        "http://127.0.0.1:1",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is the log running at http://127.0.0.1:1?"),
        "{err}"
    );
}

/// `attest log serve --http-threads` is bounded (1..=1024) and checked before anything starts.
#[test]
fn log_serve_refuses_unbounded_http_threads() {
    let dir = tempfile::tempdir().unwrap();
    for n in ["0", "1025", "18446744073709551615"] {
        let o = attest(&[
            "log",
            "serve",
            "--dir",
            dir.path().join("log").to_str().unwrap(),
            "--key",
            dir.path().join("missing.key").to_str().unwrap(),
            "--http-threads",
            n,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{n}: {err}");
        assert!(err.contains("--http-threads"), "{n}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
