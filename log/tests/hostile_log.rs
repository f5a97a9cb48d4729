//! A hostile log answering with more bytes than the tlog-tiles spec allows: the reader refuses
//! the answer after at most the allowed size instead of reading it whole (issue 19, item 4: a
//! 200 MiB `/checkpoint` drove `attest log checkpoint` to 418 MB RSS).
//!
//! The hostile log is a real HTTP/1.1 server on loopback (a raw socket that writes what a
//! malicious log would), counting how many body bytes the reader made it send.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem_log::{FetchError, LogClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MIB: u64 = 1024 * 1024;

/// How the hostile log frames its oversized body.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length` announces the whole size up front.
    Length,
    /// `Transfer-Encoding: chunked`, so the size is known only by reading.
    Chunked,
}

/// Serves every request with a `body_len`-byte body of `b'a'`; returns the base URL and the
/// count of body bytes written so far.
async fn hostile_log(body_len: u64, framing: Framing) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let sent = sent2.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = match framing {
                    Framing::Length => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {body_len}\r\n\r\n"
                    ),
                    Framing::Chunked => "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                                         transfer-encoding: chunked\r\n\r\n"
                        .to_owned(),
                };
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'a'; 64 * 1024];
                let mut left = body_len;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    let r = match framing {
                        Framing::Length => sock.write_all(&chunk[..n]).await,
                        Framing::Chunked => {
                            let mut framed = format!("{n:x}\r\n").into_bytes();
                            framed.extend_from_slice(&chunk[..n]);
                            framed.extend_from_slice(b"\r\n");
                            sock.write_all(&framed).await
                        }
                    };
                    if r.is_err() {
                        return;
                    }
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                    left -= n as u64;
                }
                if matches!(framing, Framing::Chunked) {
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                }
            });
        }
    });
    (format!("http://{addr}"), sent)
}

fn assert_too_long(r: Result<Vec<u8>, FetchError>, limit: usize) {
    let e = match r {
        Ok(b) => panic!("a {} byte answer was accepted", b.len()),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&format!("more than the {limit} bytes the spec allows")),
        "unexpected error: {e}"
    );
}

#[tokio::test]
async fn a_200_mib_checkpoint_is_refused_without_reading_it() {
    for framing in [Framing::Length, Framing::Chunked] {
        let (base, sent) = hostile_log(200 * MIB, framing).await;
        let client = LogClient::new(&base, Duration::from_secs(30)).expect("client");
        assert_too_long(
            client.get("checkpoint").await,
            tandem_log::MAX_CHECKPOINT_BYTES,
        );
        // The reader stopped long before the end: the server could write at most what sits in
        // the socket buffers on top of the allowed bytes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = sent.load(Ordering::Relaxed);
        assert!(sent < 32 * MIB, "the reader let the log send {sent} bytes");
    }
}

#[tokio::test]
async fn every_path_is_capped_by_what_the_spec_allows_there() {
    let cases = [
        ("checkpoint", tandem_log::MAX_CHECKPOINT_BYTES),
        ("checkpoint.15", tandem_log::MAX_CHECKPOINT_BYTES),
        ("tile/0/000", tandem_log::MAX_HASH_TILE_BYTES),
        ("tile/1/x001/234.p/17", tandem_log::MAX_HASH_TILE_BYTES),
        ("tile/entries/000", tandem_log::MAX_ENTRY_BUNDLE_BYTES),
    ];
    for (path, limit) in cases {
        assert_eq!(tandem_log::max_response_bytes(path), limit, "{path}");
        for framing in [Framing::Length, Framing::Chunked] {
            // One byte over is refused, exactly the limit is read.
            let (over, _) = hostile_log(limit as u64 + 1, framing).await;
            let client = LogClient::new(&over, Duration::from_secs(30)).expect("client");
            assert_too_long(client.get(path).await, limit);
            let (exact, _) = hostile_log(limit as u64, framing).await;
            let client = LogClient::new(&exact, Duration::from_secs(30)).expect("client");
            let body = client
                .get(path)
                .await
                .expect("an answer of the allowed size");
            assert_eq!(body.len(), limit, "{path}");
        }
    }
}

#[tokio::test]
async fn a_huge_append_answer_is_refused() {
    let (base, _) = hostile_log(100 * MIB, Framing::Chunked).await;
    let client = LogClient::new(&base, Duration::from_secs(30)).expect("client");
    let e = client
        .append(b"entry")
        .await
        .expect_err("accepted")
        .to_string();
    assert!(
        e.contains(&format!(
            "more than the {} bytes the spec allows",
            tandem_log::MAX_APPEND_ANSWER_BYTES
        )),
        "{e}"
    );
}
