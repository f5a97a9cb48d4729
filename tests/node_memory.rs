//! Plaintext in a node's memory after a request: a real `tandem-node serve` process gets a
//! sealed request (real HPKE, real socket) whose prompt carries a canary; after the answer
//! ended, every readable mapping of the node (`/proc/PID/maps` + `/proc/PID/mem`) is scanned
//! and the canary must be absent (`tandem_node::zeroing`, the tokenizer without word cache).
//!
//! Controls, so the scan can fail: the same scan finds a second canary that is live in the
//! node's memory for its whole life (an environment variable of the node process), and a
//! canary the test process holds on its own heap.
//!
//! Reading another process's memory needs root (or ptrace rights over it), as CI runs; without
//! them the test says so and passes without scanning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_tests::node::*;

fn bin() -> PathBuf {
    tandem_tests::bins::path("tandem-node")
}

/// Offsets of `needle` in every readable mapping of process `pid`; `Err` if its memory cannot
/// be opened at all.
fn scan(pid: u32, needle: &[u8]) -> std::io::Result<Vec<(String, u64)>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut hits = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut scanned = 0u64;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let name = line
            .split_whitespace()
            .nth(5)
            .unwrap_or("[anon]")
            .to_owned();
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let mut at = start;
        // Chunks overlap by needle.len() - 1 so a canary across a chunk edge is found.
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let Ok(n) = mem.read_at(&mut buf[..want], at) else {
                break;
            };
            if n == 0 {
                break;
            }
            scanned += n as u64;
            for (i, w) in buf[..n].windows(needle.len()).enumerate() {
                if w == needle {
                    hits.push((name.clone(), at + i as u64));
                }
            }
            if n < needle.len() {
                break;
            }
            at += (n - (needle.len() - 1)) as u64;
        }
    }
    assert!(scanned > 1 << 20, "scanned only {scanned} bytes of {pid}");
    Ok(hits)
}

fn can_read_other_processes() -> bool {
    // Root, or at least allowed to open our own child's memory: tried on the node itself.
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_requests_prompt_is_not_in_the_nodes_memory() {
    // Built at run time so the test binary's own text does not hold the whole string either.
    let canary = format!("Qz{}Wv{}Kp", "vkCanaryXplm", "JrTqMemoryScan");
    let control = format!("Ct{}Zx{}", "rlCanaryLiveEnv", "QwLiveControl");
    // Control 1: the scan finds a canary on this process's heap while it is live.
    let held = format!("{control}-in-the-test-heap");
    let hits = scan(std::process::id(), held.as_bytes()).unwrap();
    assert!(!hits.is_empty(), "the scanner finds a live heap canary");

    let f = fleet(&bin(), "", true).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    tandem_node::node::environ::scrub(&mut cmd);
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(&f.config_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--identity")
        .arg(&f.identity)
        // Control 2: a canary the node holds all its life (its environment block).
        .env("TANDEM_TEST_LIVE_CONTROL", &control)
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("first stdout line {line:?}"))
        .parse()
        .unwrap();
    if !can_read_other_processes() && scan(pid, control.as_bytes()).is_err() {
        eprintln!("skipped: reading /proc/{pid}/mem needs root (CI runs this test as root)");
        let _ = child.kill();
        let _ = child.wait();
        return;
    }

    let mut c = connect(addr).await;
    let d = digests();
    let configs = key_configs(&mut c).await;
    // A served request (the canary several times, through tokenizer, tensors and output), and
    // one refused after opening (too many new tokens for the context), with the adapter.
    let prompt = format!("Please fix {canary} and {canary}, then {canary} again.");
    let (sealed, ctx) = seal(&configs, d.model, Some(d.adapter), &prompt, 24, now());
    let ans = submit(&mut c, sealed, ctx).await.unwrap();
    assert!(ans.receipt.is_some(), "{:?}", ans.error);
    let (sealed, ctx) = seal(&configs, d.model, None, &prompt, 250, now());
    let _ = submit(&mut c, sealed, ctx).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let live = scan(pid, control.as_bytes()).unwrap();
    let left = scan(pid, canary.as_bytes()).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let stderr = err_thread.join().unwrap();
    assert!(
        !live.is_empty(),
        "control: the scan finds the node's live canary (stderr: {stderr})"
    );
    assert!(
        left.is_empty(),
        "the finished request's prompt is still in the node's memory at {left:?}"
    );
}
