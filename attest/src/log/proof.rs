//! The proof a log hands back for an entry: its index, an RFC 9162 inclusion proof and the
//! signed checkpoint it leads to. This is what `POST /add` returns and what release bundles
//! embed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::LogError;
use super::checkpoint::parse_hash;
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
