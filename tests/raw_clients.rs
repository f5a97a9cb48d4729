//! `tandem-node serve` as a real process against raw HTTP/2 clients (the `h2` crate, the same
//! HTTP/2 stack the node serves with), the way an attacker with a socket talks to it:
//!
//! - slow readers: a client that sets its stream flow-control window to zero and never sends a
//!   WINDOW_UPDATE can take no response byte. Two of them must not pin the node's two
//!   generation slots (other clients are served, the slots are freed and logged as
//!   `client_stalled`, SIGTERM still drains), and with `max_batch > 1` one of them must not stall
//!   the other sequences of its batch;
//! - bodies that are not protobuf get `INVALID_ARGUMENT`, not `INTERNAL`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use tandem_proto::v1;
use tandem_tests::node::*;

fn bin() -> PathBuf {
    tandem_tests::bins::path("tandem-node")
}

/// A node process, its address and the JSON events it printed so far.
struct Proc {
    child: Child,
    addr: SocketAddr,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    _fleet: Fleet,
}

async fn start(limits: &str) -> Proc {
    let f = fleet(&bin(), &format!("[limits]\n{limits}"), true).await;
    // `cargo test` sets LD_LIBRARY_PATH, which the node refuses (`tests/node_environment.rs`).
    let mut child = tandem_node::node::environ::scrub(&mut Command::new(bin()))
        .arg("serve")
        .arg("--config")
        .arg(&f.config_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--identity")
        .arg(&f.identity)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let ev = events.clone();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|_| serde_json::json!({ "event": "not-json", "line": line }));
            ev.lock().unwrap().push(v);
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
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
    Proc {
        child,
        addr,
        events,
        _fleet: f,
    }
}

impl Proc {
    /// The `request_done` events so far.
    fn done(&self) -> Vec<serde_json::Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == "request_done")
            .cloned()
            .collect()
    }

    /// Waits (up to `limit`) until `n` requests finished with `finish`; returns them.
    async fn wait_done(&self, finish: &str, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let until = Instant::now() + limit;
        loop {
            let got: Vec<_> = self
                .done()
                .into_iter()
                .filter(|v| v["finish"] == finish)
                .collect();
            if got.len() >= n || Instant::now() > until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One gRPC message frame (gRPC over HTTP/2: flag 0, u32 length, message).
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + msg.len());
    b.push(0);
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

/// A raw HTTP/2 connection whose stream windows are zero: the node can send it headers but no
/// DATA byte, ever (it never releases capacity).
struct RawConn {
    client: h2::client::SendRequest<Bytes>,
    _conn: tokio::task::JoinHandle<()>,
}

async fn raw_conn(addr: SocketAddr, window: u32) -> RawConn {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    RawConn {
        client,
        _conn: conn,
    }
}

/// A request in flight on a [`RawConn`]: kept alive, never read.
struct Held {
    _send: h2::SendStream<Bytes>,
    _body: h2::RecvStream,
    headers: http::HeaderMap,
}

impl RawConn {
    /// Sends `body` to `path` and waits for the response headers.
    async fn call(&mut self, addr: SocketAddr, path: &str, body: Bytes) -> Held {
        let mut client = self.client.clone().ready().await.unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        send.send_data(body, true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), resp)
            .await
            .expect("response headers within 30 s")
            .unwrap();
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        Held {
            _send: send,
            _body: resp.into_body(),
            headers,
        }
    }
}

fn submit_frame(sealed: Vec<u8>) -> Bytes {
    grpc_frame(
        &v1::SubmitRequest {
            sealed_request: sealed,
            node_handles: vec![],
        }
        .encode_to_vec(),
    )
}

