//! Tandem's log read by a tlog-tiles client that is not Tandem's: `tests/py/tlog_tiles_client.py`
//! (written from the C2SP specs in Python, sharing no code with Tandem; it also reads Tessera's
//! test log) against a real `attest log serve` holding 300 entries (a full tile, a partial
//! tile, and a level-1 tile): the checkpoint's content type and signature, every entry bundle
//! and hash tile at its exact path, the recomputed root. A wrong key is refused (the check can
//! fail).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use tandem_tests::daemon::python;
use tandem_tests::real_model::repo_file;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn attest(args: &[&str]) -> String {
    let out = Command::new(tandem_tests::bins::path("attest"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "attest {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn client(url: &str, vkey: &str) -> (bool, String) {
    let out = Command::new(python())
        .arg(repo_file("tests/py/tlog_tiles_client.py"))
        .args([url, vkey])
        .output()
        .unwrap();
    tandem_tests::procs::outcome(&out)
}

#[test]
fn an_independent_tlog_tiles_client_reads_tandems_log() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("log.key");
    let vkey = attest(&[
        "log",
        "keygen",
        "--origin",
        "interop.tandem/log",
        "--out",
        key.to_str().unwrap(),
    ]);
    let vkey = vkey.trim();
    let log_dir = dir.path().join("log");
    let mut child = Command::new(tandem_tests::bins::path("attest"))
        .args(["log", "serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&log_dir)
        .arg("--key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Kill(child);
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("attest log serve printed {line:?}"))
        .to_string();

    // 300 entries of different lengths, appended in batches.
    let entries_dir = dir.path().join("entries");
    std::fs::create_dir(&entries_dir).unwrap();
    let mut files = Vec::new();
    for i in 0..300 {
        let f = entries_dir.join(format!("{i:03}"));
        std::fs::write(&f, format!("entry {i} {}", "x".repeat(i % 17))).unwrap();
        files.push(f.to_str().unwrap().to_string());
    }
    for batch in files.chunks(100) {
        let mut args = vec!["log", "append", "--log", &url, "--log-key", vkey];
        args.extend(batch.iter().map(String::as_str));
        attest(&args);
    }

    let (ok, out) = client(&url, vkey);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["size"], 300, "{out}");
    assert_eq!(v["entries"], 300, "{out}");
    // Level 0: the full tile 000 and the partial 001.p/44; level 1: 000.p/1.
    assert_eq!(v["tiles"], 3, "{out}");
    assert_eq!(v["origin"], "interop.tandem/log", "{out}");

    // Another key: refused.
    let other = dir.path().join("other.key");
    let other_vkey = attest(&[
        "log",
        "keygen",
        "--origin",
        "interop.tandem/log",
        "--out",
        other.to_str().unwrap(),
    ]);
    let (ok, out) = client(&url, other_vkey.trim());
    assert!(!ok, "a checkpoint verified under another key: {out}");
}
