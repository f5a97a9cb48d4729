//! The transparency log: RFC 9162 Merkle hashing and proofs, C2SP tlog-checkpoint checkpoints in
//! C2SP signed notes (Ed25519), C2SP tlog-cosignature witness cosignatures, C2SP tlog-tiles tiles,
//! and a sans-IO client that tracks checkpoints.
//!
//! I/O lives in three modules only: [`http`], the one reader of a log over HTTP that every
//! client shares; [`store`], the log's durable files; [`server`], its HTTP API (run by
//! `attest log serve` and, in-process, by `tandem-node dev`). The rest is pure.

pub mod batch;
pub mod checkpoint;
pub mod client;
mod error;
pub mod http;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod server;
pub mod store;
pub mod tile;

pub use batch::BatchInclusion;
pub use checkpoint::Checkpoint;
pub use client::{CheckpointTracker, Observation};
pub use error::LogError;
pub use http::{FetchError, LogReader};
pub use merkle::{Hash, leaf_hash, node_hash, verify_consistency, verify_inclusion};
pub use note::{
    CosignerKey, NoteSigner, NoteVerifier, VerifiedCheckpoint, WitnessPolicy, open_checkpoint,
};
pub use proof::{InclusionBundle, VerifiedInclusion};
