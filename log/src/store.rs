//! Durable storage of the transparency log.
//!
//! Layout of the log directory:
//! - `entries.wal`: every entry ever appended, as `u32 BE length || data || SHA-256 leaf hash`.
//!   It is the source of truth; everything else is derived from it.
//! - `tile/...`: C2SP tlog-tiles hash tiles and entry bundles, written by rename; the partial
//!   tiles of an index are deleted once its full tile is published.
//! - `checkpoint`: the published signed checkpoint, replaced by rename.
//!
//! Order of a commit (group commit of a batch), with one round of syncs per step, each round's
//! syncs issued in parallel (a journaling filesystem folds them into one journal commit; without
//! a journal their I/O at least overlaps):
//! 1. append the batch to the WAL, write every tile that changed and the new checkpoint to
//!    temporary files; fsync the WAL and every temporary file;
//! 2. rename the tiles into place and fsync every directory that gained an entry;
//! 3. rename the checkpoint into place and fsync the log directory; only then answer the writers.
//!
//! So a published checkpoint is always backed by synced tiles and entries, and an answered entry
//! is always in the WAL. On open, a torn WAL tail (a crash mid-write, never acknowledged) is cut
//! off, the tree is rebuilt and checked against the published checkpoint, and entries that are
//! in the WAL but not yet under a checkpoint are tiled and published.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use tandem_attest::log::Checkpoint;
use tandem_attest::log::LogError;
use tandem_attest::log::merkle::{self, Hash, MemoryTree};
use tandem_attest::log::note::{self, NoteSigner};
use tandem_attest::log::tile::{self, TILE_WIDTH, TileKind, TilePath};

/// Why the log's storage failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The log directory does not back its own published checkpoint.
    #[error("{0}")]
    Damaged(String),
    /// The caller asked for something the log cannot give (an entry too long, a size not
    /// published yet).
    #[error("{0}")]
    InvalidArgument(String),
    /// Tree, tile or signing code refused.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Names what an I/O call was doing.
trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            what: what(),
            source,
        })
    }
}

const WAL: &str = "entries.wal";
const CHECKPOINT: &str = "checkpoint";

/// The log's durable state plus the in-memory tree used to answer proofs.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    signer: NoteSigner,
    wal: File,
    tree: MemoryTree,
    /// Entries of the rightmost (partial) level-0 tile, needed to rewrite its entry bundle.
    tail_entries: Vec<Vec<u8>>,
    checkpoint: Vec<u8>,
    published_size: u64,
}

/// What [`LogStore::open`] found and did.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Entries in the WAL after recovery.
    pub entries: u64,
    /// Size of the checkpoint that was published before the crash or shutdown.
    pub previous_checkpoint: u64,
    /// Bytes of torn WAL tail cut off.
    pub truncated_bytes: u64,
    /// Tiles of the published tree that were missing or did not match the WAL, rewritten from
    /// it (`tile/0/000 (missing)`, …).
    pub repaired_tiles: Vec<String>,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync of directory {}", dir.display()))
}

/// Create `dir` if needed; every directory whose entries changed is added to `to_sync`.
fn ensure_dir(dir: &Path, to_sync: &mut BTreeSet<PathBuf>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent, to_sync)?;
        to_sync.insert(parent.to_path_buf());
    }
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).ctx(|| format!("creating {}", dir.display())),
    }
}

/// Files a commit writes: each goes to a temporary file, is synced, then renamed into place.
#[derive(Debug, Default)]
struct Staged {
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Directories that gain an entry (renamed files, created directories) and must be synced.
    dirs: BTreeSet<PathBuf>,
}

impl Staged {
    fn contains(&self, path: &Path) -> bool {
        self.files.iter().any(|(p, _)| p == path)
    }

