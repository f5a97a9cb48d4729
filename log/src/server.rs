//! The log over HTTP (`attest log serve`; `tandem-fleet dev` runs it in-process).
//!
//! C2SP tlog-tiles read API: `GET /checkpoint`, `GET /tile/<L>/<N>[.p/<W>]`,
//! `GET /tile/entries/<N>[.p/<W>]`. Write API:
//! - `POST /add` with one entry as the body (at most 65,535 bytes); the answer (JSON
//!   [`tandem_attest::log::InclusionBundle`]: `index`, `tree_size`, `inclusion_proof` as base64 hashes, `checkpoint`
//!   as the signed note's text) comes once a checkpoint covering the entry is published.
//! - `POST /add-batch` with several entries in one body, each as `u16 big-endian length ||
//!   bytes` (1 to 4,096 entries, at most 8 MiB); the answer (JSON
//!   [`tandem_attest::log::batch::BatchInclusion`]: `first_index`, `tree_size`, `inclusion_proofs` with one
//!   path per entry in request order, `checkpoint`) comes once a checkpoint covering all of them
//!   is published. The entries get consecutive indices from `first_index`. See
//!   [`tandem_attest::log::batch`] for the format; a malformed body is answered 400 and nothing is appended.
//!
//! Convenience proof API (JSON, base64 hashes): `GET /proof/inclusion?index=I&size=N` and
//! `GET /proof/consistency?old=M&new=N`. HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) are
//! both served, so a client with many concurrent appends can multiplex them on one connection.
//!
//! Writers are batched: one sequencer thread takes every request queued while the previous
//! batch was being committed and commits their entries together (one WAL fsync, one tile write,
//! one checkpoint), starting commits at most every [`MIN_BATCH_INTERVAL`], or every
//! [`BUSY_BATCH_INTERVAL`] while batches are large (many writers waiting). Answers are
//! serialised by the request handlers, not the sequencer; the checkpoint is JSON-escaped once
//! per batch and shared.
//!
//! With witnesses ([`app_witnessed`], C2SP tlog-witness), `GET /checkpoint` serves the newest
//! checkpoint that went through a witness round, with the witnesses' cosignature lines
//! appended; see [`crate::witness`] for what happens when fewer than the quorum answer. The
//! answers to `/add` and `/add-batch` carry the log-signed checkpoint of their commit (they do
//! not wait for witnesses); a cosigned proof for an entry is built against `GET /checkpoint`
//! (`attest log prove --tlog-proof`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tandem_attest::log::batch::{self, MAX_BATCH_BODY};
use tandem_attest::log::merkle::Hash;
use tandem_attest::log::tile::{MAX_ENTRY_LEN, TilePath};
use tokio::sync::{mpsc, oneshot};

use crate::store::LogStore;
use crate::witness::{ProofSource, WitnessConfig, WitnessError, Witnesses};

/// Most entries committed in one batch (a batch request that arrives when the batch is nearly
/// full still joins it whole).
const MAX_BATCH: usize = 8192;

/// Shortest time between the starts of two commits, so concurrent appends coalesce into one
/// batch (one round of syncs) instead of each paying for its own.
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(2);

/// A batch of at least this many entries means many writers are waiting: the next commit then
/// starts no sooner than [`BUSY_BATCH_INTERVAL`] after this one, so each round of syncs and file
/// creations (a fixed cost per batch, ~3 ms of CPU here) is shared by more entries.
const BUSY_BATCH: usize = 64;

/// Shortest time between the starts of two commits under load (see [`BUSY_BATCH`]).
const BUSY_BATCH_INTERVAL: Duration = Duration::from_millis(15);

