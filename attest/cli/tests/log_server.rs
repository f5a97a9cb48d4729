//! The log server as a real process on loopback: appends, proofs, audit, and crash safety
//! (SIGKILL at random points during concurrent appends, then reopen).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tandem_attest::log::batch;
use tandem_attest::log::merkle::MemoryTree;
use tandem_attest::log::note::{self, VerifiedCheckpoint};
use tandem_attest::log::tile::{self, TILE_WIDTH, TileKind, TilePath};
use tandem_attest::log::{BatchInclusion, CheckpointTracker, InclusionBundle, NoteVerifier};
use tandem_log::LogClient;

mod common;
use common::{BIN, Proc as Server};

fn keygen(dir: &Path) -> (PathBuf, NoteVerifier) {
    let key = dir.join("log.key");
    let out = Command::new(BIN)
        .args(["log", "keygen", "--origin", "test.tandem/log", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vkey = String::from_utf8(out.stdout).unwrap();
    (key, NoteVerifier::new(vkey.trim()).unwrap())
}

/// `attest log serve` of the log in `dir`, signed with `key`; `Err` is its stderr if it refuses
/// to start.
fn start_log(dir: &Path, key: &Path) -> Result<Server, String> {
    let mut args: Vec<std::ffi::OsString> = ["log", "serve", "--listen", "127.0.0.1:0", "--dir"]
        .map(Into::into)
        .to_vec();
    args.extend([dir.into(), "--key".into(), key.into()]);
    Server::try_start(args)
}

async fn get(c: &reqwest::Client, url: &str, path: &str) -> Vec<u8> {
    let r = c.get(format!("{url}/{path}")).send().await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.bytes().await.unwrap().to_vec()
}

async fn checkpoint(c: &reqwest::Client, url: &str, log: &NoteVerifier) -> VerifiedCheckpoint {
    note::open_checkpoint(&get(c, url, "checkpoint").await, log, None, None).unwrap()
}

/// Replay every entry bundle under the checkpoint; returns the entries (root checked).
async fn replay(
    c: &reqwest::Client,
    url: &str,
    cp: &VerifiedCheckpoint,
) -> (Vec<Vec<u8>>, MemoryTree) {
    let size = cp.checkpoint().size;
    let mut entries = Vec::new();
    let mut tree = MemoryTree::new();
    for i in 0..size.div_ceil(TILE_WIDTH) {
        let t = TilePath::for_tree(TileKind::Entries, i, size).unwrap();
        let b = get(c, url, &t.to_path()).await;
        for e in tile::parse_entry_bundle(&b, t.width).unwrap() {
            tree.push(&e);
            entries.push(e);
        }
    }
    assert_eq!(
        tree.root(size).unwrap(),
        cp.checkpoint().root_hash,
        "served entries match the checkpoint"
    );
    (entries, tree)
}

/// The published checkpoint file verifies, and the entry bundles and hash tiles on disk for its
/// size exist and hash to its root.
fn check_disk_backs_checkpoint(dir: &Path, log: &NoteVerifier, round: u32) {
    let Ok(b) = std::fs::read(dir.join("checkpoint")) else {
        return; // killed before the first checkpoint was published
    };
    let cp =
        note::open_checkpoint(&b, log, None, None).unwrap_or_else(|e| panic!("round {round}: {e}"));
    let size = cp.checkpoint().size;
    let mut tree = MemoryTree::new();
    for i in 0..size.div_ceil(TILE_WIDTH) {
        let t = TilePath::for_tree(TileKind::Entries, i, size).unwrap();
        let data = std::fs::read(dir.join(t.to_path())).unwrap_or_else(|e| {
            panic!(
                "round {round}: {} missing under checkpoint {size}: {e}",
                t.to_path()
            )
        });
        for e in tile::parse_entry_bundle(&data, t.width).unwrap() {
            tree.push(&e);
        }
    }
    assert_eq!(
        tree.root(size).unwrap(),
        cp.checkpoint().root_hash,
        "round {round}: bundles on disk back the checkpoint"
    );
    for t in tile::tiles_to_publish(0, size) {
        let TileKind::Hash(level) = t.kind else {
            continue;
        };
        let data = std::fs::read(dir.join(t.to_path())).unwrap_or_else(|e| {
            panic!(
                "round {round}: {} missing under checkpoint {size}: {e}",
                t.to_path()
            )
        });
        assert_eq!(
            data,
            tile::hash_tile_data(&tree, level, t.index, t.width).unwrap(),
            "round {round}: {}",
            t.to_path()
        );
    }
}

/// Append `entries` with one `POST /add-batch` and check every proof (nothing if empty).
async fn add_batch(url: &str, log: &NoteVerifier, entries: &[Vec<u8>]) -> Vec<InclusionBundle> {
    if entries.is_empty() {
        return Vec::new();
    }
    let r = reqwest::Client::new()
        .post(format!("{url}/add-batch"))
        .body(batch::encode_batch(entries).unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let answer: BatchInclusion = r.json().await.unwrap();
    let verified = answer.verify(entries, log, None, None).unwrap();
    let bundles = answer.bundles().unwrap();
    for (v, b) in verified.iter().zip(&bundles) {
        assert_eq!(v.index, b.index);
    }
    bundles
}

fn rt() -> tokio::runtime::Runtime {
    tandem_service::runtime(2).unwrap()
}

#[test]
fn serve_append_prove_audit_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, log) = keygen(tmp.path());
    let server = start_log(&tmp.path().join("log"), &key).unwrap();
    let vkey = log.vkey().to_owned();
    let cli = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let entry = tmp.path().join("entry");
    // Entries between the CLI's single appends go in batches (cheaper: one commit each).
    let mut pending: Vec<Vec<u8>> = Vec::new();
    for i in 0..300u32 {
        std::fs::write(&entry, format!("release {i}")).unwrap();
        if i % 100 == 0 || i == 299 {
            rt().block_on(add_batch(&server.url, &log, &std::mem::take(&mut pending)));
            let (ok, out, err) = cli(&[
                "log",
                "append",
                "--log",
                &server.url,
                "--log-key",
                &vkey,
                "--json",
                entry.to_str().unwrap(),
            ]);
            assert!(ok, "{err}");
            let b: InclusionBundle = serde_json::from_str(&out).unwrap();
            assert_eq!(b.index, u64::from(i));
            b.verify(format!("release {i}").as_bytes(), &log, None, None)
                .unwrap();
        } else if i % 10 == 5 {
            // Some single appends over plain HTTP too.
            rt().block_on(add_batch(&server.url, &log, &std::mem::take(&mut pending)));
            rt().block_on(async {
                let c = reqwest::Client::new();
                let r = c
                    .post(format!("{}/add", server.url))
                    .body(format!("release {i}"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            });
        } else {
            pending.push(format!("release {i}").into_bytes());
        }
    }
    let saved = tmp.path().join("saved.cp");
    let (ok, _, err) = cli(&[
        "log",
        "checkpoint",
        "--log",
        &server.url,
        "--log-key",
        &vkey,
        "--out",
        saved.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    std::fs::write(&entry, "release 7").unwrap();
    let (ok, out, err) = cli(&[
        "log",
        "prove",
        "--log",
        &server.url,
        "--log-key",
        &vkey,
        "--index",
        "7",
        entry.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("entry 7 is included"), "{out}");
    let (ok, _, _) = cli(&[
        "log",
        "prove",
        "--log",
        &server.url,
        "--log-key",
        &vkey,
        "--index",
        "8",
        entry.to_str().unwrap(),
    ]);
    assert!(!ok, "the wrong index must not prove");
    // More entries: five through the CLI in two batches, the rest in batches over HTTP.
    let files: Vec<String> = (300..305u32)
        .map(|i| {
            let f = tmp.path().join(format!("entry{i}"));
            std::fs::write(&f, format!("release {i}")).unwrap();
            f.to_str().unwrap().to_owned()
        })
        .collect();
    let base = ["log", "append", "--log", &server.url, "--log-key", &vkey];
    let mut args = base.to_vec();
    args.push("--json");
    args.extend(files[..3].iter().map(String::as_str));
    let (ok, out, err) = cli(&args);
    assert!(ok, "{err}");
    let bundles: Vec<InclusionBundle> = serde_json::from_str(&out).unwrap();
    assert_eq!(bundles.len(), 3);
    for (k, b) in bundles.iter().enumerate() {
        assert_eq!(b.index, 300 + k as u64);
        b.verify(format!("release {}", 300 + k).as_bytes(), &log, None, None)
            .unwrap();
    }
    let mut args = base.to_vec();
    args.extend(files[3..].iter().map(String::as_str));
    let (ok, out, err) = cli(&args);
    assert!(ok, "{err}");
    assert!(out.contains("entry304: entry 304 included"), "{out}");
    // A malformed batch is refused whole; a batch larger than one entry's body limit is fine.
    rt().block_on(async {
        let c = reqwest::Client::new();
        let r = c
            .post(format!("{}/add-batch", server.url))
            .body(vec![0u8, 5, b'a'])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
        assert!(r.text().await.unwrap().contains("malformed append batch"));
        let cp = checkpoint(&c, &server.url, &log).await;
        assert_eq!(cp.checkpoint().size, 305);
        // HTTP/2 (cleartext, prior knowledge) is served too.
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let r = h2
            .get(format!("{}/checkpoint", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.bytes().await.unwrap(), cp.note_bytes());
    });
    rt().block_on(async {
        let mut rest: Vec<Vec<u8>> = (305..600u32)
            .map(|i| format!("release {i}").into_bytes())
            .collect();
        // Entries 305 and 306 are long: their batch is over the 64 KiB limit of `POST /add`.
        for e in &mut rest[..2] {
            e.resize(40_000, b'.');
        }
        for chunk in rest.chunks(100) {
            add_batch(&server.url, &log, chunk).await;
        }
    });
    let (ok, out, err) = cli(&[
        "log",
        "audit",
        "--log",
        &server.url,
        "--log-key",
        &vkey,
        "--json",
        "--checkpoint",
        saved.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entries_replayed"], 600);
    assert_eq!(v["consistent_with_saved"], "Advanced { from: 300 }");
    // Tiles 0 and 1 are full now: their partial tiles were deleted, the current one is kept.
    let logdir = tmp.path().join("log");
    for gone in [
        "tile/0/000.p",
        "tile/0/001.p",
        "tile/entries/000.p",
        "tile/entries/001.p",
    ] {
        assert!(!logdir.join(gone).exists(), "{gone} was not pruned");
    }
    assert!(logdir.join("tile/0/002.p/88").is_file());
    assert!(logdir.join("tile/entries/002.p/88").is_file());
    // A client that knows only the old checkpoint (300 entries) still gets its tiles: the
    // reader falls back from the deleted partial tile to the full one.
    let old = note::open_checkpoint(&std::fs::read(&saved).unwrap(), &log, None, None).unwrap();
    rt().block_on(async {
        let reader = LogClient::new(&server.url, Duration::from_secs(10)).unwrap();
        let t = TilePath::for_tree(TileKind::Entries, 1, 300).unwrap();
        assert_eq!(t.width, 44);
        let entries = reader.entry_bundle(&t).await.unwrap();
        assert_eq!(entries.len(), 44);
        assert_eq!(entries[0], b"release 256");
        assert_eq!(entries[43], b"release 299");
        let inc = reader.inclusion(&old, 270).await.unwrap();
        inc.verify(b"release 270", &log, None, None).unwrap();
        let proof = reader.consistency_proof(300, 600).await.unwrap();
        let now = checkpoint(&reqwest::Client::new(), &server.url, &log).await;
        let mut tracker = CheckpointTracker::with_newest(old.checkpoint().clone());
        tracker.observe(&now, &proof).unwrap();
    });
    // The wrong log key is refused.
    let other = tmp.path().join("other.key");
    let o = Command::new(BIN)
        .args(["log", "keygen", "--origin", "test.tandem/log", "--out"])
        .arg(&other)
        .output()
        .unwrap();
    let other_vkey = String::from_utf8(o.stdout).unwrap();
    let (ok, _, err) = cli(&[
        "log",
        "checkpoint",
        "--log",
        &server.url,
        "--log-key",
        other_vkey.trim(),
    ]);
    assert!(!ok);
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn sigkill_during_appends_loses_no_acknowledged_entry() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let (key, log) = keygen(tmp.path());
    let dir = tmp.path().join("log");
    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut tracker = CheckpointTracker::new("test.tandem/log");
    let runtime = rt();
    for round in 0..8u32 {
        let server =
            start_log(&dir, &key).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let c = reqwest::Client::new();
        // After a crash: the checkpoint covers every acknowledged entry, the entries are the
        // ones acknowledged, and the new checkpoint extends every earlier one.
        runtime.block_on(async {
            let cp = checkpoint(&c, &server.url, &log).await;
            let (entries, tree) = replay(&c, &server.url, &cp).await;
            for (i, e) in &acked {
                assert_eq!(
                    entries.get(*i as usize),
                    Some(e),
                    "round {round}: acknowledged entry {i} lost or changed"
                );
            }
            let proof = match tracker.proof_needed(cp.checkpoint()) {
                Some((a, b)) => tree.consistency_proof(a, b).unwrap(),
                None => Vec::new(),
            };
            tracker
                .observe(&cp, &proof)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        });
        // Concurrent writers; kill the server at a random moment.
        let delay = Duration::from_millis(rng.gen_range(20..400));
        let url = server.url.clone();
        let results = runtime.block_on(async {
            let mut tasks = Vec::new();
            for w in 0..16u32 {
                let c = c.clone();
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    for k in 0..10_000u32 {
                        if w % 4 == 0 {
                            // Every fourth writer appends batches of 8.
                            let entries: Vec<Vec<u8>> = (0..8)
                                .map(|j| format!("round {round} writer {w} batch {k} entry {j}"))
                                .map(String::into_bytes)
                                .collect();
                            let body = batch::encode_batch(&entries).unwrap();
                            match c.post(format!("{url}/add-batch")).body(body).send().await {
                                Ok(r) if r.status().is_success() => {
                                    match r.json::<BatchInclusion>().await {
                                        Ok(a) => got
                                            .extend(a.bundles().unwrap().into_iter().zip(entries)),
                                        Err(_) => break,
                                    }
                                }
                                _ => break,
                            }
                            continue;
                        }
                        let body = format!("round {round} writer {w} entry {k}").into_bytes();
                        match c.post(format!("{url}/add")).body(body.clone()).send().await {
                            Ok(r) if r.status().is_success() => {
                                match r.json::<InclusionBundle>().await {
                                    Ok(b) => got.push((b, body)),
                                    Err(_) => break,
                                }
                            }
                            _ => break,
                        }
                    }
                    got
                }));
            }
            tokio::time::sleep(delay).await;
            server.kill();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        for (b, body) in results {
            b.verify(&body, &log, None, None).unwrap();
            acked.push((b.index, body));
        }
        // Before any recovery runs: the checkpoint left on disk is backed by the tiles on disk.
        check_disk_backs_checkpoint(&dir, &log, round);
        eprintln!(
            "round {round}: killed after {delay:?}, {} acknowledged so far",
            acked.len()
        );
    }
    assert!(!acked.is_empty());
    // A final clean open sees everything.
    let server = start_log(&dir, &key).unwrap();
    runtime.block_on(async {
        let c = reqwest::Client::new();
        let cp = checkpoint(&c, &server.url, &log).await;
        let (entries, _) = replay(&c, &server.url, &cp).await;
        for (i, e) in &acked {
            assert_eq!(&entries[*i as usize], e);
        }
    });
}

#[test]
fn damaged_storage_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keygen(tmp.path());
    let dir = tmp.path().join("log");
    {
        let server = start_log(&dir, &key).unwrap();
        rt().block_on(async {
            let c = reqwest::Client::new();
            for i in 0..50u32 {
                c.post(format!("{}/add", server.url))
                    .body(format!("e{i}"))
                    .send()
                    .await
                    .unwrap();
            }
        });
    }
    let wal = dir.join("entries.wal");
    let good = std::fs::read(&wal).unwrap();
    // An altered entry in the middle: the WAL no longer matches the published checkpoint.
    let mut bad = good.clone();
    bad[4] ^= 1;
    std::fs::write(&wal, &bad).unwrap();
    let err = start_log(&dir, &key).err().expect("must refuse");
    assert!(
        err.contains("WAL holds only") || err.contains("altered"),
        "{err}"
    );
    // Entries cut off below the published checkpoint: acknowledged entries missing.
    std::fs::write(&wal, &good[..good.len() / 2]).unwrap();
    let err = start_log(&dir, &key).err().expect("must refuse");
    assert!(err.contains("acknowledged entries are missing"), "{err}");
    // Restored: opens again.
    std::fs::write(&wal, &good).unwrap();
    start_log(&dir, &key).unwrap();
}

/// Issue 19, item 5: interior tiles deleted or damaged while the log was down (a lost
/// `tile/0/000`, `tile/entries/000`, a level-1 tile, a flipped byte in a hash tile) are rewritten
/// from the WAL at start, so every tile the log serves verifies; before, it started, reported
/// healthy and served 404.
#[test]
fn lost_or_damaged_interior_tiles_are_rebuilt_from_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, log) = keygen(tmp.path());
    let dir = tmp.path().join("log");
    // 600 entries: two full level-0 tiles and entry bundles, a partial third, and a level-1 tile.
    let entries: Vec<Vec<u8>> = (0..600u32)
        .map(|i| format!("entry {i}").into_bytes())
        .collect();
    {
        let server = start_log(&dir, &key).unwrap();
        rt().block_on(async {
            for chunk in entries.chunks(100) {
                add_batch(&server.url, &log, chunk).await;
            }
        });
    }
    let original: Vec<(PathBuf, Vec<u8>)> = ["tile/0/000", "tile/0/001", "tile/1/000.p/2"]
        .iter()
        .chain(&["tile/entries/000", "tile/entries/002.p/88"])
        .map(|p| {
            let path = dir.join(p);
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{p}: {e}"));
            (path, data)
        })
        .collect();
    // Lose three files, damage two.
    std::fs::remove_file(&original[0].0).unwrap();
    std::fs::remove_file(&original[2].0).unwrap();
    std::fs::remove_file(&original[3].0).unwrap();
    let mut bad = original[1].1.clone();
    bad[17] ^= 0x40;
    std::fs::write(&original[1].0, &bad).unwrap();
    let mut bad = original[4].1.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&original[4].0, &bad).unwrap();

    let server = start_log(&dir, &key).unwrap();
    let url = server.url.clone();
    // Every file is back, byte for byte, and the log serves a tree that verifies.
    for (path, data) in &original {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            data,
            "{} was not rebuilt from the WAL",
            path.display()
        );
    }
    check_disk_backs_checkpoint(&dir, &log, 0);
    rt().block_on(async {
        let c = reqwest::Client::new();
        let cp = checkpoint(&c, &url, &log).await;
        assert_eq!(cp.checkpoint().size, 600);
        let (served, _) = replay(&c, &url, &cp).await;
        assert_eq!(served, entries);
        let reader = LogClient::new(&url, Duration::from_secs(10)).unwrap();
        for index in [0, 255, 256, 511, 599] {
            reader
                .inclusion(&cp, index)
                .await
                .unwrap()
                .verify_under(&entries[index as usize], &cp)
                .unwrap();
        }
    });
    let stderr = server.kill();
    for p in [
        "tile/0/000 (missing)",
        "tile/0/001 (did not match the WAL)",
        "tile/entries/000 (missing)",
    ] {
        assert!(
            stderr.contains(&format!("rewrote {p} from the WAL")),
            "{p}: {stderr}"
        );
    }
}

/// Issue 19 (6): `attest log serve` stops gracefully on SIGTERM (what service managers and
/// Kubernetes send), not only on Ctrl-C: it exits 0 and the log reopens cleanly.
#[test]
fn sigterm_stops_the_log_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, log) = keygen(tmp.path());
    let dir = tmp.path().join("log");
    let mut server = start_log(&dir, &key).unwrap();
    rt().block_on(add_batch(
        &server.url,
        &log,
        &[b"one".to_vec(), b"two".to_vec()],
    ));
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attest log serve did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    drop(server);
    let again = start_log(&dir, &key).unwrap();
    let cp = rt().block_on(async { checkpoint(&reqwest::Client::new(), &again.url, &log).await });
    assert_eq!(cp.checkpoint().size, 2);
}
