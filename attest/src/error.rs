//! The crate's error type, built from one documented sub-enum per area.

use thiserror::Error;

/// Every error this crate returns.
#[derive(Debug, Error)]
pub enum Error {
    /// A transparency-log structure (proof, checkpoint, signed note, tile) failed to parse or verify.
    #[error(transparent)]
    Log(#[from] LogError),
}

pub use crate::log::LogError;