/// The entries of one request, sharing the request body's buffer.
enum Entries {
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Entries {
    fn as_slice(&self) -> &[Bytes] {
        match self {
            Self::One(b) => std::slice::from_ref(b),
            Self::Many(v) => v,
        }
    }
}

/// What the sequencer hands back for one request once its entries are durable and published.
struct Committed {
    first_index: u64,
    tree_size: u64,
    /// One inclusion path per entry of the request.
    proofs: Vec<Vec<Hash>>,
    /// The signed checkpoint as a JSON string literal (quoted and escaped), shared by the batch.
    checkpoint_json: Arc<str>,
}

type Reply = oneshot::Sender<Result<Committed, String>>;

struct Job {
    entries: Entries,
    reply: Reply,
}

/// What the HTTP handlers share: the published view of the log and the sequencer's queue.
#[derive(Clone)]
struct AppState {
    /// The published signed checkpoint.
    checkpoint: Arc<RwLock<Vec<u8>>>,
    /// The store; the sequencer holds the write lock only while committing a batch.
    store: Arc<RwLock<LogStore>>,
    queue: mpsc::Sender<Job>,
    dir: PathBuf,
}

/// Where the sequencer puts each new signed checkpoint.
enum Publisher {
    /// Straight to `GET /checkpoint`.
    Direct(Arc<RwLock<Vec<u8>>>),
    /// To the witness task, which publishes it once its witness round is over.
    Witnessed(tokio::sync::watch::Sender<Vec<u8>>),
}

impl Publisher {
    fn publish(&self, checkpoint: &[u8]) {
        match self {
            Self::Direct(p) => {
                if let Ok(mut p) = p.write() {
                    p.clear();
                    p.extend_from_slice(checkpoint);
                }
            }
            Self::Witnessed(tx) => {
                tx.send_replace(checkpoint.to_vec());
            }
        }
    }
}

/// Shortest and longest wait before a witness round that missed the quorum is retried.
const WITNESS_RETRY_MIN: Duration = Duration::from_secs(1);
const WITNESS_RETRY_MAX: Duration = Duration::from_secs(60);

/// Start the sequencer and return the router.
pub fn app(store: LogStore) -> Router {
    let checkpoint = Arc::new(RwLock::new(store.checkpoint().to_vec()));
    let publisher = Publisher::Direct(checkpoint.clone());
    build(store, checkpoint, publisher)
}

/// Like [`app`], and every new checkpoint is submitted to `witnesses` (C2SP tlog-witness) by a
/// task on the current Tokio runtime (so this must be called inside one) before it is served
/// by `GET /checkpoint`. The checkpoint found in the store at start is submitted first; until
/// its round is over the log-signed one is served.
pub fn app_witnessed(store: LogStore, witnesses: WitnessConfig) -> Result<Router, WitnessError> {
    let witnesses = Witnesses::new(witnesses)?;
    let checkpoint = Arc::new(RwLock::new(store.checkpoint().to_vec()));
    let (tx, rx) = tokio::sync::watch::channel(store.checkpoint().to_vec());
    let store = Arc::new(RwLock::new(store));
    let proof_store = store.clone();
    let proofs: ProofSource = Arc::new(move |old, new| {
        let s = proof_store
            .read()
            .map_err(|_| "the log's state is poisoned".to_owned())?;
        s.consistency_proof(old, new).map_err(|e| format!("{e:#}"))
    });
    tokio::spawn(witness_loop(witnesses, rx, checkpoint.clone(), proofs));
    Ok(build_shared(
        store,
        checkpoint.clone(),
        Publisher::Witnessed(tx),
    ))
}

/// Submit each checkpoint the sequencer publishes to the witnesses, then serve it with the
/// cosignatures gathered. Checkpoints published while a round runs are skipped but the newest
/// one, which the next round submits (witnesses need not see every checkpoint).
async fn witness_loop(
    mut witnesses: Witnesses,
    mut rx: tokio::sync::watch::Receiver<Vec<u8>>,
    published: Arc<RwLock<Vec<u8>>>,
    proofs: ProofSource,
) {
    let mut backoff = WITNESS_RETRY_MIN;
    // The note last served and how many witnesses had cosigned it.
    let mut served: Option<(Vec<u8>, usize)> = None;
    loop {
        let note = rx.borrow_and_update().clone();
        let mut retry = None;
        if !note.is_empty() {
            let round = witnesses.round(&note, &proofs).await;
            // Say why before publishing, so whoever sees the checkpoint can find the reason.
            if round.cosigned < witnesses.quorum() {
                let why: Vec<String> = round.failures.iter().map(ToString::to_string).collect();
                eprintln!(
                    "attest log: only {} of the {} required witnesses cosigned the checkpoint \
                     of size {}; it is published without their quorum, retrying in {backoff:?}: {}",
                    round.cosigned,
                    witnesses.quorum(),
                    String::from_utf8_lossy(note.split(|&b| b == b'\n').nth(1).unwrap_or_default()),
                    why.join("; ")
                );
                retry = Some(backoff);
                backoff = (backoff * 2).min(WITNESS_RETRY_MAX);
            } else {
                backoff = WITNESS_RETRY_MIN;
            }
            let better = match &served {
                Some((n, c)) => *n != note || round.cosigned >= *c,
                None => true,
            };
            if better {
                if let Ok(mut p) = published.write() {
                    p.clone_from(&round.note);
                }
                served = Some((note.clone(), round.cosigned));
            }
        }
        match retry {
            Some(wait) => {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(wait) => {}
                }
            }
            None => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn build(store: LogStore, checkpoint: Arc<RwLock<Vec<u8>>>, publisher: Publisher) -> Router {
    build_shared(Arc::new(RwLock::new(store)), checkpoint, publisher)
}

fn build_shared(
    store: Arc<RwLock<LogStore>>,
    checkpoint: Arc<RwLock<Vec<u8>>>,
    publisher: Publisher,
) -> Router {
    let dir = match store.read() {
        Ok(s) => s.dir().to_path_buf(),
        Err(e) => e.into_inner().dir().to_path_buf(),
    };
    let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
    let seq_store = store.clone();
    std::thread::Builder::new()
        .name("log-sequencer".into())
        .spawn(move || sequencer(&seq_store, rx, &publisher))
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
        .route(
            "/add-batch",
            post(add_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/proof/inclusion", get(inclusion))
        .route("/proof/consistency", get(consistency))
        .layer(DefaultBodyLimit::max(MAX_ENTRY_LEN))
        .with_state(state)
}

/// Group commit loop: block for one request, take every other one queued, commit, answer.
fn sequencer(store: &RwLock<LogStore>, mut rx: mpsc::Receiver<Job>, published: &Publisher) {
    let mut last_commit: Option<Instant> = None;
    let mut interval = MIN_BATCH_INTERVAL;
    while let Some(first) = rx.blocking_recv() {
        // Let writers that are about to send join this batch: commits start at most every
        // `interval` (a lone writer after a quiet spell does not wait).
        if let Some(wait) = last_commit.and_then(|t| interval.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        last_commit = Some(Instant::now());
        let mut count = first.entries.as_slice().len();
        let mut jobs = vec![first];
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.entries.as_slice().len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        interval = if count >= BUSY_BATCH {
            BUSY_BATCH_INTERVAL
        } else {
            MIN_BATCH_INTERVAL
        };
        let mut entries: Vec<&[u8]> = Vec::with_capacity(count);
        for job in &jobs {
            entries.extend(job.entries.as_slice().iter().map(|b| &b[..]));
        }
        let Ok(mut guard) = store.write() else {
            return;
        };
        let result = guard.append_batch(&entries);
        drop(entries);
        match result {
            Ok(first_index) => {
                let size = guard.published_size();
                let checkpoint = guard.checkpoint().to_vec();
                // Downgrade to a read lock: proof requests may proceed while answers are built.
                drop(guard);
                published.publish(&checkpoint);
                let checkpoint_json: Arc<str> =
                    serde_json::to_string(&String::from_utf8_lossy(&checkpoint))
                        .unwrap_or_default()
                        .into();
                let Ok(store) = store.read() else {
                    return;
                };
                let mut index = first_index;
                for job in jobs {
                    let n = job.entries.as_slice().len() as u64;
                    let proofs: Result<Vec<Vec<Hash>>, _> = (index..index + n)
                        .map(|i| store.inclusion_proof(i, size))
                        .collect();
                    let answer = proofs
                        .map(|proofs| Committed {
                            first_index: index,
                            tree_size: size,
                            proofs,
                            checkpoint_json: checkpoint_json.clone(),
                        })
                        .map_err(|e| e.to_string());
                    let _ = job.reply.send(answer);
                    index += n;
                }
            }
            Err(e) => {
                // Nothing of this batch was acknowledged. A storage failure leaves the in-memory
                // state unknown, so stop taking writes: the process must be restarted, and
                // recovery on open decides what the WAL holds.
                drop(guard);
                eprintln!("attest log: commit failed, refusing further writes: {e:#}");
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(format!("the log could not store the entry: {e}")));
                }
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    let _ = job
                        .reply
                        .send(Err("the log is not accepting writes".into()));
                }
                return;
            }
        }
    }
}

/// Append a JSON array of base64 hashes to `out`.
fn push_proof(out: &mut String, proof: &[Hash]) {
    out.push('[');
    for (i, h) in proof.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        B64.encode_string(h, out);
        out.push('"');
    }
    out.push(']');
}

impl Committed {
    /// Room for the JSON answer.
    fn json_capacity(&self) -> usize {
        let hashes: usize = self.proofs.iter().map(Vec::len).sum();
        128 + self.checkpoint_json.len() + hashes * 47 + self.proofs.len() * 3
    }

    /// The answer to `POST /add`: an [`tandem_attest::log::InclusionBundle`] (the same JSON serde writes).
    fn single_json(&self) -> String {
        let mut out = String::with_capacity(self.json_capacity());
        let _ = write!(
            out,
            "{{\"index\":{},\"tree_size\":{},\"inclusion_proof\":",
            self.first_index, self.tree_size
        );
        push_proof(&mut out, self.proofs.first().map_or(&[], Vec::as_slice));
        out.push_str(",\"checkpoint\":");
        out.push_str(&self.checkpoint_json);
        out.push('}');
        out
    }

    /// The answer to `POST /add-batch`: a [`tandem_attest::log::batch::BatchInclusion`].
    fn batch_json(&self) -> String {
        let mut out = String::with_capacity(self.json_capacity());
        let _ = write!(
            out,
            "{{\"first_index\":{},\"tree_size\":{},\"inclusion_proofs\":[",
            self.first_index, self.tree_size
        );
        for (i, p) in self.proofs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_proof(&mut out, p);
        }
        out.push_str("],\"checkpoint\":");
        out.push_str(&self.checkpoint_json);
        out.push('}');
        out
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

/// Queue `entries` for the sequencer and wait for their commit.
async fn commit(s: &AppState, entries: Entries) -> Result<Committed, Response> {
    let (reply, rx) = oneshot::channel();
    if s.queue.send(Job { entries, reply }).await.is_err() {
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log is not accepting writes",
        ));
    }
    match rx.await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(text(StatusCode::SERVICE_UNAVAILABLE, e)),
        Err(_) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log stopped before storing the entry",
        )),
    }
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn add(State(s): State<AppState>, body: Bytes) -> Response {
    match commit(&s, Entries::One(body)).await {
        Ok(c) => json(c.single_json()),
        Err(r) => r,
    }
}

