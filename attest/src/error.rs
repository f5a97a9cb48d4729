//! The crate's error type, built from one documented sub-enum per area.

use thiserror::Error;

/// Every error this crate returns.
#[derive(Debug, Error)]
pub enum Error {
    /// A transparency-log structure (proof, checkpoint, signed note, tile) failed to parse or verify.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A release manifest, in-toto statement or Sigstore bundle failed to parse or verify.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// Node evidence (fleet certificate, software signature, TPM quote) failed to parse or verify.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// A node attestation bundle failed to parse.
    #[error(transparent)]
    Attestation(#[from] AttestationError),
    /// The policy is unusable, or a verification checklist step failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

pub use crate::attestation::AttestationError;
pub use crate::evidence::EvidenceError;
pub use crate::log::LogError;
pub use crate::release::ReleaseError;
pub use crate::verify::VerifyError;
