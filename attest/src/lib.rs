//! Tandem attestation: measured releases, the transparency log, node evidence and the
//! verification policy.
//!
//! The library does no I/O: bytes in, bytes out; files, sockets and clocks are handled by the
//! `attest` binary and by callers.

pub mod error;
pub mod log;

pub use error::{Error, LogError};
