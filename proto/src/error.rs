//! The crate's one error type, [`Error`], built from one sub-enum per area.
//!
//! Errors caused by untrusted input (a malformed or tampered message) are kept apart from
//! caller misuse ([`MisuseError`]); each message says what failed and what to check.

use crate::codec::Short;

/// Every error `tandem-proto` returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key configuration (RFC 9458 §3) could not be decoded or used.
    #[error(transparent)]
    KeyConfig(#[from] KeyConfigError),
    /// The caller used the API in a way it does not allow (not caused by received bytes).
    #[error(transparent)]
    Misuse(#[from] MisuseError),
}

/// A key configuration or `application/ohttp-keys` list was malformed or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyConfigError {
    /// The input ended inside a field.
    #[error(
        "key config truncated: field `{field}` needs {needed} bytes but only {available} remain; \
         was the config copied whole?"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// The KEM is not one Tandem implements (only DHKEM(X25519, HKDF-SHA256), 0x0020).
    #[error(
        "key config uses HPKE KEM {0:#06x}; Tandem supports only DHKEM(X25519, HKDF-SHA256) (0x0020)"
    )]
    UnsupportedKem(u16),
    /// The symmetric algorithm list length is not a non-zero multiple of 4 (RFC 9458 §3).
    #[error(
        "key config symmetric algorithm list is {0} bytes; RFC 9458 §3 requires a non-zero multiple of 4 (at most 65532)"
    )]
    SymmetricListLength(usize),
    /// Bytes were left after a single key config.
    #[error("{0} unexpected bytes after the key config; a single config was expected, not a list")]
    TrailingBytes(usize),
    /// In the `application/ohttp-keys` list form, a length prefix did not match the config it framed.
    #[error(
        "ohttp-keys entry {index} declares {declared} bytes but its key config is {parsed} bytes"
    )]
    ListEntryLength {
        /// Position of the entry in the list.
        index: usize,
        /// Length in the 2-byte prefix.
        declared: usize,
        /// Length of the key config found in it.
        parsed: usize,
    },
    /// The config lists no symmetric algorithm pair this implementation supports.
    #[error(
        "key config {key_id} offers no supported HPKE suite; Tandem needs HKDF-SHA256 (0x0001) with \
         AES-128-GCM (0x0001) or ChaCha20-Poly1305 (0x0003)"
    )]
    NoSupportedSuite {
        /// The config's key id.
        key_id: u8,
    },
    /// The public key is not a valid key for the KEM.
    #[error("key config {key_id} holds a public key that is not a valid X25519 key")]
    InvalidPublicKey {
        /// The config's key id.
        key_id: u8,
    },
    /// The config does not list the suite that was asked for.
    #[error("key config {key_id} does not offer the requested suite {suite}")]
    SuiteNotOffered {
        /// The config's key id.
        key_id: u8,
        /// The suite asked for.
        suite: crate::key_config::Suite,
    },
}

impl From<Short> for KeyConfigError {
    fn from(s: Short) -> Self {
        Self::Truncated {
            field: s.field,
            needed: s.needed,
            available: s.available,
        }
    }
}

/// The caller asked for something the API does not allow. Never caused by received bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MisuseError {
    /// A key config needs at least one symmetric algorithm and at most 16383.
    #[error("a key config needs between 1 and 16383 symmetric algorithms, got {0}")]
    SymmetricAlgorithmCount(usize),
    /// A private key had the wrong length.
    #[error("an X25519 private key is 32 bytes, got {0}")]
    PrivateKeyLength(usize),
}
