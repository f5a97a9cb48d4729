//! Clients of the log: `attest log append | checkpoint | prove | audit`.
//!
//! Every answer from the log is checked with the library before it is shown: checkpoints
//! against the log key, proofs against the checkpoint, tiles against the recomputed tree.

use std::path::Path;

use anyhow::{Context, bail};
use tandem_attest::log::batch::{self, BatchInclusion};
use tandem_attest::log::merkle::MemoryTree;
use tandem_attest::log::note::{self, VerifiedCheckpoint};
use tandem_attest::log::tile::{self, TILE_WIDTH, TileKind, TilePath};
use tandem_attest::log::{CheckpointTracker, InclusionBundle, NoteVerifier, Observation};
use tandem_log::LogClient;

fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

fn url(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path)
}

fn reader(base: &str) -> anyhow::Result<LogClient> {
    Ok(LogClient::new(base, std::time::Duration::from_secs(60))?)
}

/// Fetch and verify the current checkpoint.
pub async fn fetch_checkpoint(
    reader: &LogClient,
    log: &NoteVerifier,
) -> anyhow::Result<VerifiedCheckpoint> {
    Ok(reader.checkpoint(log).await?)
}

pub async fn append(
    base: &str,
    log: &NoteVerifier,
    entry: &[u8],
    json: bool,
) -> anyhow::Result<()> {
    let client = http()?;
    let u = url(base, "add");
    let resp = client
        .post(&u)
        .body(entry.to_vec())
        .send()
        .await
        .with_context(|| format!("POST {u}"))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("POST {u}: {status}: {}", String::from_utf8_lossy(&body));
    }
    let bundle: InclusionBundle =
        serde_json::from_slice(&body).context("the log's answer is not an inclusion bundle")?;
    let verified = bundle.verify(entry, log, None, None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&bundle)?);
    } else {
        println!(
            "entry {} included under checkpoint of size {} (root {})",
            verified.index,
            verified.checkpoint.checkpoint().size,
            hex::encode(verified.checkpoint.checkpoint().root_hash)
        );
    }
    Ok(())
}

