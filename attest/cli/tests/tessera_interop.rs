//! Tandem's log reader against a log written by another implementation: Tessera's 15-entry
//! POSIX test log (`tests/fixtures/tessera-log/`, see its README), served over loopback as any
//! static file server would.
//!
//! - The library (`tandem_log::http::LogClient` and `tandem_attest::log`): every checkpoint
//!   (sizes 0–15) opens under Tessera's key; at every size the entry bundle replays to the
//!   checkpoint's root and the hash tile equals the recomputed tree; every entry is provably
//!   included at every size that has it; every pair of sizes is provably consistent.
//! - The `attest` binary: `log audit`, `log prove` of every entry, `log checkpoint --since` every
//!   older checkpoint.
//! - A flipped byte in any file of the log (first, middle and last byte of each) is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use tandem_attest::log::merkle::MemoryTree;
use tandem_attest::log::tile::{self, TileKind, TilePath};
use tandem_attest::log::{NoteVerifier, note, verify_consistency};
use tandem_log::http::LogClient;

const BIN: &str = env!("CARGO_BIN_EXE_attest");
const VKEY: &str = "example.com/log/testdata+33d7b496+AeHTu4Q3hEIMHNqc6fASMsq3rKNx280NI+oO5xCFkkSx";
const ENTRIES: [&str; 15] = [
    "one", "two", "three", "four", "five", "six", "seven", "eit", "nain", "ten", "ileven", "twelf",
    "threeten", "fourten", "fivten",
];

type Files = Arc<RwLock<BTreeMap<String, Vec<u8>>>>;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tessera-log")
}

