//! Reading a transparency log over HTTP (the C2SP tlog-tiles read API): the signed checkpoint,
//! tiles, entry bundles, and inclusion and consistency proofs built from tiles on the client.
//!
//! One reader for every client of the log: the node proving its own release at start-up, the
//! device checking that each node's checkpoint extends the newest one it has seen, and the
//! `attest log` commands. Everything the log answers is untrusted: checkpoints are opened under
//! the caller's log key, tiles are parsed by [`TileSet::insert`], and the proofs built here are
//! only ever used through the verifying functions of [`tandem_attest::log`].

use std::time::Duration;

use thiserror::Error;

use tandem_attest::log::merkle::{self, Hash};
use tandem_attest::log::note::{self, NoteVerifier, VerifiedCheckpoint};
use tandem_attest::log::tile::{self, TILE_WIDTH, TileKind, TilePath, TileSet};
use tandem_attest::log::{InclusionBundle, LogError};

/// Most tiles one proof may ask for: a proof touches at most two tiles per level.
const MAX_TILE_FETCHES: usize = 256;

/// Largest checkpoint read: C2SP tlog-checkpoint sets no size, and real ones (an origin, two
/// numbers, a root hash, a few extension lines and signature lines) are well under 1 KiB; 64 KiB
/// leaves room for hundreds of witness cosignatures and stops a hostile log from filling memory.
pub const MAX_CHECKPOINT_BYTES: usize = 64 * 1024;
/// Largest hash tile (C2SP tlog-tiles): at most 256 hashes of 32 bytes.
pub const MAX_HASH_TILE_BYTES: usize = TILE_WIDTH as usize * 32;
/// Largest entry bundle (C2SP tlog-tiles): at most 256 entries, each a big-endian `u16`
/// length and at most 65,535 bytes of data.
pub const MAX_ENTRY_BUNDLE_BYTES: usize = TILE_WIDTH as usize * (2 + tile::MAX_ENTRY_LEN);
/// Largest answer to an append: a JSON inclusion bundle (at most 64 proof hashes and a
/// checkpoint), with generous room.
pub const MAX_APPEND_ANSWER_BYTES: usize = 1024 * 1024;

/// The most bytes the tlog-tiles spec lets the log answer at `path`: entry bundles under
/// `tile/entries/`, hash tiles under `tile/`, checkpoints elsewhere (`checkpoint`, and the
/// `checkpoint.<size>` files some logs keep).
pub fn max_response_bytes(path: &str) -> usize {
    if path.starts_with("tile/entries/") {
        MAX_ENTRY_BUNDLE_BYTES
    } else if path.starts_with("tile/") {
        MAX_HASH_TILE_BYTES
    } else {
        MAX_CHECKPOINT_BYTES
    }
}

