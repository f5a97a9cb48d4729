//! `tandem serve` driven by the official `openai` Python package (`tests/py/openai_checks.py`,
//! in the environment `scripts/py/venv.sh` makes): chat and completions, streamed and not, on
//! TCP and the Unix socket, the local route, the remote route through a `tandem-fleet dev`
//! fleet, a wrong token, an unknown model, a too-long prompt, unsupported fields, the busy
//! queue and cancellation by disconnect; and SIGTERM ends the daemon with status 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;

use tandem_tests::daemon::{DaemonRun, run_py};
use tandem_tests::fleet::DevRun;

fn check(d: &DaemonRun, name: &str, token: Option<&str>) {
    let url = d.url();
    let mut args: Vec<&OsStr> = vec![
        name.as_ref(),
        "--url".as_ref(),
        url.as_ref(),
        "--socket".as_ref(),
        d.socket.as_os_str(),
    ];
    if let Some(t) = token {
        args.push(OsStr::new("--token"));
        args.push(OsStr::new(t));
    }
    let out = run_py("openai_checks.py", &args, &[]);
    assert!(out.contains(&format!("ok {name}")), "{out}");
}

#[test]
fn openai_sdk_local_route_tcp_and_unix_socket_then_sigterm_exits_0() {
    let mut d = DaemonRun::start(&[]);
    check(&d, "local", None);
    check(&d, "unix", None);
    let (status, stderr) = d.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("daemon_stopped"), "{stderr}");
    assert!(!d.socket.exists(), "the socket is removed on exit");
}

#[test]
fn openai_sdk_with_a_token_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let d = DaemonRun::start(&["--token-file", token_file.to_str().unwrap()]);
    check(&d, "auth", Some("s3cret-token"));
}

#[test]
fn openai_sdk_busy_queue_and_cancel_on_disconnect() {
    let d = DaemonRun::start(&["--max-local", "1", "--queue", "0", "--token-delay-ms", "50"]);
    check(&d, "busy", None);
}

#[test]
fn openai_sdk_remote_route_through_a_dev_fleet() {
    let fleet = DevRun::start(2);
    let dir = tempfile::tempdir().unwrap();
    let mut config = fleet.config.clone();
    // A small local budget, so a modest prompt is "too long for the device" and goes remote.
    config["routing"]["local_token_budget"] = 64.into();
    let config_file = dir.path().join("device.json");
    std::fs::write(&config_file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let d = DaemonRun::start(&["--config", config_file.to_str().unwrap()]);
    check(&d, "remote", None);
}

#[test]
fn serve_refuses_a_public_address_without_allow_remote_and_a_token() {
    let tandem = tandem_tests::bins::path("tandem");
    for (args, want) in [
        (
            &["serve", "--listen", "0.0.0.0:0"][..],
            "not a loopback address",
        ),
        (
            &["serve", "--listen", "0.0.0.0:0", "--allow-remote"][..],
            "requires --token-file",
        ),
    ] {
        let out = std::process::Command::new(&tandem)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
