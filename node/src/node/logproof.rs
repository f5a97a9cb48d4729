//! Fetching the node's own release from the transparency log (C2SP tlog-tiles read API):
//! the newest checkpoint, signed by the log key, and an RFC 9162 inclusion proof of the
//! release's log entry built from tiles. No proof, no start.

use tandem_attest::log::note::VerifiedCheckpoint;
use tandem_attest::log::tile::{TILE_WIDTH, TileKind, TilePath};
use tandem_attest::log::{InclusionBundle, NoteVerifier};
use tandem_attest::release::{LogEntry, ReleaseBundle};
use tandem_log::FetchError;

use super::NodeError;

/// Most entries the node scans when its bundle carries no usable log index.
const MAX_SCAN: u64 = 1 << 20;

/// The node's reader of its log: a [`tandem_log::LogClient`] plus the key its checkpoints are signed with.
#[derive(Debug, Clone)]
pub struct LogClient {
    reader: tandem_log::LogClient,
    base: String,
    key: NoteVerifier,
}

impl LogClient {
    /// A client of the log at `base` whose checkpoints `key` signs.
    pub fn new(base: &str, key: &str) -> Result<Self, NodeError> {
        let key = NoteVerifier::new(key).map_err(|e| NodeError::Log {
            url: base.into(),
            reason: format!("log key: {e}"),
        })?;
        let reader =
            tandem_log::LogClient::new(base, std::time::Duration::from_secs(30)).map_err(|e| {
                NodeError::Log {
                    url: base.into(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            base: reader.base().to_owned(),
            reader,
            key,
        })
    }

    fn err(&self, reason: impl Into<String>) -> NodeError {
        NodeError::Log {
            url: self.base.clone(),
            reason: reason.into(),
        }
    }

    fn fetch_err(&self, e: FetchError) -> NodeError {
        self.err(e.to_string())
    }

    /// The newest checkpoint, verified with the log key.
    pub async fn checkpoint(&self) -> Result<VerifiedCheckpoint, NodeError> {
        self.reader
            .checkpoint(&self.key)
            .await
            .map_err(|e| self.fetch_err(e))
    }

    async fn prove_at(
        &self,
        cp: &VerifiedCheckpoint,
        index: u64,
        leaf: &[u8],
    ) -> Result<Option<InclusionBundle>, NodeError> {
        let inc = self
            .reader
            .inclusion(cp, index)
            .await
            .map_err(|e| self.fetch_err(e))?;
        Ok(inc
            .verify(leaf, &self.key, None, None)
            .is_ok()
            .then_some(inc))
    }

    /// Finds `leaf` among the log's entries by reading the entry bundles.
    async fn scan(&self, size: u64, leaf: &[u8]) -> Result<Option<u64>, NodeError> {
        if size > MAX_SCAN {
            return Err(self.err(format!(
                "the release bundle has no log entry and the log has {size} entries (more than \
                 {MAX_SCAN} to scan); attach the entry with `attest release attach`"
            )));
        }
        for n in 0..size.div_ceil(TILE_WIDTH) {
            let Some(t) = TilePath::for_tree(TileKind::Entries, n, size) else {
                break;
            };
            let entries = self
                .reader
                .entry_bundle(&t)
                .await
                .map_err(|e| self.fetch_err(e))?;
            if let Some(i) = entries.iter().position(|e| e.as_slice() == leaf) {
                return Ok(Some(n * TILE_WIDTH + i as u64));
            }
        }
        Ok(None)
    }

    /// The release bundle with a fresh log entry: inclusion of its entry under the log's newest
    /// checkpoint. Errors with [`NodeError::NotLogged`] if the entry is not in the log.
    pub async fn prove_release(
        &self,
        bundle: ReleaseBundle,
        now: u64,
    ) -> Result<(ReleaseBundle, u64), NodeError> {
        let cp = self.checkpoint().await?;
        let size = cp.checkpoint().size;
        let leaf = bundle.log_entry_body();
        let mut found = None;
        if let Some(e) = bundle.log_entry()
            && e.log_index < size
        {
            found = self.prove_at(&cp, e.log_index, &leaf).await?;
        }
        if found.is_none()
            && let Some(i) = self.scan(size, &leaf).await?
        {
            found = self.prove_at(&cp, i, &leaf).await?;
        }
        let Some(inc) = found else {
            return Err(NodeError::NotLogged {
                release: bundle.release_digest().to_string(),
                size,
                log: self.base.clone(),
            });
        };
        let entry = LogEntry::from_inclusion(&inc, now).map_err(|e| self.err(e.to_string()))?;
        Ok((bundle.with_log_entry(entry), size))
    }
}
