//! `tandem serve` driven by a Python `grpcio` client whose stubs `grpcio-tools` generates from
//! `proto/tandem/v1/device.proto` at test time (`tests/py/grpc_checks.py`): every RPC of
//! `tandem.v1.Device` on TCP and the Unix socket, errors as status codes, cancel mid-stream and
//! deadline exceeded (both free the generation's slot), and the bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;

use tandem_tests::daemon::{DaemonRun, run_py};
use tandem_tests::real_model::repo_file;

fn check(d: &DaemonRun, name: &str, token: Option<&str>) {
    let target = d.tcp.to_string();
    let proto = repo_file("proto/proto");
    let mut args: Vec<&OsStr> = vec![
        OsStr::new(name),
        OsStr::new("--target"),
        OsStr::new(&target),
        OsStr::new("--socket"),
        d.socket.as_os_str(),
        OsStr::new("--proto-dir"),
        proto.as_os_str(),
    ];
    if let Some(t) = token {
        args.push(OsStr::new("--token"));
        args.push(OsStr::new(t));
    }
    let out = run_py("grpc_checks.py", &args, &[]);
    assert!(out.contains(&format!("ok {name}")), "{out}");
}

#[test]
fn grpcio_every_rpc_cancel_and_deadline() {
    // Slow tokens (30 ms each) so a 200-token generation outlives the cancel and the deadline.
    let d = DaemonRun::start(&["--token-delay-ms", "30"]);
    check(&d, "rpcs", None);
}

#[test]
fn grpcio_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "grpc-token").unwrap();
    let d = DaemonRun::start(&["--token-file", token_file.to_str().unwrap()]);
    check(&d, "auth", Some("grpc-token"));
}