    /// Stage `data` for `path`, creating its directory if needed.
    fn add(&mut self, path: PathBuf, data: Vec<u8>) -> Result<()> {
        if let Some(parent) = path.parent() {
            ensure_dir(parent, &mut self.dirs)?;
            self.dirs.insert(parent.to_path_buf());
        }
        if let Some(i) = self.files.iter().position(|(p, _)| *p == path) {
            self.files[i].1 = data;
        } else {
            self.files.push((path, data));
        }
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

/// Write `data` to the temporary file for `path` and sync it (not yet renamed).
fn write_synced_tmp(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .ctx(|| format!("writing {}", tmp.display()))?;
    f.sync_data().ctx(|| format!("fsync of {}", tmp.display()))
}

fn rename_tmp(path: &Path) -> Result<()> {
    fs::rename(tmp_path(path), path).ctx(|| format!("renaming to {}", path.display()))
}

/// Most syncs issued at once.
const MAX_PARALLEL_SYNCS: usize = 32;

/// Run `job` on every item, concurrently (at most [`MAX_PARALLEL_SYNCS`] at a time), and `first`
/// on this thread meanwhile. Concurrent fsyncs are folded by the filesystem into one journal
/// commit, so a round costs about one sync however many files it covers. Returns the first
/// error; every job has finished when it returns.
fn in_parallel<T: Sync>(
    items: &[T],
    job: impl Fn(&T) -> Result<()> + Sync,
    first: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let mut first = Some(first);
    let mut result = Ok(());
    for chunk in items.chunks(MAX_PARALLEL_SYNCS) {
        let first = first.take();
        let chunk_result = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|it| s.spawn(|| job(it))).collect();
            let mut r = first.map_or(Ok(()), |f| f());
            for h in handles {
                let joined = h.join().unwrap_or_else(|_| {
                    Err(StoreError::Io {
                        what: "a sync thread".into(),
                        source: std::io::Error::other("panicked"),
                    })
                });
                r = r.and(joined);
            }
            r
        });
        result = result.and(chunk_result);
    }
    if let Some(f) = first.take() {
        result = result.and(f());
    }
    result
}

