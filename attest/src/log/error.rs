//! Errors of the transparency log.

use thiserror::Error;

/// A transparency-log structure failed to parse or verify.
///
/// Variants caused by untrusted input (a bad proof, a bad signature) are kept apart from caller
/// misuse (`InvalidArgument`).
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
    /// The caller passed arguments that can never be valid (for example an index past the tree size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