/// Every file of the log, by its path relative to the log's root (the README excluded).
fn load(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.file_name().is_some_and(|n| n != "README.md") {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

async fn serve_file(State(files): State<Files>, uri: Uri) -> axum::response::Response {
    let path = uri.path().trim_start_matches('/');
    match files.read().unwrap().get(path) {
        Some(b) if path.starts_with("checkpoint") => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            b.clone(),
        )
            .into_response(),
        Some(b) => b.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A static file server for `files` on loopback (its own thread and runtime).
fn serve(files: Files) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().fallback(serve_file).with_state(files);
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn err(what: String, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Every file-level check: at each size 0–15 the checkpoint opens under the key, the entry
/// bundle replays to its root, and the hash tile equals the recomputed tree. Returns the roots.
async fn check_files(c: &LogClient, key: &NoteVerifier) -> Result<Vec<[u8; 32]>, String> {
    let mut roots = Vec::new();
    for size in 0..=15u64 {
        let name = format!("checkpoint.{size}");
        let bytes = c.get(&name).await.map_err(|e| err(name.clone(), e))?;
        let cp =
            note::open_checkpoint(&bytes, key, None, None).map_err(|e| err(name.clone(), e))?;
        if cp.checkpoint().size != size {
            return Err(format!("{name} has size {}", cp.checkpoint().size));
        }
        let mut tree = MemoryTree::new();
        if let Some(t) = TilePath::for_tree(TileKind::Entries, 0, size) {
            let entries = c.entry_bundle(&t).await.map_err(|e| err(t.to_path(), e))?;
            for e in &entries {
                tree.push(e);
            }
            let want: Vec<&[u8]> = ENTRIES[..size as usize]
                .iter()
                .map(|s| s.as_bytes())
                .collect();
            if entries.iter().map(Vec::as_slice).collect::<Vec<_>>() != want {
                return Err(format!("{} holds other entries", t.to_path()));
            }
        }
        let root = tree.root(size).map_err(|e| err(name.clone(), e))?;
        if root != cp.checkpoint().root_hash {
            return Err(format!(
                "the entries of size {size} do not hash to {name}'s root"
            ));
        }
        if let Some(t) = TilePath::for_tree(TileKind::Hash(0), 0, size) {
            let served = c.get_tile(&t).await.map_err(|e| err(t.to_path(), e))?;
            let want =
                tile::hash_tile_data(&tree, 0, 0, t.width).map_err(|e| err(t.to_path(), e))?;
            if served != want {
                return Err(format!("{} differs from the recomputed tree", t.to_path()));
            }
        }
        roots.push(root);
    }
    let newest = c
        .checkpoint(key)
        .await
        .map_err(|e| err("checkpoint".into(), e))?;
    if newest.checkpoint().size != 15 || newest.checkpoint().root_hash != roots[15] {
        return Err("`checkpoint` is not the checkpoint of size 15".into());
    }
    Ok(roots)
}

fn client(addr: SocketAddr) -> LogClient {
    LogClient::new(&format!("http://{addr}"), Duration::from_secs(10)).unwrap()
}

#[test]
fn tandem_verifies_every_checkpoint_inclusion_and_consistency_of_a_tessera_log() {
    let files: Files = Arc::new(RwLock::new(load(&fixture())));
    let addr = serve(files);
    let key = NoteVerifier::new(VKEY).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(addr);
        let roots = check_files(&c, &key).await.unwrap();
        // Every entry at every size that has it: an inclusion proof from the log's tiles,
        // verified against that size's checkpoint.
        let mut inclusions = 0;
        for size in 1..=15u64 {
            let bytes = c.get(&format!("checkpoint.{size}")).await.unwrap();
            let cp = note::open_checkpoint(&bytes, &key, None, None).unwrap();
            for index in 0..size {
                let bundle = c.inclusion(&cp, index).await.unwrap();
                bundle
                    .verify(ENTRIES[index as usize].as_bytes(), &key, None, None)
                    .unwrap_or_else(|e| panic!("entry {index} at size {size}: {e}"));
                // The same proof does not prove another entry.
                let other = ENTRIES[(index as usize + 1) % 15].as_bytes();
                assert!(bundle.verify(other, &key, None, None).is_err());
                inclusions += 1;
            }
        }
        assert_eq!(inclusions, 120);
        // Every pair of sizes.
        for new in 0..=15u64 {
            for old in 0..=new {
                let proof = c.consistency_proof(old, new).await.unwrap();
                verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &proof)
                    .unwrap_or_else(|e| panic!("{old} → {new}: {e}"));
                if old > 0 && old < new {
                    // Against a wrong old root it fails.
                    assert!(
                        verify_consistency(
                            old,
                            new,
                            &roots[new as usize],
                            &roots[new as usize],
                            &proof
                        )
                        .is_err()
                    );
                }
            }
        }
    });

    // The `attest` binary, as an auditor runs it.
    let log = format!("http://{addr}");
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&["log", "audit", "--log", &log, "--log-key", VKEY, "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["size"], 15);
    assert_eq!(v["origin"], "example.com/log/testdata");
    assert_eq!(v["entries_replayed"], 15);
    let dir = tempfile::tempdir().unwrap();
    for (i, e) in ENTRIES.iter().enumerate() {
        let f = dir.path().join(format!("entry{i}"));
        std::fs::write(&f, e).unwrap();
        let (ok, _, stderr) = run(&[
            "log",
            "prove",
            "--log",
            &log,
            "--log-key",
            VKEY,
            f.to_str().unwrap(),
            "--index",
            &i.to_string(),
        ]);
        assert!(ok, "entry {i}: {stderr}");
        // At the wrong index it is refused.
        let (ok, _, _) = run(&[
            "log",
            "prove",
            "--log",
            &log,
            "--log-key",
            VKEY,
            f.to_str().unwrap(),
            "--index",
            &((i + 1) % 15).to_string(),
        ]);
        assert!(!ok, "entry {i} proved at another index");
    }
    // An offline proof (C2SP tlog-proof) of Tessera's entry 7, checked with no log at hand.
    let proof = dir.path().join("eit.tlog-proof");
    let eit = dir.path().join("entry7");
    let (ok, _, stderr) = run(&[
        "log",
        "prove",
        "--log",
        &log,
        "--log-key",
        VKEY,
        eit.to_str().unwrap(),
        "--index",
        "7",
        "--tlog-proof",
        proof.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        std::fs::read_to_string(&proof)
            .unwrap()
            .starts_with("c2sp.org/tlog-proof@v1\nindex 7\n")
    );
    let (ok, stdout, stderr) = run(&[
        "log",
        "verify-proof",
        proof.to_str().unwrap(),
        "--entry",
        eit.to_str().unwrap(),
        "--log-key",
        VKEY,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (v["index"].as_u64(), v["tree_size"].as_u64()),
        (Some(7), Some(15))
    );
    let other = dir.path().join("entry8");
    let (ok, _, stderr) = run(&[
        "log",
        "verify-proof",
        proof.to_str().unwrap(),
        "--entry",
        other.to_str().unwrap(),
        "--log-key",
        VKEY,
    ]);
    assert!(!ok && stderr.contains("index 7"), "{stderr}");

    for size in 0..15 {
        let saved = fixture().join(format!("checkpoint.{size}"));
        let (ok, stdout, stderr) = run(&[
            "log",
            "checkpoint",
            "--log",
            &log,
            "--log-key",
            VKEY,
            "--since",
            saved.to_str().unwrap(),
            "--json",
        ]);
        assert!(ok, "since size {size}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(v["consistent_with_saved"].as_str().is_some(), "{stdout}");
    }
}

#[test]
fn a_flipped_byte_in_any_file_of_the_tessera_log_is_refused() {
    let original = load(&fixture());
    let files: Files = Arc::new(RwLock::new(original.clone()));
    let addr = serve(files.clone());
    let key = NoteVerifier::new(VKEY).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(addr);
        check_files(&c, &key)
            .await
            .expect("the untouched log verifies");
        let mut refused = 0;
        for (path, bytes) in &original {
            let mut offsets = vec![0, bytes.len() / 2, bytes.len().saturating_sub(1)];
            offsets.dedup();
            for &at in offsets.iter().filter(|&&at| at < bytes.len()) {
                for mask in [0x01u8, 0x80] {
                    let mut b = bytes.clone();
                    b[at] ^= mask;
                    files.write().unwrap().insert(path.clone(), b);
                    let r = check_files(&c, &key).await;
                    assert!(
                        r.is_err(),
                        "{path} with byte {at} flipped ({mask:#04x}) was accepted"
                    );
                    refused += 1;
                }
            }
            files.write().unwrap().insert(path.clone(), bytes.clone());
        }
        assert!(
            refused >= 6 * 47,
            "{refused} flips for {} files",
            original.len()
        );
        check_files(&c, &key).await.expect("restored");
    });
    // The binary refuses a flipped newest checkpoint and a flipped entry bundle, saying what.
    let log = format!("http://{addr}");
    for path in ["checkpoint", "tile/entries/000.p/15", "tile/0/000.p/15"] {
        let mut b = original[path].clone();
        let at = b.len() / 2;
        b[at] ^= 0x01;
        files.write().unwrap().insert(path.to_string(), b);
        let out = Command::new(BIN)
            .args(["log", "audit", "--log", &log, "--log-key", VKEY])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{path}: audit passed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.is_empty(), "{path}: no reason given");
        files
            .write()
            .unwrap()
            .insert(path.to_string(), original[path].clone());
    }
}
