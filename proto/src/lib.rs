//! Tandem's wire protocol.
//!
//! - [`key_config`]: node HPKE key configurations, encoded exactly as RFC 9458 §3 so standard
//!   Oblivious HTTP software can read them.
//!
//! Everything here is sans-IO: bytes in, bytes out. Functions that draw randomness take an
//! RNG in their `*_with_rng` twin; the plain form uses the operating system's RNG.

mod codec;
pub mod error;
pub mod key_config;

pub use error::{Error, KeyConfigError, MisuseError};
/// The `rand_core` version the `*_with_rng` functions take (the one `hpke` uses).
pub use hpke::rand_core;
pub use key_config::{AeadId, KdfId, KemId, KeyConfig, NodeKey, Suite, SymmetricAlgorithm};

/// The operating system's RNG. Panics only if the OS cannot supply randomness, which no input
/// can cause.
pub(crate) fn os_rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}