/// Split `entries` into batch requests within the server's limits.
fn batch_chunks(entries: &[Vec<u8>]) -> anyhow::Result<Vec<std::ops::Range<usize>>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, e) in entries.iter().enumerate() {
        if e.len() > tile::MAX_ENTRY_LEN {
            bail!(
                "entry {i} is {} bytes; a log entry holds at most {}",
                e.len(),
                tile::MAX_ENTRY_LEN
            );
        }
        let size = 2 + e.len();
        if i > start
            && (i - start == batch::MAX_BATCH_ENTRIES || bytes + size > batch::MAX_BATCH_BODY)
        {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    Ok(out)
}

/// Append several entries with `POST /add-batch` and verify every inclusion proof.
pub async fn append_batch(
    base: &str,
    log: &NoteVerifier,
    names: &[std::path::PathBuf],
    entries: &[Vec<u8>],
    json: bool,
) -> anyhow::Result<()> {
    let client = http()?;
    let u = url(base, "add-batch");
    let chunks = batch_chunks(entries)?;
    let bar = indicatif::ProgressBar::new(entries.len() as u64);
    if chunks.len() < 2 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut bundles = Vec::with_capacity(entries.len());
    let mut lines = Vec::with_capacity(entries.len());
    for range in chunks {
        let chunk = &entries[range.clone()];
        let body = batch::encode_batch(chunk)?;
        let resp = client
            .post(&u)
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {u}"))?;
        let status = resp.status();
        let answer = resp.bytes().await?;
        if !status.is_success() {
            bail!("POST {u}: {status}: {}", String::from_utf8_lossy(&answer));
        }
        let answer: BatchInclusion = serde_json::from_slice(&answer)
            .context("the log's answer is not a batch inclusion answer")?;
        let verified = answer.verify(chunk, log, None, None).with_context(|| {
            format!(
                "the log's proofs for entries {}..{} do not verify",
                range.start, range.end
            )
        })?;
        for (k, v) in verified.iter().enumerate() {
            lines.push(format!(
                "{}: entry {} included under checkpoint of size {} (root {})",
                names[range.start + k].display(),
                v.index,
                v.checkpoint.checkpoint().size,
                hex::encode(v.checkpoint.checkpoint().root_hash)
            ));
        }
        bundles.extend(answer.bundles()?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&bundles)?);
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}

/// Read a checkpoint saved earlier, verified with the log key.
fn load_saved(path: &Path, log: &NoteVerifier) -> anyhow::Result<VerifiedCheckpoint> {
    let b = std::fs::read(path)
        .with_context(|| format!("reading saved checkpoint {}", path.display()))?;
    note::open_checkpoint(&b, log, None, None)
        .with_context(|| format!("saved checkpoint {}", path.display()))
}

/// Check `current` against a saved checkpoint with a consistency proof built from tiles.
async fn check_against_saved(
    reader: &LogClient,
    saved: &VerifiedCheckpoint,
    current: &VerifiedCheckpoint,
) -> anyhow::Result<Observation> {
    let mut tracker = CheckpointTracker::with_newest(saved.checkpoint().clone());
    let proof = match tracker.proof_needed(current.checkpoint()) {
        None => Vec::new(),
        Some((old, new)) => {
            // The tiles of the larger tree serve both sizes.
            reader.consistency_proof(old, new).await?
        }
    };
    Ok(tracker.observe(current, &proof)?)
}

pub async fn checkpoint(
    base: &str,
    log: &NoteVerifier,
    out: Option<&Path>,
    since: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let reader = reader(base)?;
    let cp = fetch_checkpoint(&reader, log).await?;
    let observation = match since {
        Some(p) => Some(check_against_saved(&reader, &load_saved(p, log)?, &cp).await?),
        None => None,
    };
    if let Some(out) = out {
        std::fs::write(out, cp.note_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let c = cp.checkpoint();
    if json {
        let v = serde_json::json!({
            "origin": c.origin,
            "size": c.size,
            "root_hash": hex::encode(c.root_hash),
            "consistent_with_saved": observation.map(|o| format!("{o:?}")),
            "signed_note": String::from_utf8_lossy(cp.note_bytes()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "origin {}\nsize {}\nroot {}",
            c.origin,
            c.size,
            hex::encode(c.root_hash)
        );
        if let Some(o) = observation {
            println!("consistent with the saved checkpoint: {o:?}");
        }
    }
    Ok(())
}

pub async fn prove(
    base: &str,
    log: &NoteVerifier,
    entry: &[u8],
    index: u64,
    tlog_proof: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let reader = reader(base)?;
    let cp = fetch_checkpoint(&reader, log).await?;
    let size = cp.checkpoint().size;
    if index >= size {
        bail!("index {index} is not in the log's checkpoint of size {size}");
    }
    let bundle = reader.inclusion(&cp, index).await?;
    bundle
        .verify(entry, log, None, None)
        .with_context(|| format!("entry is not at index {index} of the log"))?;
    if let Some(p) = tlog_proof {
        std::fs::write(p, bundle.to_tlog_proof(None))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&bundle)?);
    } else {
        println!("entry {index} is included under the checkpoint of size {size}");
    }
    Ok(())
}

pub async fn audit(
    base: &str,
    log: &NoteVerifier,
    saved: Option<&Path>,
    save: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let reader = reader(base)?;
    let cp = fetch_checkpoint(&reader, log).await?;
    let size = cp.checkpoint().size;
    let saved = saved.map(|p| load_saved(p, log)).transpose()?;

    // 1. Replay every entry bundle and rebuild the tree.
    let bundles = size.div_ceil(TILE_WIDTH);
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entries ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tree = MemoryTree::new();
    for index in 0..bundles {
        let Some(t) = TilePath::for_tree(TileKind::Entries, index, size) else {
            break;
        };
        let entries = reader.entry_bundle(&t).await?;
        for e in &entries {
            tree.push(e);
        }
        bar.inc(entries.len() as u64);
    }
    bar.finish_and_clear();
    let root = tree.root(size)?;
    if root != cp.checkpoint().root_hash {
        bail!(
            "the log's entries hash to root {} but its checkpoint of size {size} says {}: the log serves \
             entries that its checkpoint does not commit to",
            hex::encode(root),
            hex::encode(cp.checkpoint().root_hash)
        );
    }

    // 2. Every hash tile the log serves must match the recomputed tree.
    let mut tiles_checked = 0u64;
    for t in tile::tiles_to_publish(0, size)
        .into_iter()
        .filter(|t| matches!(t.kind, TileKind::Hash(_)))
    {
        let TileKind::Hash(level) = t.kind else {
            continue;
        };
        let served = reader.get_tile(&t).await?;
        if served != tile::hash_tile_data(&tree, level, t.index, t.width)? {
            bail!(
                "tile {} differs from the tree recomputed from the entries",
                t.to_path()
            );
        }
        tiles_checked += 1;
    }

    // 3. Consistency with the saved checkpoint: the replayed tree must extend it.
    let observation = match &saved {
        Some(old) => {
            let mut tracker = CheckpointTracker::with_newest(old.checkpoint().clone());
            let proof = match tracker.proof_needed(cp.checkpoint()) {
                Some((a, b)) => tree.consistency_proof(a, b)?,
                None => Vec::new(),
            };
            Some(tracker.observe(&cp, &proof)?)
        }
        None => None,
    };
    if let Some(p) = save {
        std::fs::write(p, cp.note_bytes()).with_context(|| format!("writing {}", p.display()))?;
    }
    if json {
        let v = serde_json::json!({
            "origin": cp.checkpoint().origin,
            "size": size,
            "root_hash": hex::encode(root),
            "entries_replayed": tree.size(),
            "hash_tiles_checked": tiles_checked,
            "consistent_with_saved": observation.map(|o| format!("{o:?}")),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "audit passed: {size} entries replayed, {tiles_checked} hash tiles match, root {}",
            hex::encode(root)
        );
        if let Some(o) = observation {
            println!("consistent with the saved checkpoint: {o:?}");
        }
    }
    Ok(())
}
