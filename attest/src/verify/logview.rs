//! The verifier's view of the transparency log: opening a checkpoint under the policy's log
//! and witness keys, checking a release's inclusion, and consistency with the newest known
//! checkpoint. The cryptography is [`crate::log`]'s (C2SP signed-note / tlog-checkpoint /
//! tlog-cosignature, RFC 9162 proofs, [`CheckpointTracker`] for consistency and equivocation);
//! this file maps it onto release bundles and report messages.

use crate::digest::Sha256Digest;
use crate::log::{
    CheckpointTracker, LogError, Observation, VerifiedCheckpoint, leaf_hash,
    open_checkpoint as open_note_checkpoint, verify_inclusion,
};
use crate::release::LogEntry;

use super::policy::Policy;

/// A checkpoint whose log signature (and required witness cosignatures) verified.
#[derive(Debug, Clone)]
pub struct CheckedCheckpoint {
    /// The log's origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root_hash: [u8; 32],
    /// Timestamps of verified witness cosignatures (Unix seconds).
    pub cosigned_at: Vec<u64>,
    verified: VerifiedCheckpoint,
}

impl PartialEq for CheckedCheckpoint {
    fn eq(&self, other: &Self) -> bool {
        self.verified.note_bytes() == other.verified.note_bytes()
    }
}
impl Eq for CheckedCheckpoint {}

impl CheckedCheckpoint {
    /// The newest verified cosignature timestamp.
    pub fn newest_timestamp(&self) -> Option<u64> {
        self.cosigned_at.iter().copied().max()
    }

    /// The signed note.
    pub fn note(&self) -> &[u8] {
        self.verified.note_bytes()
    }
}

/// The newest checkpoint a caller has verified, plus a consistency proof between it and the
/// checkpoint in the bundle being verified (RFC 9162 §2.1.4, from the smaller tree to the
/// larger; empty when the sizes are equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCheckpoint {
    /// The checkpoint.
    pub checkpoint: CheckedCheckpoint,
    /// The consistency proof.
    pub proof: Vec<[u8; 32]>,
}

impl KnownCheckpoint {
    /// Opens the caller's newest checkpoint (a signed note) under `policy`'s log and witness
    /// keys and pairs it with a consistency proof.
    pub fn open(
        policy: &Policy,
        note: &str,
        proof: Vec<[u8; 32]>,
    ) -> Result<Self, super::VerifyError> {
        let checkpoint = open_checkpoint(note, policy, None).map_err(super::VerifyError::Policy)?;
        Ok(Self { checkpoint, proof })
    }

    /// Digest identifying this known state (for cache keys).
    pub fn digest(&self) -> [u8; 32] {
        let mut b = self.checkpoint.note().to_vec();
        for h in &self.proof {
            b.extend_from_slice(h);
        }
        Sha256Digest::of(&b).0
    }
}

/// Verifies a checkpoint note under one of the policy's log keys with the policy's witness
/// quorum. `now` (with the policy's skew) rejects cosignatures from the future.
pub(crate) fn open_checkpoint(
    note: &str,
    policy: &Policy,
    now: Option<u64>,
) -> Result<CheckedCheckpoint, String> {
    let witness_policy = policy
        .parsed
        .witness_policy
        .as_ref()
        .map_err(Clone::clone)?;
    let mut last_err = None;
    for v in &policy.parsed.log_verifiers {
        let v = v.as_ref().map_err(Clone::clone)?;
        match open_note_checkpoint(
            note.as_bytes(),
            v,
            Some(witness_policy),
            now.map(|n| (n, policy.clock_skew_secs)),
        ) {
            Ok(verified) => {
                let cp = verified.checkpoint();
                return Ok(CheckedCheckpoint {
                    origin: cp.origin.clone(),
                    size: cp.size,
                    root_hash: cp.root_hash,
                    cosigned_at: verified
                        .cosignatures()
                        .iter()
                        .map(|c| c.timestamp)
                        .collect(),
                    verified,
                });
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(match last_err {
        Some(LogError::WitnessQuorum { got, need }) => format!(
            "checkpoint has {got} valid witness cosignature(s) but the policy requires {need}; ask the log for a checkpoint its witnesses cosigned"
        ),
        Some(e) => format!(
            "checkpoint does not verify: {e}; is the policy's logKeys entry the key of this log?"
        ),
        None => "the policy names no log key".into(),
    })
}

/// Checks that the bundle's log entry is a leaf of the checkpoint's tree.
pub(crate) fn check_inclusion(
    entry: &LogEntry,
    cp: &CheckedCheckpoint,
    release: &Sha256Digest,
) -> Result<(), String> {
    if entry.log_id != Sha256Digest::of(cp.origin.as_bytes()).0 {
        return Err(format!(
            "log entry names a different log than checkpoint origin {:?}",
            cp.origin
        ));
    }
    if entry.tree_size != cp.size || entry.root_hash != cp.root_hash {
        return Err(format!(
            "inclusion proof is for a tree of size {} but the checkpoint is for size {}; the proof and checkpoint do not match",
            entry.tree_size, cp.size
        ));
    }
    // RFC 9162 §2.1.1 leaf hash of the canonicalized body, then §2.1.3.2 proof verification.
    verify_inclusion(
        &leaf_hash(&entry.body),
        entry.log_index,
        cp.size,
        &entry.hashes,
        &cp.root_hash,
    )
    .map_err(|e| {
        format!(
            "release {} is not in the log at checkpoint {} (entry {}): {e}",
            release.short(),
            cp.size,
            entry.log_index
        )
    })
}

/// Checks the bundle's checkpoint against the newest one the caller knows.
pub(crate) fn check_consistency(
    cp: &CheckedCheckpoint,
    known: Option<&KnownCheckpoint>,
) -> Result<String, String> {
    let Some(k) = known else {
        return Ok(format!(
            "no newest checkpoint given; checkpoint of size {} accepted on first use (pass --checkpoint to pin one)",
            cp.size
        ));
    };
    let mut tracker = CheckpointTracker::with_newest(k.checkpoint.verified.checkpoint().clone());
    match tracker.observe(&cp.verified, &k.proof) {
        Ok(Observation::Unchanged) => Ok(format!(
            "same checkpoint as the newest known (size {})",
            cp.size
        )),
        Ok(Observation::Advanced { from }) => Ok(format!(
            "consistent with the newest known checkpoint (size {from} -> {})",
            cp.size
        )),
        Ok(Observation::OlderConsistent) => Ok(format!(
            "older than, and consistent with, the newest known checkpoint (size {} <- {})",
            cp.size, k.checkpoint.size
        )),
        Ok(Observation::First) => Ok("first checkpoint seen".into()),
        Err(e @ LogError::Equivocation { .. }) => Err(format!(
            "EQUIVOCATION: {e}. The log is showing different histories to different clients; keep both checkpoints as evidence"
        )),
        Err(e) => Err(format!(
            "checkpoint of size {} is not consistent with the newest known checkpoint of size {}: {e}",
            cp.size, k.checkpoint.size
        )),
    }
}
