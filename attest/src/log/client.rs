//! A sans-IO client of the log: it keeps the newest checkpoint it verified and demands a
//! consistency proof before accepting any other (RFC 9162 §2.1.4; C2SP tlog-checkpoint).
//!
//! The caller does the fetching: it verifies a signed checkpoint with
//! [`super::note::open_checkpoint`], asks [`CheckpointTracker::proof_needed`] which consistency
//! proof to fetch, and hands both to [`CheckpointTracker::observe`].

use super::LogError;
use super::checkpoint::Checkpoint;
use super::merkle::{Hash, verify_consistency};
use super::note::VerifiedCheckpoint;

/// What observing a checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// No checkpoint was known; this one is now the newest (trust on first use).
    First,
    /// Same size and root as the newest known checkpoint.
    Unchanged,
    /// Larger and consistent: it is now the newest known checkpoint.
    Advanced {
        /// Size of the previous newest checkpoint.
        from: u64,
    },
    /// Smaller and consistent with the newest known checkpoint, which stays the newest.
    OlderConsistent,
}

/// Keeps the newest verified checkpoint of one log.
#[derive(Debug, Clone)]
pub struct CheckpointTracker {
    origin: String,
    newest: Option<Checkpoint>,
}

impl CheckpointTracker {
    /// A tracker for the log with this origin, with no checkpoint yet.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            newest: None,
        }
    }

    /// A tracker restored from a checkpoint the caller verified earlier and stored.
    pub fn with_newest(newest: Checkpoint) -> Self {
        Self {
            origin: newest.origin.clone(),
            newest: Some(newest),
        }
    }

    /// The newest checkpoint seen, to persist between runs.
    pub fn newest(&self) -> Option<&Checkpoint> {
        self.newest.as_ref()
    }

    /// The consistency proof `(old_size, new_size)` needed before `candidate` can be observed,
    /// or `None` if none is needed.
    pub fn proof_needed(&self, candidate: &Checkpoint) -> Option<(u64, u64)> {
        let newest = self.newest.as_ref()?;
        match candidate.size.cmp(&newest.size) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater if newest.size == 0 => None,
            std::cmp::Ordering::Greater => Some((newest.size, candidate.size)),
            std::cmp::Ordering::Less if candidate.size == 0 => None,
            std::cmp::Ordering::Less => Some((candidate.size, newest.size)),
        }
    }

    /// Check `candidate` against the newest known checkpoint using `consistency_proof` (the one
    /// [`Self::proof_needed`] asked for; empty if none). Two checkpoints of the same size with
    /// different roots are reported as [`LogError::Equivocation`].
    pub fn observe(
        &mut self,
        candidate: &VerifiedCheckpoint,
        consistency_proof: &[Hash],
    ) -> Result<Observation, LogError> {
        let cand = candidate.checkpoint();
        if cand.origin != self.origin {
            return Err(LogError::OriginMismatch {
                origin: cand.origin.clone(),
                expected: self.origin.clone(),
            });
        }
        let Some(newest) = self.newest.as_ref() else {
            self.newest = Some(cand.clone());
            return Ok(Observation::First);
        };
        if cand.size == newest.size {
            if cand.root_hash != newest.root_hash {
                return Err(LogError::Equivocation {
                    origin: cand.origin.clone(),
                    size: cand.size,
                    known_root: hex::encode(newest.root_hash),
                    other_root: hex::encode(cand.root_hash),
                });
            }
            return Ok(Observation::Unchanged);
        }
        if cand.size > newest.size {
            verify_consistency(
                newest.size,
                cand.size,
                &newest.root_hash,
                &cand.root_hash,
                consistency_proof,
            )?;
            let from = newest.size;
            self.newest = Some(cand.clone());
            return Ok(Observation::Advanced { from });
        }
        verify_consistency(
            cand.size,
            newest.size,
            &cand.root_hash,
            &newest.root_hash,
            consistency_proof,
        )?;
        Ok(Observation::OlderConsistent)
    }
}