/// Reads `resp`'s body, refusing (before reading it whole) one longer than `limit` bytes.
async fn read_capped(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let too_long = |n: String| {
        format!("the answer is {n} bytes, more than the {limit} bytes the spec allows here")
    };
    if let Some(n) = resp.content_length()
        && n > limit as u64
    {
        return Err(too_long(n.to_string()));
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(too_long(format!("over {limit}")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why reading the log failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The log did not answer, or answered with an error status.
    #[error("GET {url}: {reason}; is the log running at {base}?")]
    Http {
        /// The log's base URL.
        base: String,
        /// The URL asked for.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The log refused or failed an append.
    #[error("POST {url}: {reason}; is the log running at {base} and accepting writes?")]
    Append {
        /// The log's base URL.
        base: String,
        /// The URL posted to.
        url: String,
        /// What went wrong (status and the log's message).
        reason: String,
    },
    /// The log answered with bytes that do not verify or do not parse.
    #[error("log {base}: {what}: {source}")]
    Log {
        /// The log's base URL.
        base: String,
        /// What was being read.
        what: String,
        /// The verification or parse failure.
        #[source]
        source: Box<LogError>,
    },
}

/// A client of one log: reads (checkpoint, tiles, proofs built from tiles) and appends.
#[derive(Debug, Clone)]
pub struct LogClient {
    http: reqwest::Client,
    base: String,
}

impl LogClient {
    /// A reader of the log at `base` (`http://` or `https://`), each request bounded by
    /// `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, FetchError> {
        let base = base.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| FetchError::Http {
                url: base.clone(),
                base: base.clone(),
                reason: format!("building the HTTP client: {e}"),
            })?;
        Ok(Self { http, base })
    }

    /// The log's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn log_err(&self, what: impl Into<String>, source: LogError) -> FetchError {
        FetchError::Log {
            base: self.base.clone(),
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// `GET {base}/{path}`: the body of a successful answer, refused when longer than
    /// [`max_response_bytes`] allows for `path`.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, FetchError> {
        match self.fetch(path).await? {
            Some(b) => Ok(b),
            None => Err(FetchError::Http {
                base: self.base.clone(),
                url: format!("{}/{path}", self.base),
                reason: "HTTP 404 Not Found".into(),
            }),
        }
    }

    /// `POST {base}/add`: appends `entry` and returns the log's inclusion bundle for it,
    /// unverified (check it with [`InclusionBundle::verify`] under the log's key).
    pub async fn append(&self, entry: &[u8]) -> Result<InclusionBundle, FetchError> {
        let url = format!("{}/add", self.base);
        let err = |reason: String| FetchError::Append {
            base: self.base.clone(),
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .post(&url)
            .body(entry.to_vec())
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let body = read_capped(resp, MAX_APPEND_ANSWER_BYTES)
            .await
            .map_err(err)?;
        if !status.is_success() {
            return Err(err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            self.log_err(
                "the answer to an append",
                LogError::MalformedProof(format!("not an inclusion bundle: {e}")),
            )
        })
    }

    /// The data of tile `t`. A log may delete a partial tile once the full tile of the same
    /// index exists (C2SP tlog-tiles), so when a partial tile is not found the full one is
    /// fetched and cut to `t`'s width: its first hashes or entries are the partial tile's.
    pub async fn get_tile(&self, t: &TilePath) -> Result<Vec<u8>, FetchError> {
        let path = t.to_path();
        if let Some(b) = self.fetch(&path).await? {
            return Ok(b);
        }
        let full = TilePath {
            width: TILE_WIDTH as u16,
            ..*t
        };
        if t.is_full() {
            return self.get(&path).await;
        }
        let data = self.get(&full.to_path()).await?;
        let width = usize::from(t.width);
        let what = || format!("tile {} (for {path})", full.to_path());
        match t.kind {
            TileKind::Hash(_) => data.get(..width * 32).map(<[u8]>::to_vec).ok_or_else(|| {
                self.log_err(
                    what(),
                    LogError::MalformedTile(format!("{} bytes", data.len())),
                )
            }),
            TileKind::Entries => {
                let entries = tile::parse_entry_bundle(&data, full.width)
                    .map_err(|e| self.log_err(what(), e))?;
                tile::encode_entry_bundle(&entries[..width.min(entries.len())])
                    .map_err(|e| self.log_err(what(), e))
            }
        }
    }

    /// The entries of entry bundle `t`.
    pub async fn entry_bundle(&self, t: &TilePath) -> Result<Vec<Vec<u8>>, FetchError> {
        let data = self.get_tile(t).await?;
        tile::parse_entry_bundle(&data, t.width)
            .map_err(|e| self.log_err(format!("entry bundle {}", t.to_path()), e))
    }

    /// `GET {base}/{path}`: the body, or `None` if the log answers 404.
    async fn fetch(&self, path: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let url = format!("{}/{path}", self.base);
        let err = |reason: String| FetchError::Http {
            base: self.base.clone(),
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        // An error answer is only read for its first words; a successful one up to what the
        // spec allows at this path.
        let limit = if status.is_success() {
            max_response_bytes(path)
        } else {
            4096
        };
        let body = read_capped(resp, limit).await.map_err(err)?;
        if !status.is_success() {
            return Err(err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        Ok(Some(body))
    }

    /// The log's newest checkpoint, opened under `key`.
    pub async fn checkpoint(&self, key: &NoteVerifier) -> Result<VerifiedCheckpoint, FetchError> {
        let b = self.get("checkpoint").await?;
        note::open_checkpoint(&b, key, None, None)
            .map_err(|e| self.log_err("checkpoint (is the log key right?)", e))
    }

    /// Runs `f` over a tile set of a tree of `tree_size` entries, fetching each tile `f` reports
    /// missing, until `f` succeeds.
    pub async fn with_tiles<T>(
        &self,
        tree_size: u64,
        f: impl Fn(&TileSet) -> Result<T, LogError>,
    ) -> Result<T, FetchError> {
        let mut set = TileSet::new(tree_size);
        for _ in 0..MAX_TILE_FETCHES {
            match f(&set) {
                Ok(v) => return Ok(v),
                Err(LogError::MissingTile(t)) => {
                    let data = self.get_tile(&t).await?;
                    set.insert(t, &data)
                        .map_err(|e| self.log_err(format!("tile {}", t.to_path()), e))?;
                }
                Err(e) => return Err(self.log_err(format!("tree of size {tree_size}"), e)),
            }
        }
        Err(self.log_err(
            format!("tree of size {tree_size}"),
            LogError::InvalidArgument(format!("a proof needed more than {MAX_TILE_FETCHES} tiles")),
        ))
    }

    /// An RFC 9162 consistency proof from the tree of `old` entries to the tree of `new`
    /// (`old <= new`), built from the larger tree's tiles. Unverified: check it with
    /// [`tandem_attest::log::CheckpointTracker::observe`] or [`merkle::verify_consistency`].
    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, FetchError> {
        self.with_tiles(new, |s| merkle::consistency_proof(s, old, new))
            .await
    }

    /// An inclusion bundle for leaf `index` under `checkpoint`, built from tiles. Unverified:
    /// check it with [`InclusionBundle::verify`].
    pub async fn inclusion(
        &self,
        checkpoint: &VerifiedCheckpoint,
        index: u64,
    ) -> Result<InclusionBundle, FetchError> {
        let size = checkpoint.checkpoint().size;
        let proof = self
            .with_tiles(size, |s| merkle::inclusion_proof(s, index, size))
            .await?;
        Ok(InclusionBundle::new(
            index,
            size,
            &proof,
            checkpoint.note_bytes(),
        ))
    }
}
