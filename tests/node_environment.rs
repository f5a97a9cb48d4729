//! The real `tandem-node` binary and its environment: `LD_PRELOAD` / `LD_LIBRARY_PATH` at
//! start → it refuses to start; a variable that changes its behaviour (`RUST_LOG`,
//! `RAYON_NUM_THREADS`, …) must be pinned, with the same value, by the measured config's
//! `[environment]` table (`tandem_node::node::environ`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tandem_tests::node::*;

fn bin() -> PathBuf {
    tandem_tests::bins::path("tandem-node")
}

/// `tandem-node serve` for `f` with only `vars` (of the variables a node looks at) set.
fn serve(f: &Fleet, vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    tandem_node::node::environ::scrub(&mut c);
    c.arg("serve")
        .arg("--config")
        .arg(&f.config_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--identity")
        .arg(&f.identity)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs the node to its exit; (stdout, stderr). It must exit non-zero.
async fn refused(mut cmd: Command) -> (String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the node started: {stdout} {stderr}");
    assert!(!stdout.contains("serving"), "it bound a port: {stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_variables_at_start_refuse_to_start() {
    let f = fleet(&bin(), "", true).await;
    for (name, value) in [
        ("LD_PRELOAD", "/nonexistent/tandem-test-preload.so"),
        ("LD_LIBRARY_PATH", "/nonexistent/tandem-test-lib"),
        ("LD_AUDIT", "/nonexistent/tandem-test-audit.so"),
    ] {
        let (_, stderr) = refused(serve(&f, &[(name, value)])).await;
        assert!(
            stderr.contains(&format!("{name} is set"))
                && stderr.contains("no LD_* variable is allowed"),
            "{name}: {stderr}"
        );
        // Even a variable the config pins cannot make it acceptable, and `--check` says so too.
        let mut check = serve(&f, &[(name, value)]);
        check.arg("--check");
        let (_, stderr) = refused(check).await;
        assert!(stderr.contains(&format!("{name} is set")), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behavioural_variables_run_only_as_the_measured_config_pins_them() {
    // The release measures this config, so RUST_LOG=debug is part of what a verifier accepted.
    let f = fleet(&bin(), "[environment]\nRUST_LOG = \"debug\"\n", true).await;

    // Pinned and set to the pinned value: the node starts and serves.
    let mut child = serve(&f, &[("RUST_LOG", "debug")]).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("serving "), "first stdout line {line:?}");

    // Pinned but absent, set to another value, or another behavioural variable beside it.
    let (_, e) = refused(serve(&f, &[])).await;
    assert!(
        e.contains("pins RUST_LOG but it is not set"),
        "missing: {e}"
    );
    let (_, e) = refused(serve(&f, &[("RUST_LOG", "trace")])).await;
    assert!(
        e.contains("RUST_LOG is set to another value than the one the config's [environment] pins"),
        "differs: {e}"
    );
    let (_, e) = refused(serve(
        &f,
        &[("RUST_LOG", "debug"), ("RAYON_NUM_THREADS", "1")],
    ))
    .await;
    assert!(
        e.contains(
            "RAYON_NUM_THREADS is set (1 bytes) but the config's [environment] does not list it"
        ),
        "unpinned: {e}"
    );

    // A config without [environment] refuses each variable the node or its libraries read.
    let plain = fleet(&bin(), "", true).await;
    for name in [
        "RUST_LOG",
        "RAYON_NUM_THREADS",
        "CANDLE_DEQUANTIZE_ALL",
        "TOKIO_WORKER_THREADS",
        "TSS2_LOG",
        "MALLOC_ARENA_MAX",
        "https_proxy",
    ] {
        let (_, e) = refused(serve(&plain, &[(name, "1")])).await;
        assert!(
            e.contains(&format!("{name} is set")) && e.contains("[environment]"),
            "{name}: {e}"
        );
    }
}
