//! `allow_from` on loopback, without root (the network-namespace version is
//! `tests/fleet_netns.rs`): a real `tandem-node serve` allowing only 127.0.0.2 serves a
//! connection from 127.0.0.2 (its HTTP/2 settings come back) and closes one from 127.0.0.1
//! unserved; refusals are logged once, then rate-limited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tandem_tests::node::fleet;
use tandem_tests::procs::Proc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Connects from `source` to `node`, sends the HTTP/2 client preface and an empty SETTINGS
/// frame (RFC 9113 §3.4), and returns the bytes the node sends back before closing or going
/// quiet for a second.
async fn h2_hello(source: &str, node: SocketAddr) -> Vec<u8> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(node).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // A refused connection may already be closed: a failed write is an answer too.
    let _ = s.write_all(&hello).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_serves_only_the_peers_it_allows() {
    let bin = tandem_tests::bins::path("tandem-node");
    let f = fleet(&bin, "allow_from = [\"127.0.0.2\"]", true).await;
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&bin);
    tandem_node::node::environ::scrub(&mut cmd);
    cmd.args(["serve", "--config"])
        .arg(&f.config_path)
        .args(["--listen", "127.0.0.1:0", "--identity"])
        .arg(&f.identity);
    let node = Proc::spawn("node", &mut cmd, logs.path());
    let addr: SocketAddr = tokio::task::block_in_place(|| {
        node.wait_line("serving ", Duration::from_secs(60)).unwrap()
    })
    .parse()
    .unwrap();

    // Allowed: the node answers with its SETTINGS frame (type 4).
    let served = h2_hello("127.0.0.2", addr).await;
    assert!(
        served.len() >= 9 && served[3] == 4,
        "an allowed peer gets the node's HTTP/2 settings: {served:?}"
    );
    // Not allowed: closed without a byte, five times over.
    for _ in 0..5 {
        let refused = h2_hello("127.0.0.1", addr).await;
        assert!(refused.is_empty(), "a refused peer got {refused:?}");
    }
    let lines: Vec<String> = node
        .stderr()
        .lines()
        .filter(|l| l.contains("connection_refused"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "one line, then rate-limited: {lines:?}");
    assert!(lines[0].contains("\"peer\":\"127.0.0.1:"), "{}", lines[0]);
    // And the allowed peer still gets through.
    assert!(!h2_hello("127.0.0.2", addr).await.is_empty());
}