async fn add_batch(State(s): State<AppState>, body: Bytes) -> Response {
    let ranges = match batch::parse_batch(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let entries = ranges.into_iter().map(|r| body.slice(r)).collect();
    match commit(&s, Entries::Many(entries)).await {
        Ok(c) => json(c.batch_json()),
        Err(r) => r,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tandem_attest::log::{BatchInclusion, InclusionBundle};

    fn committed(n: usize) -> (Committed, &'static str) {
        let note = "test.tandem/log\n3\nAAAA\n\n\u{2014} test.tandem/log sig\"\\\n";
        let proofs = (0..n)
            .map(|i| (0..=i).map(|k| [(i * 7 + k) as u8; 32]).collect())
            .collect();
        let c = Committed {
            first_index: 5,
            tree_size: 9,
            proofs,
            checkpoint_json: serde_json::to_string(note).unwrap().into(),
        };
        (c, note)
    }

    #[test]
    fn answers_are_the_json_serde_writes() {
        let (c, note) = committed(1);
        let want = InclusionBundle::new(5, 9, &c.proofs[0], note.as_bytes());
        assert_eq!(c.single_json(), serde_json::to_string(&want).unwrap());
        let (c, note) = committed(3);
        let want = BatchInclusion {
            first_index: 5,
            tree_size: 9,
            inclusion_proofs: c
                .proofs
                .iter()
                .map(|p| p.iter().map(|h| B64.encode(h)).collect())
                .collect(),
            checkpoint: note.into(),
        };
        assert_eq!(c.batch_json(), serde_json::to_string(&want).unwrap());
        let got: BatchInclusion = serde_json::from_str(&c.batch_json()).unwrap();
        assert_eq!(got.bundles().unwrap()[2].index, 7);
    }
}