impl LogStore {
    /// Open (or create) the log in `dir`, recovering from any crash.
    pub fn open(dir: &Path, signer: NoteSigner) -> Result<(Self, Recovery)> {
        fs::create_dir_all(dir).ctx(|| format!("creating log directory {}", dir.display()))?;
        let wal_path = dir.join(WAL);
        let mut wal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&wal_path)
            .ctx(|| format!("opening {}", wal_path.display()))?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes)
            .ctx(|| format!("reading {}", wal_path.display()))?;

        // 1. Replay the WAL; the first record that is incomplete or fails its hash ends it.
        let mut tree = MemoryTree::new();
        let mut entries_since_tile: Vec<Vec<u8>> = Vec::new();
        let mut pos = 0usize;
        let mut spans: Vec<(usize, usize)> = Vec::new();
        while let Some((data, next)) = read_record(&bytes, pos) {
            spans.push((pos + 4, pos + 4 + data.len()));
            tree.push_leaf_hash(merkle::leaf_hash(data));
            if tree.size() % TILE_WIDTH == 1 {
                entries_since_tile.clear();
            }
            entries_since_tile.push(data.to_vec());
            pos = next;
        }
        let truncated_bytes = (bytes.len() - pos) as u64;
        if tree.size().is_multiple_of(TILE_WIDTH) {
            entries_since_tile.clear();
        }

        // 2. The published checkpoint must be backed by the WAL.
        let cp_path = dir.join(CHECKPOINT);
        let verifier = signer.verifier();
        let (checkpoint, published_size) = match fs::read(&cp_path) {
            Ok(b) => {
                let v = note::open_checkpoint(&b, &verifier, None, None).map_err(|e| {
                    StoreError::Damaged(format!(
                        "the published checkpoint {} does not verify with the log key: {e}",
                        cp_path.display()
                    ))
                })?;
                let cp = v.checkpoint();
                if cp.size > tree.size() {
                    return Err(StoreError::Damaged(format!(
                        "the published checkpoint covers {} entries but the WAL holds only {}: \
                         acknowledged entries are missing from {}; restore it from backup",
                        cp.size,
                        tree.size(),
                        wal_path.display()
                    )));
                }
                let root = tree.root(cp.size)?;
                if root != cp.root_hash {
                    return Err(StoreError::Damaged(format!(
                        "the WAL's first {} entries hash to {} but the published checkpoint says {}; \
                         the WAL was altered",
                        cp.size,
                        hex::encode(root),
                        hex::encode(cp.root_hash)
                    )));
                }
                (b, cp.size)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
            Err(e) => return Err(e).ctx(|| "reading the published checkpoint".into()),
        };

        if truncated_bytes > 0 {
            // Only now, with the published checkpoint known to be backed by the valid prefix:
            // a torn tail was never fsynced, so never acknowledged; drop it.
            wal.set_len(pos as u64)
                .ctx(|| format!("cutting the torn tail of {}", wal_path.display()))?;
            wal.sync_all()
                .ctx(|| format!("fsync of {}", wal_path.display()))?;
        }

        // 3. Every tile of the published tree must be on disk and match the WAL: a lost or
        //    damaged file (a deleted `tile/0/000`, a bad disk block) is rewritten from the WAL,
        //    so the log never serves a tree that cannot be verified. Reading every tile is one
        //    pass over files the size of the WAL's hashes and entries.
        let mut staged = Staged::default();
        let mut repaired_tiles = Vec::new();
        for t in tile::tiles_to_publish(0, published_size) {
            let want = match t.kind {
                TileKind::Hash(level) => tile::hash_tile_data(&tree, level, t.index, t.width)?,
                TileKind::Entries => {
                    let lo = (t.index * TILE_WIDTH) as usize;
                    let entries: Vec<&[u8]> = spans[lo..lo + usize::from(t.width)]
                        .iter()
                        .map(|&(a, b)| &bytes[a..b])
                        .collect();
                    tile::encode_entry_bundle(&entries)?
                }
            };
            let path = dir.join(t.to_path());
            match fs::read(&path) {
                Ok(have) if have == want => {}
                Ok(_) => {
                    repaired_tiles.push(format!("{} (did not match the WAL)", t.to_path()));
                    staged.add(path, want)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    repaired_tiles.push(format!("{} (missing)", t.to_path()));
                    staged.add(path, want)?;
                }
                Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
            }
        }

        let mut store = Self {
            dir: dir.to_path_buf(),
            signer,
            wal,
            tree,
            tail_entries: entries_since_tile,
            checkpoint,
            published_size,
        };
        let recovery = Recovery {
            entries: store.tree.size(),
            previous_checkpoint: published_size,
            truncated_bytes,
            repaired_tiles,
        };
        // 4. Full entry bundles past the published size may not have been written before the
        //    crash: rewrite them from the WAL (deterministic, so rewriting is harmless).
        let size = store.tree.size();
        for index in published_size / TILE_WIDTH..size / TILE_WIDTH {
            let lo = (index * TILE_WIDTH) as usize;
            let entries: Vec<&[u8]> = spans[lo..lo + TILE_WIDTH as usize]
                .iter()
                .map(|&(a, b)| &bytes[a..b])
                .collect();
            store.stage_bundle(index, &entries, &mut staged)?;
        }
        drop(bytes);
        // 5. Rewrite the right edge of the published tree if nothing new is to be published
        //    (cheap; covers a lost directory entry), else publish everything the WAL holds.
        if store.checkpoint.is_empty() || size > published_size {
            let from = published_size;
            store.publish(from, staged, true)?;
        } else {
            store.stage_tiles(
                &right_edge_tiles(published_size),
                published_size,
                &mut staged,
            )?;
            store.commit(&staged, false, None)?;
        }
        // The repaired tiles went out with that commit.
        Ok((store, recovery))
    }

    /// The published signed checkpoint.
    pub fn checkpoint(&self) -> &[u8] {
        &self.checkpoint
    }

    /// The size of the published checkpoint.
    pub fn published_size(&self) -> u64 {
        self.published_size
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append a batch durably and publish a checkpoint covering it; returns the first index.
    pub fn append_batch<E: AsRef<[u8]>>(&mut self, entries: &[E]) -> Result<u64> {
        let first = self.tree.size();
        if entries.is_empty() {
            return Ok(first);
        }
        // WAL append (synced in the commit's first round).
        let mut buf = Vec::new();
        for e in entries {
            let e = e.as_ref();
            if e.len() > tile::MAX_ENTRY_LEN {
                return Err(StoreError::InvalidArgument(format!(
                    "entry of {} bytes is too long (at most {})",
                    e.len(),
                    tile::MAX_ENTRY_LEN
                )));
            }
            buf.extend_from_slice(&(e.len() as u32).to_be_bytes());
            buf.extend_from_slice(e);
            buf.extend_from_slice(&merkle::leaf_hash(e));
        }
        self.wal
            .write_all(&buf)
            .ctx(|| "appending to the WAL".into())?;
        // Tree and entry bundle state.
        let mut staged = Staged::default();
        for e in entries {
            let e = e.as_ref();
            self.tree.push_leaf_hash(merkle::leaf_hash(e));
            self.tail_entries.push(e.to_vec());
            if self.tail_entries.len() as u64 == TILE_WIDTH {
                // A full bundle: stage it now, then start the next.
                let index = (self.tree.size() - 1) / TILE_WIDTH;
                self.stage_bundle(index, &self.tail_entries, &mut staged)?;
                self.tail_entries.clear();
            }
        }
        // Tiles, then the checkpoint.
        self.publish(first, staged, true)?;
        Ok(first)
    }

    fn stage_bundle<E: AsRef<[u8]>>(
        &self,
        index: u64,
        entries: &[E],
        staged: &mut Staged,
    ) -> Result<()> {
        let t = TilePath {
            kind: TileKind::Entries,
            index,
            width: entries.len() as u16,
        };
        staged.add(
            self.dir.join(t.to_path()),
            tile::encode_entry_bundle(entries)?,
        )
    }

    /// Stage tiles for sizes `from..size()` and a checkpoint of `size()`, then commit them
    /// (with the WAL if `sync_wal`) and publish the checkpoint.
    fn publish(&mut self, from: u64, mut staged: Staged, sync_wal: bool) -> Result<()> {
        let size = self.tree.size();
        let tiles = tile::tiles_to_publish(from, size);
        self.stage_tiles(&tiles, size, &mut staged)?;
        let cp = Checkpoint::new(self.signer.name(), size, self.tree.root(size)?);
        let signed = note::sign_checkpoint(&cp, &self.signer)?;
        self.commit(&staged, sync_wal, Some(&signed))?;
        self.checkpoint = signed;
        self.published_size = size;
        // C2SP tlog-tiles: once a full tile is published, the partial tiles of the same index
        // are superseded and may go (clients fall back to the full tile and cut it to the
        // width they need; `tandem_attest::log::LogReader::get_tile`). Not synced: a partial
        // tile that survives a crash is harmless.
        for t in tiles.iter().filter(|t| t.is_full()) {
            let partials = self.dir.join(format!("{}.p", t.to_path()));
            match fs::remove_dir_all(&partials) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).ctx(|| {
                        format!("removing superseded partial tiles {}", partials.display())
                    });
                }
            }
        }
        Ok(())
    }

    /// Make `staged` (and the WAL, and a new checkpoint) durable in the order of the module
    /// docs: 1. WAL + temporary files synced; 2. renamed, directories synced; 3. checkpoint
    /// renamed, log directory synced.
    fn commit(&self, staged: &Staged, sync_wal: bool, checkpoint: Option<&[u8]>) -> Result<()> {
        let cp_path = self.dir.join(CHECKPOINT);
        // 1.
        let wal = &self.wal;
        in_parallel(
            &staged.files,
            |(path, data)| write_synced_tmp(path, data),
            || {
                if sync_wal {
                    wal.sync_data().ctx(|| "fsync of the WAL".into())?;
                }
                match checkpoint {
                    Some(cp) => write_synced_tmp(&cp_path, cp),
                    None => Ok(()),
                }
            },
        )?;
        // 2.
        for (path, _) in &staged.files {
            rename_tmp(path)?;
        }
        let dirs: Vec<&PathBuf> = staged.dirs.iter().collect();
        in_parallel(&dirs, |d| fsync_dir(d), || Ok(()))?;
        // 3.
        if checkpoint.is_some() {
            rename_tmp(&cp_path)?;
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Stage the given tiles of the tree of `size` leaves (entry bundles: only the partial one;
    /// full bundles are staged as they fill).
    fn stage_tiles(&self, tiles: &[TilePath], size: u64, staged: &mut Staged) -> Result<()> {
        for t in tiles {
            let path = self.dir.join(t.to_path());
            match t.kind {
                TileKind::Hash(level) => {
                    let data = tile::hash_tile_data(&self.tree, level, t.index, t.width)?;
                    staged.add(path, data)?;
                }
                TileKind::Entries => {
                    let partial_index = size / TILE_WIDTH;
                    if t.is_full() {
                        // Staged when it filled (or present from before a restart).
                        if staged.contains(&path) {
                            continue;
                        }
                        if path.exists() {
                            if let Some(parent) = path.parent() {
                                staged.dirs.insert(parent.to_path_buf());
                            }
                            continue;
                        }
                        return Err(StoreError::Damaged(format!(
                            "entry bundle {} is missing; the log directory is damaged",
                            path.display()
                        )));
                    }
                    if t.index != partial_index || t.width as usize != self.tail_entries.len() {
                        return Err(StoreError::Damaged(format!(
                            "internal error: partial bundle {} does not match the tail",
                            t.to_path()
                        )));
                    }
                    self.stage_bundle(t.index, &self.tail_entries, staged)?;
                }
            }
        }
        Ok(())
    }

    /// Inclusion proof of `index` at the published size.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        if size > self.published_size {
            return Err(StoreError::InvalidArgument(format!(
                "size {size} is not published yet"
            )));
        }
        Ok(self.tree.inclusion_proof(index, size)?)
    }

    /// Consistency proof between two published sizes.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        if new > self.published_size {
            return Err(StoreError::InvalidArgument(format!(
                "size {new} is not published yet"
            )));
        }
        Ok(self.tree.consistency_proof(old, new)?)
    }
}

/// For each level, the rightmost tile of a tree of `size` leaves (and the last entry bundle).
fn right_edge_tiles(size: u64) -> Vec<TilePath> {
    let mut out = Vec::new();
    if size == 0 {
        return out;
    }
    for level in 0u8.. {
        let shift = u32::from(level) * 8;
        let n = size.checked_shr(shift).unwrap_or(0);
        if n == 0 {
            break;
        }
        let index = (n - 1) / TILE_WIDTH;
        if let Some(t) = TilePath::for_tree(TileKind::Hash(level), index, size) {
            out.push(t);
            if level == 0 && !t.is_full() {
                out.push(TilePath {
                    kind: TileKind::Entries,
                    ..t
                });
            }
        }
    }
    out
}

/// One WAL record at `pos`: `(data, next position)`, or `None` if it is incomplete or corrupt.
fn read_record(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let len_bytes: [u8; 4] = bytes.get(pos..pos + 4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > tile::MAX_ENTRY_LEN {
        return None;
    }
    let data = bytes.get(pos + 4..pos + 4 + len)?;
    let hash = bytes.get(pos + 4 + len..pos + 4 + len + 32)?;
    (merkle::leaf_hash(data) == hash).then_some((data, pos + 4 + len + 32))
}
