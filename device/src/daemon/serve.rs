//! Listeners, the bearer token, and shutdown: the daemon's I/O.
//!
//! One HTTP server (HTTP/1.1 for the OpenAI API, HTTP/2 for gRPC, told apart per connection)
//! on each listener: a Unix socket (mode 0600 in a directory only the user can enter) and/or
//! loopback TCP. A non-loopback address is refused unless the caller allows it, and then a
//! token is required. With a token every request must carry `authorization: Bearer <token>`;
//! one without it gets 401 (OpenAI error object) or UNAUTHENTICATED (gRPC) and never reaches a
//! model.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;

use super::{Daemon, DaemonError, grpc, openai};

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The Unix socket to create.
    pub socket: Option<PathBuf>,
    /// TCP addresses (loopback unless `allow_remote`).
    pub listen: Vec<SocketAddr>,
    /// Allow non-loopback TCP addresses (requires `token`).
    pub allow_remote: bool,
    /// The bearer token every request must carry.
    pub token: Option<String>,
    /// After the shutdown signal: how long in-flight requests may take before they are
    /// cancelled.
    pub grace: Duration,
}

/// What [`serve`] bound.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// The Unix socket.
    pub socket: Option<PathBuf>,
    /// The TCP addresses (with the ports the system chose for port 0).
    pub tcp: Vec<SocketAddr>,
}

impl ServeOptions {
    /// Checks the options before anything is bound: something to listen on, loopback unless
    /// allowed otherwise, a token with remote access.
    pub fn check(&self) -> Result<(), String> {
        if self.socket.is_none() && self.listen.is_empty() {
            return Err(
                "nothing to listen on: give --socket PATH and/or --listen 127.0.0.1:PORT".into(),
            );
        }
        if let Some(bad) = self.listen.iter().find(|a| !a.ip().is_loopback())
            && !self.allow_remote
        {
            return Err(format!(
                "{bad} is not a loopback address: the daemon serves this device only; pass --allow-remote (with --token-file) to accept other machines"
            ));
        }
        if self.allow_remote && self.token.is_none() {
            return Err("--allow-remote requires --token-file: requests from other machines must carry a bearer token".into());
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err("the token file is empty".into());
        }
        Ok(())
    }
}

fn io(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// Makes the socket's directory (0700 if made here; an existing one must not be open to group
/// or others) and clears a stale socket; refuses to take over a live one.
fn prepare_socket(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| io(format!("creating {}: {e}", dir.display())))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(io(format!(
                "{} is writable by others (mode {:o}); choose another --socket directory",
                dir.display(),
                mode & 0o777
            )));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io(format!(
                    "another daemon is listening on {}; stop it or pass another --socket",
                    path.display()
                )));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io(format!(
                "{} exists and is not a socket; pass another --socket",
                path.display()
            )));
        }
        Err(_) => {}
    }
    Ok(())
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn refuse(grpc: bool, e: DaemonError) -> Response {
    if grpc {
        tonic::Status::from(e).into_http::<Body>().into_response()
    } else {
        openai::ApiError(e).into_response()
    }
}

async fn auth(State(token): State<Option<Arc<str>>>, req: Request, next: Next) -> Response {
    if let Some(token) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !given.is_some_and(|g| same(g, token.as_bytes())) {
            let msg = if given.is_some() {
                "the bearer token is wrong"
            } else {
                "this daemon requires `authorization: Bearer <token>` (the contents of its --token-file)"
            };
            return refuse(is_grpc(&req), DaemonError::Unauthenticated(msg.into()));
        }
    }
    next.run(req).await
}

async fn fallback(req: Request) -> Response {
    let path = req.uri().path().to_string();
    if is_grpc(&req) {
        return tonic::Status::unimplemented(format!("{path} is not a method of tandem.v1.Device"))
            .into_http::<Body>()
            .into_response();
    }
    openai::ApiError(DaemonError::NotFound(format!(
        "no such endpoint {path}: this daemon serves /v1/models, /v1/chat/completions, /v1/completions and gRPC tandem.v1.Device"
    )))
    .into_response()
}

