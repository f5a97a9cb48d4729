//! The transparency log: RFC 9162 Merkle hashing and proofs, C2SP tlog-checkpoint checkpoints in
//! C2SP signed notes, C2SP tlog-tiles tiles, and a sans-IO client that tracks checkpoints.

mod error;
pub mod merkle;

pub use error::LogError;
