//! The log over HTTP (`attest log serve`; `tandem-node dev` runs it in-process).
//!
//! C2SP tlog-tiles read API: `GET /checkpoint`, `GET /tile/<L>/<N>[.p/<W>]`,
//! `GET /tile/entries/<N>[.p/<W>]`. Write API: `POST /add` with the entry as the body; the
//! answer (JSON [`InclusionBundle`]) comes once a checkpoint covering the entry is published.
//! Convenience proof API (JSON, base64 hashes): `GET /proof/inclusion?index=I&size=N` and
//! `GET /proof/consistency?old=M&new=N`.
//!
//! Writers are batched: one sequencer thread takes every entry queued while the previous batch
//! was being committed and commits them together (one WAL fsync, one tile write, one checkpoint),
//! starting commits at most every [`MIN_BATCH_INTERVAL`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::InclusionBundle;
use super::merkle::Hash;
use super::tile::{MAX_ENTRY_LEN, TilePath};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::sync::{mpsc, oneshot};

use super::store::LogStore;

/// Most entries committed in one batch.
const MAX_BATCH: usize = 8192;

/// Shortest time between the starts of two commits, so concurrent appends coalesce into one
/// batch (one round of syncs) instead of each paying for its own.
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(2);

type Reply = oneshot::Sender<Result<InclusionBundle, String>>;

/// What the HTTP handlers share: the published view of the log and the sequencer's queue.
#[derive(Clone)]
struct AppState {
    /// The published signed checkpoint.
    checkpoint: Arc<RwLock<Vec<u8>>>,
    /// The store; the sequencer holds the write lock only while committing a batch.
    store: Arc<RwLock<LogStore>>,
    queue: mpsc::Sender<(Vec<u8>, Reply)>,
    dir: PathBuf,
}

/// Start the sequencer and return the router.
pub fn app(store: LogStore) -> Router {
    let checkpoint = Arc::new(RwLock::new(store.checkpoint().to_vec()));
    let dir = store.dir().to_path_buf();
    let store = Arc::new(RwLock::new(store));
    let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
    let (seq_store, seq_cp) = (store.clone(), checkpoint.clone());
    std::thread::Builder::new()
        .name("log-sequencer".into())
        .spawn(move || sequencer(&seq_store, rx, &seq_cp))
        .unwrap_or_else(|e| panic!("cannot start the sequencer thread: {e}"));
    let state = AppState {
        checkpoint,
        store,
        queue: tx,
        dir,
    };
    Router::new()
        .route("/checkpoint", get(get_checkpoint))
        .route("/tile/{*path}", get(tile))
        .route("/add", post(add))
        .route("/proof/inclusion", get(inclusion))
        .route("/proof/consistency", get(consistency))
        .layer(DefaultBodyLimit::max(MAX_ENTRY_LEN))
        .with_state(state)
}

/// Group commit loop: block for one entry, take everything else queued, commit, answer.
fn sequencer(
    store: &RwLock<LogStore>,
    mut rx: mpsc::Receiver<(Vec<u8>, Reply)>,
    published: &RwLock<Vec<u8>>,
) {
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        // Let writers that are about to send join this batch: commits start at most every
        // MIN_BATCH_INTERVAL (a lone writer after a quiet spell does not wait).
        if let Some(wait) = last_commit.and_then(|t| MIN_BATCH_INTERVAL.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        last_commit = Some(Instant::now());
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let entries: Vec<&[u8]> = batch.iter().map(|(e, _)| e.as_slice()).collect();
        let Ok(mut guard) = store.write() else {
            return;
        };
        match guard.append_batch(&entries) {
            Ok(first_index) => {
                let size = guard.published_size();
                let checkpoint = guard.checkpoint().to_vec();
                if let Ok(mut p) = published.write() {
                    p.clone_from(&checkpoint);
                }
                let store = &*guard;
                for (i, (_, reply)) in batch.into_iter().enumerate() {
                    let index = first_index + i as u64;
                    let answer = store
                        .inclusion_proof(index, size)
                        .map(|p| InclusionBundle::new(index, size, &p, &checkpoint))
                        .map_err(|e| e.to_string());
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                // Nothing of this batch was acknowledged. A storage failure leaves the in-memory
                // state unknown, so stop taking writes: the process must be restarted, and
                // recovery on open decides what the WAL holds.
                eprintln!("attest log: commit failed, refusing further writes: {e:#}");
                for (_, reply) in batch {
                    let _ = reply.send(Err(format!("the log could not store the entry: {e}")));
                }
                rx.close();
                while let Ok((_, reply)) = rx.try_recv() {
                    let _ = reply.send(Err("the log is not accepting writes".into()));
                }
                return;
            }
        }
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

async fn get_checkpoint(State(s): State<AppState>) -> Response {
    let cp = match s.checkpoint.read() {
        Ok(v) => v.clone(),
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned"),
    };
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        cp,
    )
        .into_response()
}

async fn tile(State(s): State<AppState>, Path(rest): Path<String>) -> Response {
    // Parsing only accepts canonical tile paths, so the file path cannot escape the directory.
    let path = format!("tile/{rest}");
    let t = match TilePath::parse(&path) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::NOT_FOUND, e.to_string()),
    };
    match tokio::fs::read(s.dir.join(t.to_path())).await {
        Ok(b) => {
            let cache = if t.is_full() {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (header::CACHE_CONTROL, cache),
                ],
                b,
            )
                .into_response()
        }
        Err(_) => text(StatusCode::NOT_FOUND, format!("{path} does not exist")),
    }
}

async fn add(State(s): State<AppState>, body: Bytes) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.queue.send((body.to_vec(), tx)).await.is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log is not accepting writes",
        );
    }
    match rx.await {
        Ok(Ok(bundle)) => axum::Json(bundle).into_response(),
        Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log stopped before storing the entry",
        ),
    }
}

fn proof_json(size: u64, proof: &[Hash]) -> Response {
    let hashes: Vec<String> = proof.iter().map(|h| B64.encode(h)).collect();
    axum::Json(serde_json::json!({ "tree_size": size, "proof": hashes })).into_response()
}

fn param(q: &HashMap<String, String>, name: &str) -> Result<u64, Box<Response>> {
    q.get(name).and_then(|v| v.parse().ok()).ok_or_else(|| {
        Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("query parameter {name} must be a number"),
        ))
    })
}

async fn inclusion(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (index, size) = match (param(&q, "index"), param(&q, "size")) {
        (Ok(i), Ok(n)) => (i, n),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let Ok(store) = s.store.read() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
    };
    match store.inclusion_proof(index, size) {
        Ok(p) => proof_json(size, &p),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

async fn consistency(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (old, new) = match (param(&q, "old"), param(&q, "new")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let Ok(store) = s.store.read() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
    };
    match store.consistency_proof(old, new) {
        Ok(p) => proof_json(new, &p),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}