/// A prompt the embedded device model continues for all 200 tokens (no EOS): far more chunks
/// than a response stream buffers, so a reader that takes none stalls the stream.
const LONG: &str = "once upon a time";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slow_readers_neither_pin_slots_nor_block_shutdown() {
    // Two generation slots, both taken by clients that never read.
    let node = start("max_concurrent = 2\nstall_timeout_ms = 1000\ndeadline_secs = 10\n").await;
    let addr = node.addr;
    let mut c = connect(addr).await;
    let d = digests();
    let configs = key_configs(&mut c).await;
    let mut slow = Vec::new();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = raw_conn(addr, 0).await;
        let (sealed, _ctx) = seal(&configs, d.model, None, LONG, 200, now());
        // Headers arrive once the request has a generation slot.
        let h = conn
            .call(addr, "/tandem.v1.Node/Submit", submit_frame(sealed))
            .await;
        assert!(h.headers.get("grpc-status").is_none(), "{:?}", h.headers);
        held.push(h);
        slow.push(conn);
    }

    // (a) Another client is served while both slow readers stay connected: within the stall
    // bound plus a generation, far inside the 10 s deadline (before the fix it waited for a
    // slot until DEADLINE_EXCEEDED).
    let t = Instant::now();
    let (sealed, ctx) = seal(&configs, d.model, None, "the cat", 16, now());
    let ans = submit(&mut c, sealed, ctx).await.expect("served");
    let waited = t.elapsed();
    assert!(ans.receipt.is_some(), "{:?}", ans.error);
    assert!(
        waited < Duration::from_secs(9),
        "served after {waited:?}; {:?}",
        node.done()
    );

    // (c) Both slots were freed, and the node says why.
    let stalled = node
        .wait_done("client_stalled", 2, Duration::from_secs(10))
        .await;
    assert_eq!(stalled.len(), 2, "request_done events: {:?}", node.done());
    for e in &stalled {
        // Ended by the stall bound, not by the deadline, and well before it.
        assert!(e["ms"].as_u64().unwrap() < 8_000, "{e}");
    }
    // Two requests at once (both slots) succeed promptly while the slow readers hold on.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for p in ["hello", "why"] {
        let (sealed, ctx) = seal(&configs, d.model, None, p, 16, now());
        let mut c = c.clone();
        tasks.push(tokio::spawn(
            async move { submit(&mut c, sealed, ctx).await },
        ));
    }
    for t in tasks {
        let ans = t.await.unwrap().expect("served");
        assert!(ans.receipt.is_some(), "{:?}", ans.error);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // SIGTERM with the slow readers still connected: the node stops waiting for their
    // connections after deadline + 5 s + the stall bound and exits 0.
    let t = Instant::now();
    let pid = node.child.id();
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    let mut node = node;
    let status = tokio::task::spawn_blocking(move || {
        let s = node.child.wait().unwrap();
        (s, node)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {}", status.0);
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
    drop(held);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_stall_its_batch() {
    // One batch worker; up to four sequences per batch; a 20 s deadline.
    let node =
        start("max_concurrent = 1\nmax_batch = 4\nstall_timeout_ms = 1000\ndeadline_secs = 20\n")
            .await;
    let addr = node.addr;
    let mut c = connect(addr).await;
    let d = digests();
    let configs = key_configs(&mut c).await;
    // Keep the worker busy so that the next four requests queue up and form one batch.
    let (sealed, ctx) = seal(&configs, d.model, None, LONG, 64, now());
    let mut c0 = c.clone();
    let blocker = tokio::spawn(async move { submit(&mut c0, sealed, ctx).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t = Instant::now();
    let mut conn = raw_conn(addr, 0).await;
    let (sealed, _ctx) = seal(&configs, d.model, None, LONG, 200, now());
    let held = conn
        .call(addr, "/tandem.v1.Node/Submit", submit_frame(sealed))
        .await;
    let mut mates = Vec::new();
    for p in ["the cat", "hello there", "numbers: one two three"] {
        let (sealed, ctx) = seal(&configs, d.model, None, p, 40, now());
        let mut c = c.clone();
        mates.push((
            p,
            tokio::spawn(async move { submit(&mut c, sealed, ctx).await }),
        ));
    }
    // (b) Every batch-mate gets its whole answer and receipt, inside the deadline and within
    // the stall bound of the slow reader plus a batch's generation time.
    for (p, m) in mates {
        let ans = tokio::time::timeout(Duration::from_secs(30), m)
            .await
            .unwrap_or_else(|_| panic!("{p:?}: no answer within 30 s (its batch stalled)"))
            .unwrap()
            .expect("served");
        let r = ans
            .receipt
            .unwrap_or_else(|| panic!("{p:?}: {:?}", ans.error));
        assert_eq!(r.completion_tokens as usize, ans.tokens.len());
        // Batched greedy equals the single-sequence path up to float summation order, which
        // can flip a near-tie after many tokens; the start must agree.
        assert_eq!(
            ans.tokens[..16],
            local_tokens(p, None, 16)[..],
            "prompt {p:?}"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(blocker.await.unwrap().unwrap().receipt.is_some());
    // The slow reader was ended by the stall bound, in a batch with others.
    let stalled = node
        .wait_done("client_stalled", 1, Duration::from_secs(10))
        .await;
    assert_eq!(stalled.len(), 1, "request_done events: {:?}", node.done());
    assert!(stalled[0]["batch"].as_u64().unwrap() >= 2, "{}", stalled[0]);
    // The worker is free: a later request is served.
    let (sealed, ctx) = seal(&configs, d.model, None, "why", 8, now());
    assert!(submit(&mut c, sealed, ctx).await.unwrap().receipt.is_some());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_protobuf_is_invalid_argument() {
    let node = start("").await;
    let addr = node.addr;
    let mut conn = raw_conn(addr, 65_535).await;
    // Well-framed gRPC messages whose bytes are not a protobuf message (wire type 7, a length
    // running past the end, a truncated varint).
    for garbage in [&[0xff; 16][..], &[0x0a, 0x7f, 0x01][..], &[0x08, 0x80][..]] {
        for path in [
            "/tandem.v1.Node/Submit",
            "/tandem.v1.Node/GetAttestation",
            "/tandem.v1.Node/GetKeyConfigs",
        ] {
            let h = conn.call(addr, path, grpc_frame(garbage)).await;
            let code = h.headers.get("grpc-status").map(|v| v.to_str().unwrap());
            assert_eq!(code, Some("3"), "{path} {garbage:?}: {:?}", h.headers);
            let msg = h.headers["grpc-message"].to_str().unwrap().to_owned();
            assert!(msg.contains("protobuf"), "{msg}");
        }
    }
    // The node still serves.
    let mut c = connect(addr).await;
    assert!(!key_configs(&mut c).await.is_empty());
}