/// The whole application: the OpenAI routes, the gRPC service, the token check.
pub fn app(daemon: Arc<Daemon>, token: Option<&str>) -> Router {
    let token: Option<Arc<str>> = token.map(Arc::from);
    openai::router(daemon.clone())
        .route_service(
            "/tandem.v1.Device/{*rest}",
            grpc::DeviceService::new(daemon).into_server(),
        )
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(token, auth))
}

/// Binds every listener, calls `on_ready`, serves until `shutdown` resolves, then stops
/// accepting, refuses new requests, lets in-flight ones finish for `grace`, and returns (the
/// caller's runtime then drops whatever is left, which cancels it). Removes the socket.
pub async fn serve(
    daemon: Arc<Daemon>,
    opts: ServeOptions,
    on_ready: impl FnOnce(&Served),
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    opts.check().map_err(io)?;
    let app = app(daemon.clone(), opts.token.as_deref());
    let mut served = Served::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for addr in &opts.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| io(format!("binding {addr}: {e}")))?;
        served.tcp.push(l.local_addr()?);
        // Every text delta is its own small write: without TCP_NODELAY, Nagle's algorithm
        // holds a delta back until the previous one is acknowledged.
        let l = l.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let s = axum::serve(l, app.clone()).with_graceful_shutdown(stopped());
        tasks.spawn(async move { s.await });
    }
    if let Some(path) = &opts.socket {
        prepare_socket(path)?;
        let l = tokio::net::UnixListener::bind(path)
            .map_err(|e| io(format!("binding {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        served.socket = Some(path.clone());
        let s = axum::serve(l, app.clone()).with_graceful_shutdown(stopped());
        tasks.spawn(async move { s.await });
    }
    on_ready(&served);
    tokio::select! {
        () = shutdown => {}
        Some(r) = tasks.join_next() => {
            // A listener failed on its own.
            if let Some(p) = &served.socket { let _ = std::fs::remove_file(p); }
            return match r {
                Ok(Ok(())) => Err(io("a listener stopped unexpectedly".into())),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(io(format!("a listener task failed: {e}"))),
            };
        }
    }
    daemon.start_draining();
    let _ = stop_tx.send(true);
    let h = daemon.health();
    tandem_service::emit_json_line(
        "daemon_draining",
        serde_json::json!({"local_running": h.local_running, "local_waiting": h.local_waiting, "grace_ms": opts.grace.as_millis() as u64}),
    );
    let drained = tokio::time::timeout(opts.grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        tasks.abort_all();
    }
    if let Some(p) = &served.socket {
        let _ = std::fs::remove_file(p);
    }
    tandem_service::emit_json_line("daemon_stopped", serde_json::json!({"drained": drained}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ServeOptions {
        ServeOptions {
            socket: None,
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            allow_remote: false,
            token: None,
            grace: Duration::from_secs(1),
        }
    }

    #[test]
    fn remote_addresses_need_permission_and_a_token() {
        assert_eq!(opts().check(), Ok(()));
        let mut o = opts();
        o.listen = vec!["[::1]:8080".parse().expect("addr")];
        assert_eq!(o.check(), Ok(()));
        o.listen = vec!["0.0.0.0:8080".parse().expect("addr")];
        assert!(o.check().expect_err("public").contains("not a loopback"));
        o.allow_remote = true;
        assert!(o.check().expect_err("no token").contains("--token-file"));
        o.token = Some("t".into());
        assert_eq!(o.check(), Ok(()));
        o.token = Some(String::new());
        assert!(o.check().is_err());
        let mut o = opts();
        o.listen.clear();
        assert!(
            o.check()
                .expect_err("nothing")
                .contains("nothing to listen on")
        );
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }
}
