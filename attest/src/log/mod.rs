//! The transparency log: RFC 9162 Merkle hashing and proofs, C2SP tlog-checkpoint checkpoints in
//! C2SP signed notes (Ed25519), C2SP tlog-cosignature witness cosignatures, C2SP tlog-tiles tiles,
//! a sans-IO client that tracks checkpoints, and the C2SP tlog-witness protocol (`witness`).
//!
//! Everything here is pure: bytes, sizes and `now` in, verified values out. The log's I/O (the
//! HTTP reader and writer every client shares, the durable store, the HTTP server) is the
//! `tandem-log` crate.

pub mod batch;
pub mod checkpoint;
pub mod client;
mod error;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod tile;
pub mod witness;

pub use batch::BatchInclusion;
pub use checkpoint::Checkpoint;
pub use client::{CheckpointTracker, Observation};
pub use error::LogError;
pub use merkle::{Hash, leaf_hash, node_hash, verify_consistency, verify_inclusion};
pub use note::{
    CosignerKey, NoteSigner, NoteVerifier, VerifiedCheckpoint, WitnessPolicy, open_checkpoint,
};
pub use proof::{InclusionBundle, TlogProof, VerifiedInclusion};
