//! Releases: the measured identity of a node image, signed as a Sigstore bundle.
//!
//! - [`manifest`]: the release manifest (digests of the node binary, config, base model files,
//!   adapters, tokenizer), its canonical encoding and the release digest.
//! - [`dsse`]: DSSE envelopes and the in-toto Statement v1 they carry.
//! - [`bundle`]: the Sigstore bundle v0.3 (JSON) holding the envelope, the signer's public-key
//!   hint and the Tandem transparency-log entry (inclusion proof + checkpoint).
//! - [`sign`]: ECDSA P-256 release keys.

pub mod bundle;
pub mod dsse;
pub mod manifest;
pub mod sign;

use thiserror::Error;

pub use bundle::{LogEntry, ReleaseBundle};
pub use dsse::{DsseEnvelope, DsseSignature, InTotoStatement};
pub use manifest::{Artifact, ArtifactKind, ReleaseManifest};
pub use sign::{ReleaseSignerKey, ReleaseSigningKey};

/// A release manifest, statement, envelope or bundle failed to parse or verify.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The manifest breaks a rule (schema, names, counts, order, canonical form).
    #[error("invalid release manifest: {0}")]
    Manifest(String),
    /// The in-toto statement inside the envelope is malformed or does not match its predicate.
    #[error("invalid in-toto statement: {0}")]
    Statement(String),
    /// The Sigstore bundle is malformed.
    #[error("invalid Sigstore bundle: {field}: {reason}")]
    Bundle {
        /// The JSON field at fault.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// No signature on the envelope verified under the given key.
    #[error(
        "release signature does not verify under key {key_id}: {reason}; was the bundle signed with this key and not modified since?"
    )]
    Signature {
        /// Key id (hex SHA-256 of the SubjectPublicKeyInfo DER).
        key_id: String,
        /// What failed.
        reason: String,
    },
    /// A release signing or verifying key could not be read.
    #[error(
        "invalid release key: {0}; expected a PEM ECDSA P-256 key (PKCS#8 private or SubjectPublicKeyInfo public)"
    )]
    Key(String),
}
