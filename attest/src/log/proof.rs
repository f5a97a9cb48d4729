//! The proof a log hands back for an entry: its index, an RFC 9162 inclusion proof and the
//! signed checkpoint it leads to. This is what `POST /add` returns and what release bundles
//! embed. It is also written and read as a C2SP tlog-proof (`c2sp.org/tlog-proof@v1`, a
//! `.tlog-proof` file: [`InclusionBundle::to_tlog_proof`], [`TlogProof::parse`]), the
//! ecosystem's offline-verifiable proof: checkpoint with its cosignatures, index and inclusion
//! path in one file, so a verifier needs no log round trip.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::LogError;
use super::checkpoint::{Checkpoint, parse_hash};
use super::merkle::{Hash, leaf_hash, verify_inclusion};
use super::note::{NoteVerifier, VerifiedCheckpoint, WitnessPolicy, open_checkpoint};

/// An entry's inclusion proof under a signed checkpoint (JSON: hashes in base64, the checkpoint
/// as the signed note's text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionBundle {
    /// Index of the entry in the log.
    pub index: u64,
    /// Size of the tree the proof is for (equal to the checkpoint's size).
    pub tree_size: u64,
    /// RFC 9162 inclusion path, leaf side first, each hash in base64.
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint (C2SP signed note).
    pub checkpoint: String,
}

/// The first line of a C2SP tlog-proof.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// Longest tlog-proof accepted: 64 proof hashes, 1 KiB of extra data and a checkpoint with its
/// cosignatures fit in far less.
pub const MAX_TLOG_PROOF_LEN: usize = 64 * 1024;

/// Most inclusion path hashes (a tree of 2^64 entries has at most 64).
const MAX_PROOF_HASHES: usize = 64;

/// A parsed C2SP tlog-proof: the bundle and the proof's optional extra data (unauthenticated:
/// the spec says applications must not trust it implicitly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    /// Index, inclusion path and the checkpoint, verbatim.
    pub bundle: InclusionBundle,
    /// The `extra` line's bytes, if the proof has one.
    pub extra: Option<Vec<u8>>,
}

fn bad_proof(what: impl Into<String>) -> LogError {
    LogError::MalformedProof(format!("tlog-proof: {}", what.into()))
}

