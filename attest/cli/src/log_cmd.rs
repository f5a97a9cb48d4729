//! `attest log ...`: the transparency-log server and its clients.

#[path = "log/client.rs"]
mod client;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use tandem_attest::log::{NoteSigner, NoteVerifier};
use tandem_log::server;
use tandem_log::store::LogStore;

/// Arguments of `attest log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

/// Where the log is and how to check it.
#[derive(Debug, Args)]
struct LogTarget {
    /// Base URL of the log, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    log: String,
    /// The log's verifier key (`name+id+base64`), or a file holding it.
    #[arg(long = "log-key")]
    log_key: String,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Generate a log signing key (C2SP signed-note Ed25519); prints the verifier key.
    Keygen {
        /// Origin (log name) the key signs checkpoints for, e.g. `tandem.example/log`.
        #[arg(long)]
        origin: String,
        /// Where to write the private signing key (created with mode 0600, never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve the log (C2SP tlog-tiles read API plus `POST /add` and `POST /add-batch`).
    Serve {
        /// Directory holding the log's WAL, tiles and checkpoint (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// The private key file written by `attest log keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Threads serving HTTP, 1..=1024 (default: one less than the CPUs, at least one; the
        /// sequencer that commits batches has a thread of its own).
        #[arg(long)]
        http_threads: Option<usize>,
        /// A C2SP tlog-witness to submit every new checkpoint to, `URL=VKEY` (the witness's
        /// submission prefix and cosigner verifier key); repeatable. `GET /checkpoint` then
        /// serves the newest checkpoint with the witnesses' cosignature lines appended. A
        /// checkpoint fewer than `--witness-quorum` witnesses cosigned is still published
        /// (log-signed, with the cosignatures it got), logged on standard error, and retried
        /// with back-off (1 s doubling to 60 s) until the quorum or a newer checkpoint.
        #[arg(long = "witness", value_name = "URL=VKEY")]
        witnesses: Vec<String>,
        /// How many of the `--witness`es must cosign (default: all of them).
        #[arg(long, value_name = "K")]
        witness_quorum: Option<usize>,
    },
    /// Append entries and print each one's verified inclusion proof.
    ///
    /// One file is sent with `POST /add`. Several are sent together with `POST /add-batch`
    /// (one durable commit and one checkpoint per request of up to 4,096 entries / 8 MiB) and
    /// get consecutive indices in the order given.
    Append {
        #[command(flatten)]
        target: LogTarget,
        /// Files, each holding one entry (`-` for standard input, at most once).
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Print JSON: the inclusion bundle (one file) or an array of them, in file order.
        #[arg(long)]
        json: bool,
    },
    /// Fetch and verify the log's current checkpoint.
    Checkpoint {
        #[command(flatten)]
        target: LogTarget,
        /// Also write the signed checkpoint to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A checkpoint saved earlier: require a consistency proof from it.
        #[arg(long)]
        since: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prove that an entry is in the log: inclusion proof built from the log's tiles.
    Prove {
        #[command(flatten)]
        target: LogTarget,
        /// File holding the entry.
        file: PathBuf,
        /// Index of the entry in the log.
        #[arg(long)]
        index: u64,
        /// Also write the proof as a C2SP tlog-proof (`c2sp.org/tlog-proof@v1`) to this file,
        /// for offline verification (`attest log verify-proof`).
        #[arg(long, value_name = "FILE")]
        tlog_proof: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a C2SP tlog-proof offline (no log round trip): the checkpoint's signature under
    /// the log key (and witness cosignatures if asked), and the entry's inclusion path.
    VerifyProof {
        /// The `.tlog-proof` file.
        proof: PathBuf,
        /// File holding the entry (`-` for standard input).
        #[arg(long)]
        entry: PathBuf,
        /// The log's verifier key (`name+id+base64`), or a file holding it.
        #[arg(long = "log-key")]
        log_key: String,
        /// A witness's cosigner verifier key (repeatable).
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// How many of the given witnesses must have cosigned (default: all of them).
        #[arg(long)]
        witnesses_required: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay the whole log: fetch every entry bundle and hash tile, recompute the tree, check
    /// the checkpoint and consistency with a saved checkpoint.
    Audit {
        #[command(flatten)]
        target: LogTarget,
        /// A checkpoint saved earlier; the log must still extend it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Save the newly verified checkpoint here.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Most `--http-threads` of `attest log serve`.
const MAX_HTTP_THREADS: usize = 1024;

/// Run an `attest log` subcommand.
pub fn run(args: LogArgs) -> anyhow::Result<()> {
    match args.command {
        LogCommand::Keygen { origin, out } => keygen(&origin, &out),
        LogCommand::Serve {
            dir,
            listen,
            key,
            http_threads,
            witnesses,
            witness_quorum,
        } => {
            // Validate everything before binding the port.
            if let Some(n) = http_threads {
                anyhow::ensure!(
                    (1..=MAX_HTTP_THREADS).contains(&n),
                    "--http-threads {n} is outside 1..=1024"
                );
            }
            let signer = load_signer(&key)?;
            let witnesses = witness_config(&witnesses, witness_quorum, signer.verifier())?;
            let (store, rec) = LogStore::open(&dir, signer)?;
            eprintln!(
                "log {}: {} entries (published checkpoint was {}, cut {} torn WAL bytes)",
                dir.display(),
                rec.entries,
                rec.previous_checkpoint,
                rec.truncated_bytes
            );
            for t in &rec.repaired_tiles {
                eprintln!("log {}: rewrote {t} from the WAL", dir.display());
            }
            serve_runtime(http_threads)?.block_on(serve(store, &listen, witnesses))
        }
        LogCommand::Append {
            target,
            files,
            json,
        } => {
            if files.iter().filter(|f| *f == Path::new("-")).count() > 1 {
                anyhow::bail!("standard input (-) can be given only once");
            }
            let entries = files
                .iter()
                .map(|f| read_input(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let vkey = load_vkey(&target.log_key)?;
            if let [entry] = entries.as_slice() {
                runtime()?.block_on(client::append(&target.log, &vkey, entry, json))
            } else {
                runtime()?.block_on(client::append_batch(
                    &target.log,
                    &vkey,
                    &files,
                    &entries,
                    json,
                ))
            }
        }
        LogCommand::Checkpoint {
            target,
            out,
            since,
            json,
        } => runtime()?.block_on(client::checkpoint(
            &target.log,
            &load_vkey(&target.log_key)?,
            out.as_deref(),
            since.as_deref(),
            json,
        )),
        LogCommand::Prove {
            target,
            file,
            index,
            tlog_proof,
            json,
        } => {
            let entry = read_input(&file)?;
            runtime()?.block_on(client::prove(
                &target.log,
                &load_vkey(&target.log_key)?,
                &entry,
                index,
                tlog_proof.as_deref(),
                json,
            ))
        }
        LogCommand::VerifyProof {
            proof,
            entry,
            log_key,
            witnesses,
            witnesses_required,
            json,
        } => verify_proof(
            &proof,
            &read_input(&entry)?,
            &load_vkey(&log_key)?,
            &witnesses,
            witnesses_required,
            json,
        ),
        LogCommand::Audit {
            target,
            checkpoint,
            save,
            json,
        } => runtime()?.block_on(client::audit(
            &target.log,
            &load_vkey(&target.log_key)?,
            checkpoint.as_deref(),
            save.as_deref(),
            json,
        )),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tandem_service::runtime(2).context("starting the async runtime")
}

/// The server's runtime: `threads` async workers for HTTP, by default one less than the CPUs
/// (the sequencer has its own thread).
fn serve_runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = threads.unwrap_or(cpus.saturating_sub(1)).max(1);
    tandem_service::runtime(threads).context("starting the async runtime")
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        return Ok(b);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn load_signer(path: &Path) -> anyhow::Result<NoteSigner> {
    let skey = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    NoteSigner::from_skey(&skey).with_context(|| format!("key file {}", path.display()))
}

/// A verifier key given inline or as a file.
fn load_vkey(arg: &str) -> anyhow::Result<tandem_attest::log::NoteVerifier> {
    let text = if Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    } else {
        arg.to_owned()
    };
    Ok(tandem_attest::log::NoteVerifier::new(text.trim())?)
}

fn keygen(origin: &str, out: &Path) -> anyhow::Result<()> {
    let (signer, skey) = NoteSigner::generate_with_rng(&mut rand::rngs::OsRng, origin)?;
    write_new_key_file(out, &skey)?;
    println!("{}", signer.vkey());
    Ok(())
}

/// Writes a private key (one line) to a new file readable only by its owner, synced; refuses
/// to overwrite an existing file. Shared by `attest log keygen` and `attest witness keygen`.
pub(crate) fn write_new_key_file(out: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;

    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(out).with_context(|| {
        format!(
            "creating key file {} (it must not exist yet)",
            out.display()
        )
    })?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Timeout of one `add-checkpoint` request to a witness.
const WITNESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `--witness URL=VKEY ... --witness-quorum K` checked before the port is bound.
fn witness_config(
    args: &[String],
    quorum: Option<usize>,
    log_key: NoteVerifier,
) -> anyhow::Result<Option<tandem_log::witness::WitnessConfig>> {
    use tandem_log::witness::{WitnessConfig, WitnessTarget};
    if args.is_empty() {
        anyhow::ensure!(
            quorum.is_none(),
            "--witness-quorum needs at least one --witness URL=VKEY"
        );
        return Ok(None);
    }
    let targets = args
        .iter()
        .map(|a| WitnessTarget::parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    let k = quorum.unwrap_or(targets.len());
    Ok(Some(WitnessConfig::new(
        targets,
        k,
        log_key,
        WITNESS_TIMEOUT,
    )?))
}

/// Serve until Ctrl-C / SIGTERM.
async fn serve(
    store: LogStore,
    listen: &str,
    witnesses: Option<tandem_log::witness::WitnessConfig>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("listening on http://{addr}");
    let app = match witnesses {
        Some(w) => server::app_witnessed(store, w)?,
        None => server::app(store),
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(tandem_service::shutdown_signal())
        .await
        .context("serving HTTP")
}

/// `attest log verify-proof`: a C2SP tlog-proof checked offline.
fn verify_proof(
    path: &Path,
    entry: &[u8],
    log: &NoteVerifier,
    witnesses: &[String],
    required: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let proof = tandem_attest::log::TlogProof::parse(&bytes)
        .with_context(|| format!("{} is not a C2SP tlog-proof", path.display()))?;
    let policy = if witnesses.is_empty() {
        None
    } else {
        let keys = witnesses
            .iter()
            .map(|w| tandem_attest::log::note::CosignerKey::new(w.trim()))
            .collect::<Result<Vec<_>, _>>()
            .context("a --witness key is not a cosigner verifier key")?;
        let n = keys.len();
        Some(
            tandem_attest::log::note::WitnessPolicy::new(keys, required.unwrap_or(n))
                .context("--witnesses-required")?,
        )
    };
    let b = &proof.bundle;
    let verified = b
        .verify(entry, log, policy.as_ref(), None)
        .with_context(|| {
            format!(
                "the entry is not proved by {}: index {} under the checkpoint of size {} of {}",
                path.display(),
                b.index,
                b.tree_size,
                log.name()
            )
        })?;
    let cp = verified.checkpoint.checkpoint();
    if json {
        let v = serde_json::json!({
            "ok": true,
            "origin": cp.origin,
            "index": verified.index,
            "tree_size": cp.size,
            "root_hash": hex::encode(cp.root_hash),
            "witness_cosignatures": verified.checkpoint.cosignatures().len(),
            "extra": proof.extra.as_ref().map(|e| base64::engine::general_purpose::STANDARD.encode(e)),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "checkpoint of {} at size {} signed by the log key: ok",
            cp.origin, cp.size
        );
        if let Some(p) = &policy {
            println!("witness cosignatures: {} required, ok", p.required());
        }
        println!("entry included at index {}: ok", verified.index);
    }
    Ok(())
}
