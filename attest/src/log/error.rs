//! Errors of the transparency log.

use thiserror::Error;

use super::tile::TilePath;

/// A transparency-log structure failed to parse or verify.
///
/// Variants caused by untrusted input (a bad proof, a bad signature, a malformed note) are kept
/// apart from caller misuse ([`LogError::InvalidArgument`]) and from configuration
/// ([`LogError::BadKey`]).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogError {
    /// An inclusion proof did not lead to the expected root.
    #[error(
        "inclusion proof for leaf {index} in a tree of size {tree_size} is invalid: {reason}; is the proof for this checkpoint?"
    )]
    InclusionProof {
        /// Leaf index the proof was for.
        index: u64,
        /// Tree size the proof was for.
        tree_size: u64,
        /// What failed.
        reason: String,
    },
    /// A consistency proof did not link the two tree heads.
    #[error(
        "consistency proof from size {old_size} to size {new_size} is invalid: {reason}; the log may have rewritten its history"
    )]
    ConsistencyProof {
        /// Size of the older tree.
        old_size: u64,
        /// Size of the newer tree.
        new_size: u64,
        /// What failed.
        reason: String,
    },
    /// The log showed two different trees of the same size.
    #[error(
        "log {origin} equivocated: two checkpoints of size {size} with different roots (known {known_root}, now {other_root}); keep both signed checkpoints as evidence"
    )]
    Equivocation {
        /// Log origin.
        origin: String,
        /// Tree size of both checkpoints.
        size: u64,
        /// Root of the checkpoint known before (hex).
        known_root: String,
        /// Root of the conflicting checkpoint (hex).
        other_root: String,
    },
    /// A checkpoint body is not C2SP tlog-checkpoint.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    /// A signed note is not C2SP signed-note.
    #[error("malformed signed note: {0}")]
    MalformedNote(String),
    /// A proof structure is malformed.
    #[error("malformed proof: {0}")]
    MalformedProof(String),
    /// A tile or entry bundle is malformed.
    #[error("malformed tile: {0}")]
    MalformedTile(String),
    /// A batch append request (`POST /add-batch`) is malformed.
    #[error("malformed append batch: {0}")]
    MalformedBatch(String),
    /// A C2SP tlog-witness request (`add-checkpoint` body) or answer is malformed.
    #[error("malformed witness request: {0}")]
    MalformedWitnessRequest(String),
    /// A signature did not verify, or the expected signature is missing.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A key (verifier key, private key, witness key) is malformed.
    #[error("bad key: {0}")]
    BadKey(String),
    /// The checkpoint is for a different log than the key.
    #[error(
        "checkpoint origin {origin:?} is not the expected log {expected:?}; is the log key right?"
    )]
    OriginMismatch {
        /// Origin found.
        origin: String,
        /// Origin expected.
        expected: String,
    },
    /// Too few of the policy's witnesses cosigned.
    #[error(
        "only {got} of the {need} required witnesses cosigned the checkpoint; fetch a newer, cosigned checkpoint or check the witness keys"
    )]
    WitnessQuorum {
        /// Valid cosignatures from listed witnesses.
        got: usize,
        /// Required.
        need: usize,
    },
    /// A tile needed to build a proof is not loaded; fetch it and retry.
    #[error("tile {} is needed", .0.to_path())]
    MissingTile(TilePath),
    /// The caller passed arguments that can never be valid (for example an index past the tree size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
