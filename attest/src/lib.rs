//! Tandem attestation: measured releases, the transparency log, node evidence and the
//! verification policy.
//!
//! The library does no I/O: bytes in, bytes out; files, sockets and clocks are handled by the
//! `attest` binary and by callers.

pub mod attestation;
pub mod digest;
pub mod error;
pub mod evidence;
pub mod log;
pub mod release;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod verify;

pub use error::{AttestationError, EvidenceError, ReleaseError, VerifyError};
pub use error::{Error, LogError};