impl TlogProof {
    /// Parses a tlog-proof (C2SP tlog-proof v1) strictly: the header line, an optional `extra`
    /// line of canonical base64, `index N` (decimal, no leading zeros), one canonical base64
    /// SHA-256 hash per line, an empty line, then the checkpoint note verbatim (its size line
    /// gives the tree size; its signatures are checked by [`InclusionBundle::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<TlogProof, LogError> {
        if bytes.len() > MAX_TLOG_PROOF_LEN {
            return Err(bad_proof(format!(
                "{} bytes is longer than the {MAX_TLOG_PROOF_LEN}-byte limit",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad_proof("not UTF-8"))?;
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad_proof("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(TLOG_PROOF_HEADER) {
            return Err(bad_proof(format!(
                "the first line is not `{TLOG_PROOF_HEADER}`"
            )));
        }
        let mut line = lines.next().ok_or_else(|| bad_proof("no index line"))?;
        let extra = match line.strip_prefix("extra ") {
            Some(b64) => {
                let data = B64
                    .decode(b64)
                    .map_err(|_| bad_proof("the extra data is not base64"))?;
                if B64.encode(&data) != b64 {
                    return Err(bad_proof("the extra data is not canonical base64"));
                }
                line = lines.next().ok_or_else(|| bad_proof("no index line"))?;
                Some(data)
            }
            None => None,
        };
        let digits = line
            .strip_prefix("index ")
            .ok_or_else(|| bad_proof(format!("expected `index N`, found {line:?}")))?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        let index: u64 = canonical
            .then(|| digits.parse().ok())
            .flatten()
            .ok_or_else(|| {
                bad_proof(format!(
                    "the index {digits:?} is not a decimal without leading zeros"
                ))
            })?;
        let mut inclusion_proof = Vec::new();
        for (i, l) in lines.enumerate() {
            if inclusion_proof.len() == MAX_PROOF_HASHES {
                return Err(bad_proof(format!(
                    "more than {MAX_PROOF_HASHES} proof hashes"
                )));
            }
            if parse_hash(l).is_none() {
                return Err(bad_proof(format!(
                    "proof line {i} is not a SHA-256 hash in canonical base64"
                )));
            }
            inclusion_proof.push(l.to_string());
        }
        let tree_size = Checkpoint::parse(note_text(checkpoint)?.as_bytes())?.size;
        if index >= tree_size {
            return Err(bad_proof(format!(
                "index {index} is not in a tree of size {tree_size}"
            )));
        }
        Ok(TlogProof {
            bundle: InclusionBundle {
                index,
                tree_size,
                inclusion_proof,
                checkpoint: checkpoint.to_string(),
            },
            extra,
        })
    }
}

/// The text part of a signed note (up to and including the line before the empty line).
fn note_text(note: &str) -> Result<&str, LogError> {
    note.find("\n\n")
        .map(|i| &note[..=i])
        .ok_or_else(|| bad_proof("the checkpoint has no signature lines"))
}

/// An inclusion proof that verified: the entry is at `index` in the log under this checkpoint.
#[derive(Debug, Clone)]
pub struct VerifiedInclusion {
    /// Index of the entry.
    pub index: u64,
    /// The checkpoint the proof leads to.
    pub checkpoint: VerifiedCheckpoint,
}

impl InclusionBundle {
    /// Build from raw parts.
    pub fn new(index: u64, tree_size: u64, proof: &[Hash], checkpoint_note: &[u8]) -> Self {
        Self {
            index,
            tree_size,
            inclusion_proof: proof.iter().map(|h| B64.encode(h)).collect(),
            checkpoint: String::from_utf8_lossy(checkpoint_note).into_owned(),
        }
    }

    /// This bundle as a C2SP tlog-proof (`c2sp.org/tlog-proof@v1`), with optional extra data.
    pub fn to_tlog_proof(&self, extra: Option<&[u8]>) -> String {
        let mut out =
            String::with_capacity(64 + 45 * self.inclusion_proof.len() + self.checkpoint.len());
        out.push_str(TLOG_PROOF_HEADER);
        out.push('\n');
        if let Some(e) = extra {
            out.push_str("extra ");
            out.push_str(&B64.encode(e));
            out.push('\n');
        }
        out.push_str(&format!("index {}\n", self.index));
        for h in &self.inclusion_proof {
            out.push_str(h);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// The decoded inclusion path.
    pub fn proof_hashes(&self) -> Result<Vec<Hash>, LogError> {
        self.inclusion_proof
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_hash(s).ok_or_else(|| {
                    LogError::MalformedProof(format!(
                        "inclusion proof hash {i} is not 32 bytes of base64"
                    ))
                })
            })
            .collect()
    }

    /// Verify that `entry` is in the log: the checkpoint is signed by `log` (and cosigned per
    /// `witnesses`), and the inclusion proof leads from the entry to its root.
    pub fn verify(
        &self,
        entry: &[u8],
        log: &NoteVerifier,
        witnesses: Option<&WitnessPolicy>,
        now: Option<(u64, u64)>,
    ) -> Result<VerifiedInclusion, LogError> {
        let checkpoint = open_checkpoint(self.checkpoint.as_bytes(), log, witnesses, now)?;
        self.verify_under(entry, &checkpoint)
    }

    /// Verify the proof of `entry` against `checkpoint`, already opened from this bundle's
    /// checkpoint note (or an identical one, as in a [`super::batch::BatchInclusion`]).
    pub fn verify_under(
        &self,
        entry: &[u8],
        checkpoint: &VerifiedCheckpoint,
    ) -> Result<VerifiedInclusion, LogError> {
        if checkpoint.note_bytes() != self.checkpoint.as_bytes() {
            return Err(LogError::MalformedProof(
                "the bundle's checkpoint is not the one it is verified under".into(),
            ));
        }
        let cp = checkpoint.checkpoint();
        if cp.size != self.tree_size {
            return Err(LogError::MalformedProof(format!(
                "the proof is for tree size {} but the checkpoint is for size {}",
                self.tree_size, cp.size
            )));
        }
        let proof = self.proof_hashes()?;
        verify_inclusion(
            &leaf_hash(entry),
            self.index,
            cp.size,
            &proof,
            &cp.root_hash,
        )?;
        Ok(VerifiedInclusion {
            index: self.index,
            checkpoint: checkpoint.clone(),
        })
    }
}
