//! The crate's error type: the runtime's errors, or a training error ([`TrainError`]).

use crate::train::TrainError;

/// Everything that can go wrong in `tandem-lab`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model stack failed (bad files, misuse, tensor computation); see
    /// [`tandem_model::Error`].
    #[error(transparent)]
    Model(#[from] tandem_model::Error),
    /// Training (base model or adapter) failed; see [`TrainError`].
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// Result alias for the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Model(tandem_model::Error::Tensor(e))
    }
}

impl From<tandem_model::UsageError> for Error {
    fn from(e: tandem_model::UsageError) -> Self {
        Error::Model(e.into())
    }
}
