//! `attest witness ...`: a C2SP tlog-witness (keys, and the `add-checkpoint` server).
//!
//! The witness's rules are `tandem_attest::log::witness` (pure); this file holds the key file,
//! the state file and the HTTP server. The check, the durable write of the new state and the
//! in-memory update happen under one lock, so two concurrent submissions cannot roll the state
//! back (the race C2SP tlog-witness describes), and no cosignature leaves before the state that
//! justifies it is on disk.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::{Args, Subcommand};
use tandem_attest::log::NoteVerifier;
use tandem_attest::log::note::Cosigner;
use tandem_attest::log::witness::{MAX_ADD_CHECKPOINT_LEN, Witness};

/// The state file in `--state DIR`: the latest cosigned checkpoint body per origin.
const STATE_FILE: &str = "witness-state";

/// Arguments of `attest witness`.
#[derive(Debug, Args)]
pub struct WitnessArgs {
    #[command(subcommand)]
    command: WitnessCommand,
}

#[derive(Debug, Subcommand)]
enum WitnessCommand {
    /// Generate a witness key (C2SP tlog-cosignature, Ed25519 `cosignature/v1`); prints the
    /// cosigner verifier key that logs (`attest log serve --witness URL=VKEY`) and device
    /// policies (`witnessKeys`) use.
    Keygen {
        /// The witness's name, e.g. `witness.example/w1`.
        #[arg(long)]
        name: String,
        /// Where to write the private key (created with mode 0600, never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve a C2SP tlog-witness: `POST /add-checkpoint` cosigns a log's checkpoint if it is
    /// signed by the log's key and consistent with the latest one this witness cosigned for
    /// that origin (404 unknown origin, 403 bad signature, 400 malformed or old size past the
    /// checkpoint, 409 old size is not the witness's latest (body: that size,
    /// `text/x.tlog.size`) or same size with another root, 422 consistency proof fails). The
    /// latest checkpoint per origin is written durably to `--state DIR` before each answer.
    Serve {
        /// The private key file written by `attest witness keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// A log to witness, `ORIGIN=VKEY` or just `VKEY` (the origin is then the key's name);
        /// repeatable, and an origin may be given several keys.
        #[arg(long = "log", value_name = "ORIGIN=VKEY", required = true)]
        logs: Vec<String>,
        /// Directory holding the witness's state (created if missing).
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// Address to listen on (port 0 picks a free port; the chosen address is printed).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
    },
}

/// Run an `attest witness` subcommand.
pub fn run(args: WitnessArgs) -> anyhow::Result<()> {
    match args.command {
        WitnessCommand::Keygen { name, out } => keygen(&name, &out),
        WitnessCommand::Serve {
            key,
            logs,
            state,
            listen,
        } => {
            // Validate everything and load the state before binding the port.
            let skey = fs::read_to_string(&key)
                .with_context(|| format!("reading key file {}", key.display()))?;
            let cosigner = Cosigner::from_skey(&skey)
                .with_context(|| format!("key file {}", key.display()))?;
            let logs = logs
                .iter()
                .map(|a| parse_log(a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut witness = Witness::new(cosigner, logs)?;
            fs::create_dir_all(&state)
                .with_context(|| format!("creating the state directory {}", state.display()))?;
            let path = state.join(STATE_FILE);
            match fs::read(&path) {
                Ok(b) => witness.restore_state(&b).with_context(|| {
                    format!(
                        "the witness state {} is damaged; restore it from a backup (starting \
                         empty would let a log roll back)",
                        path.display()
                    )
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
            eprintln!(
                "witness {}: state {}, key {}",
                witness.cosigner().key().name(),
                path.display(),
                witness.cosigner().key().vkey()
            );
            tandem_service::runtime(2)
                .context("starting the async runtime")?
                .block_on(serve(witness, state, &listen))
        }
    }
}

/// `ORIGIN=VKEY`, or `VKEY` alone (origin = key name). The first `=` splits, unless the part
/// before it holds a `+` (then it is inside the key's base64).
fn parse_log(arg: &str) -> anyhow::Result<(String, NoteVerifier)> {
    let (origin, vkey) = match arg.split_once('=') {
        Some((o, v)) if !o.contains('+') => (Some(o.to_owned()), v),
        _ => (None, arg),
    };
    let key = NoteVerifier::new(vkey)
        .with_context(|| format!("--log {arg:?}: expected ORIGIN=VKEY with a log verifier key"))?;
    let origin = origin.unwrap_or_else(|| key.name().to_owned());
    Ok((origin, key))
}

fn keygen(name: &str, out: &Path) -> anyhow::Result<()> {
    let cosigner = Cosigner::generate_with_rng(&mut rand::rngs::OsRng, name)?;
    crate::log_cmd::write_new_key_file(out, &cosigner.private_key())?;
    println!("{}", cosigner.key().vkey());
    Ok(())
}

/// The witness and where its state lives; one lock around check, persist and record.
struct Shared {
    witness: Mutex<Witness>,
    dir: PathBuf,
}

/// Write `bytes` to `dir/STATE_FILE` durably: temporary file, fsync, rename, fsync of the
/// directory.
fn persist(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(STATE_FILE))?;
    File::open(dir)?.sync_all()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// C2SP tlog-witness "add-checkpoint", run on a blocking thread (it fsyncs under the lock).
fn add_checkpoint_blocking(shared: &Shared, body: &[u8]) -> Response {
    let Ok(mut w) = shared.witness.lock() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "witness state poisoned\n",
        )
            .into_response();
    };
    match w.check(body, now()) {
        Ok(cosigned) => {
            if let Err(e) = persist(&shared.dir, &w.state_with(&cosigned)) {
                eprintln!(
                    "attest witness: cannot persist state to {}: {e}; not cosigning",
                    shared.dir.display()
                );
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the witness cannot persist its state\n",
                )
                    .into_response();
            }
            let line = w.record(cosigned);
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response()
        }
        Err(refusal) => {
            let (content_type, body) = refusal.body();
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
    }
}

async fn add_checkpoint(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match tokio::task::spawn_blocking(move || add_checkpoint_blocking(&shared, &body)).await {
        Ok(r) => r,
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the witness failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Serve until Ctrl-C / SIGTERM.
async fn serve(witness: Witness, dir: PathBuf, listen: &str) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        witness: Mutex::new(witness),
        dir,
    });
    let app = Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .layer(DefaultBodyLimit::max(MAX_ADD_CHECKPOINT_LEN))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
}
