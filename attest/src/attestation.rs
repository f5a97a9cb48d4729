//! The node attestation bundle: what a node hands a device (through the gateway) so the device
//! can decide whether to seal a request to it.
//!
//! JSON, media type [`ATTESTATION_MEDIA_TYPE`]:
//!
//! ```text
//! {"mediaType": "application/vnd.tandem.attestation.v1+json",
//!  "keyConfigs": "<base64 of the RFC 9458 §3 application/ohttp-keys list>",
//!  "keyExpiry": <unix seconds>,
//!  "evidence": { ... see crate::evidence ... },
//!  "releaseBundle": { ... Sigstore bundle v0.3 with the log entry, proof and checkpoint ... }}
//! ```
//!
//! Key configs are kept as their exact RFC 9458 bytes (the evidence binds their SHA-256) and
//! decoded with `tandem_proto::KeyConfig`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tandem_proto::KeyConfig;
use thiserror::Error;

use crate::digest::Sha256Digest;
use crate::evidence::{Evidence, EvidenceError};
use crate::release::{ReleaseBundle, ReleaseError};

/// Media type of a node attestation bundle.
pub const ATTESTATION_MEDIA_TYPE: &str = "application/vnd.tandem.attestation.v1+json";
/// Most key configs in one list.
pub const MAX_KEY_CONFIGS: usize = 16;
/// Largest accepted bundle (bytes of JSON).
pub const MAX_BUNDLE_LEN: usize = 1 << 20;

/// An attestation bundle failed to parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttestationError {
    /// The document or one of its fields is malformed.
    #[error("malformed attestation bundle: {field}: {reason}")]
    Malformed {
        /// The field at fault.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The key config list is not a valid RFC 9458 `application/ohttp-keys` list.
    #[error("invalid key configs (RFC 9458 §3): {0}")]
    KeyConfig(String),
    /// The evidence inside is malformed.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// The release bundle inside is malformed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// A checked RFC 9458 §3.2 `application/ohttp-keys` list: each `KeyConfig` prefixed by a
/// 2-byte length, decoded with [`tandem_proto::KeyConfig::decode_list`]. The exact bytes are
/// kept: evidence binds their SHA-256, and reports print them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfigList {
    bytes: Vec<u8>,
    entries: Vec<KeyConfig>,
}

impl KeyConfigList {
    /// Parses an untrusted list; it must hold 1..=16 configs and re-encode to the same bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, AttestationError> {
        let entries = KeyConfig::decode_list(&bytes)
            .map_err(|e| AttestationError::KeyConfig(e.to_string()))?;
        if entries.is_empty() || entries.len() > MAX_KEY_CONFIGS {
            return Err(AttestationError::KeyConfig(format!(
                "{} key configs; expected 1..={MAX_KEY_CONFIGS}",
                entries.len()
            )));
        }
        if KeyConfig::encode_list(&entries) != bytes {
            return Err(AttestationError::KeyConfig(
                "list is not in its canonical encoding".into(),
            ));
        }
        Ok(Self { bytes, entries })
    }

    /// A list from configs (node side).
    pub fn from_configs(configs: Vec<KeyConfig>) -> Result<Self, AttestationError> {
        Self::parse(KeyConfig::encode_list(&configs))
    }

    /// The exact list bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The decoded configs.
    pub fn entries(&self) -> &[KeyConfig] {
        &self.entries
    }

    /// SHA-256 of [`Self::bytes`] (what evidence binds).
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.bytes)
    }
}

/// A parsed (not verified) attestation bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationBundle {
    key_configs: KeyConfigList,
    key_expiry: u64,
    evidence: Evidence,
    release: ReleaseBundle,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AttestationWire {
    media_type: String,
    key_configs: String,
    key_expiry: u64,
    evidence: serde_json::Value,
    release_bundle: serde_json::Value,
}

impl TryFrom<AttestationWire> for AttestationBundle {
    type Error = AttestationError;

    fn try_from(w: AttestationWire) -> Result<Self, AttestationError> {
        if w.media_type != ATTESTATION_MEDIA_TYPE {
            return Err(AttestationError::Malformed {
                field: "mediaType",
                reason: format!("{:?} is not {ATTESTATION_MEDIA_TYPE:?}", w.media_type),
            });
        }
        let kc = B64
            .decode(&w.key_configs)
            .map_err(|e| AttestationError::Malformed {
                field: "keyConfigs",
                reason: format!("not standard base64: {e}"),
            })?;
        Ok(Self {
            key_configs: KeyConfigList::parse(kc)?,
            key_expiry: w.key_expiry,
            evidence: Evidence::from_value(&w.evidence)?,
            release: ReleaseBundle::from_value(&w.release_bundle)?,
        })
    }
}

impl AttestationBundle {
    /// Assembles a bundle (node side).
    pub fn new(
        key_configs: KeyConfigList,
        key_expiry: u64,
        evidence: Evidence,
        release: ReleaseBundle,
    ) -> Self {
        Self {
            key_configs,
            key_expiry,
            evidence,
            release,
        }
    }

    /// Parses untrusted bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, AttestationError> {
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(AttestationError::Malformed {
                field: "(document)",
                reason: format!("{} bytes is too long", bytes.len()),
            });
        }
        let w: AttestationWire =
            serde_json::from_slice(bytes).map_err(|e| AttestationError::Malformed {
                field: "(document)",
                reason: e.to_string(),
            })?;
        Self::try_from(w)
    }

    /// The bundle as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        let w = AttestationWire {
            media_type: ATTESTATION_MEDIA_TYPE.into(),
            key_configs: B64.encode(self.key_configs.bytes()),
            key_expiry: self.key_expiry,
            evidence: self.evidence.to_value(),
            release_bundle: self.release.to_value(),
        };
        serde_json::to_value(&w).unwrap_or(serde_json::Value::Null)
    }

    /// The bundle as compact JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }

    /// The key configs.
    pub fn key_configs(&self) -> &KeyConfigList {
        &self.key_configs
    }
    /// When the keys expire.
    pub fn key_expiry(&self) -> u64 {
        self.key_expiry
    }
    /// The evidence.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }
    /// The release bundle.
    pub fn release(&self) -> &ReleaseBundle {
        &self.release
    }
}
