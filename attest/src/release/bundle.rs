//! The Sigstore bundle v0.3 (media type `application/vnd.dev.sigstore.bundle.v0.3+json`, the
//! protobuf-specs `dev.sigstore.bundle.v1.Bundle` message in its canonical JSON mapping) for a
//! Tandem release:
//!
//! - `verificationMaterial.publicKey.hint`: the signer's key id (hex SHA-256 of its SPKI DER);
//!   the verifier looks the key up in its policy (public-key material, not a Fulcio certificate);
//! - `verificationMaterial.tlogEntries[0]`: the entry in Tandem's own log. `kindVersion` is
//!   `tandem-release`/`1`; `canonicalizedBody` is [`ReleaseBundle::log_entry_body`];
//!   `inclusionProof` is an RFC 9162 inclusion proof to the tree head in
//!   `inclusionProof.checkpoint.envelope`, a C2SP tlog-checkpoint signed note; `logId.keyId` is
//!   SHA-256 of the checkpoint's origin line; `integratedTime` is when the entry was attached
//!   (informational only: nothing in the log signs it);
//! - `dsseEnvelope`: the DSSE envelope with the in-toto statement.
//!
//! Protobuf JSON writes 64-bit integers as strings and bytes as standard base64; both are
//! followed here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::ReleaseError;
use super::dsse::{DsseEnvelope, DsseSignature, IN_TOTO_PAYLOAD_TYPE, InTotoStatement};
use crate::digest::Sha256Digest;
use crate::log::{Checkpoint, InclusionBundle};

/// The bundle media type (Sigstore bundle format v0.3).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// `kindVersion.kind` of a Tandem release log entry.
pub const LOG_ENTRY_KIND: &str = "tandem-release";
/// `kindVersion.version` of a Tandem release log entry.
pub const LOG_ENTRY_VERSION: &str = "1";
/// Most hashes in an inclusion proof (a tree of 2^64 leaves needs 64).
pub const MAX_PROOF_HASHES: usize = 64;
/// Largest accepted checkpoint note.
pub const MAX_CHECKPOINT_LEN: usize = 64 * 1024;

/// A release's entry in the Tandem transparency log, as carried in the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Index of the leaf in the log.
    pub log_index: u64,
    /// SHA-256 of the checkpoint's origin line.
    pub log_id: [u8; 32],
    /// When the entry was attached (seconds since the Unix epoch; informational).
    pub integrated_time: u64,
    /// The leaf's bytes (must equal [`ReleaseBundle::log_entry_body`]).
    pub body: Vec<u8>,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// Root hash of that tree (must equal the checkpoint's).
    pub root_hash: [u8; 32],
    /// RFC 9162 §2.1.3 inclusion proof hashes.
    pub hashes: Vec<[u8; 32]>,
    /// The checkpoint: a C2SP signed note (tlog-checkpoint body).
    pub checkpoint: String,
}

/// A checked release bundle: envelope shape valid, statement parsed and consistent with its
/// manifest, signature key ids consistent with the hint. Signatures are NOT yet verified; that
/// is [`crate::verify`]'s job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseBundle {
    key_hint: String,
    envelope: DsseEnvelope,
    statement: InTotoStatement,
    log_entry: Option<LogEntry>,
}

// ---- JSON wire shape -------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BundleWire {
    media_type: String,
    verification_material: VerificationMaterialWire,
    dsse_envelope: EnvelopeWire,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VerificationMaterialWire {
    public_key: PublicKeyWire,
    #[serde(default)]
    tlog_entries: Vec<TlogEntryWire>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyWire {
    hint: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlogEntryWire {
    log_index: String,
    log_id: LogIdWire,
    kind_version: KindVersionWire,
    integrated_time: String,
    inclusion_proof: InclusionProofWire,
    canonicalized_body: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogIdWire {
    key_id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindVersionWire {
    kind: String,
    version: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InclusionProofWire {
    log_index: String,
    root_hash: String,
    tree_size: String,
    hashes: Vec<String>,
    checkpoint: CheckpointWire,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointWire {
    envelope: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvelopeWire {
    payload: String,
    payload_type: String,
    signatures: Vec<SignatureWire>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureWire {
    sig: String,
    keyid: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogBodyWire<'a> {
    kind: &'a str,
    version: &'a str,
    release_digest: String,
    release_name: &'a str,
    envelope_digest: String,
    signers: Vec<&'a str>,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ReleaseError {
    ReleaseError::Bundle {
        field,
        reason: reason.into(),
    }
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, ReleaseError> {
    B64.decode(s)
        .map_err(|e| bad(field, format!("not standard base64: {e}")))
}

fn hash32(field: &'static str, s: &str) -> Result<[u8; 32], ReleaseError> {
    b64(field, s)?
        .try_into()
        .map_err(|v: Vec<u8>| bad(field, format!("{} bytes, expected 32", v.len())))
}

fn int(field: &'static str, s: &str) -> Result<u64, ReleaseError> {
    // Protobuf JSON int64: decimal string, no sign, no leading zeros (other than "0").
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad(
            field,
            format!("{s:?} is not a canonical non-negative integer"),
        ));
    }
    let v: u64 = s
        .parse()
        .map_err(|_| bad(field, format!("{s:?} is out of range")))?;
    if v > i64::MAX as u64 {
        return Err(bad(field, format!("{s:?} is out of range for int64")));
    }
    Ok(v)
}

impl TryFrom<BundleWire> for ReleaseBundle {
    type Error = ReleaseError;

    fn try_from(w: BundleWire) -> Result<Self, ReleaseError> {
        if w.media_type != BUNDLE_MEDIA_TYPE {
            return Err(bad(
                "mediaType",
                format!("{:?} is not {BUNDLE_MEDIA_TYPE:?}", w.media_type),
            ));
        }
        let key_hint = w.verification_material.public_key.hint;
        if Sha256Digest::from_hex(&key_hint).is_err() {
            return Err(bad(
                "verificationMaterial.publicKey.hint",
                "expected a key id (64 lowercase hex digits)",
            ));
        }
        let payload = b64("dsseEnvelope.payload", &w.dsse_envelope.payload)?;
        let mut signatures = Vec::with_capacity(w.dsse_envelope.signatures.len());
        for s in w.dsse_envelope.signatures {
            if s.keyid != key_hint {
                return Err(bad(
                    "dsseEnvelope.signatures.keyid",
                    format!("{:?} does not match the public-key hint", s.keyid),
                ));
            }
            signatures.push(DsseSignature {
                keyid: s.keyid,
                sig: b64("dsseEnvelope.signatures.sig", &s.sig)?,
            });
        }
        let envelope = DsseEnvelope::new(&w.dsse_envelope.payload_type, payload, signatures)?;
        let statement = InTotoStatement::from_json(envelope.payload())?;
        let log_entry = match w.verification_material.tlog_entries.len() {
            0 => None,
            1 => {
                let Some(e) = w.verification_material.tlog_entries.into_iter().next() else {
                    return Err(bad("verificationMaterial.tlogEntries", "missing entry"));
                };
                Some(parse_entry(e)?)
            }
            n => {
                return Err(bad(
                    "verificationMaterial.tlogEntries",
                    format!("{n} entries; expected at most one"),
                ));
            }
        };
        let bundle = Self {
            key_hint,
            envelope,
            statement,
            log_entry,
        };
        if let Some(e) = &bundle.log_entry
            && e.body != bundle.log_entry_body()
        {
            return Err(bad(
                "verificationMaterial.tlogEntries.canonicalizedBody",
                "does not describe this envelope (release digest, envelope digest or signers differ)",
            ));
        }
        Ok(bundle)
    }
}

fn parse_entry(e: TlogEntryWire) -> Result<LogEntry, ReleaseError> {
    if e.kind_version.kind != LOG_ENTRY_KIND || e.kind_version.version != LOG_ENTRY_VERSION {
        return Err(bad(
            "tlogEntries.kindVersion",
            format!(
                "{}/{} is not {LOG_ENTRY_KIND}/{LOG_ENTRY_VERSION}",
                e.kind_version.kind, e.kind_version.version
            ),
        ));
    }
    let log_index = int("tlogEntries.logIndex", &e.log_index)?;
    let proof_index = int(
        "tlogEntries.inclusionProof.logIndex",
        &e.inclusion_proof.log_index,
    )?;
    if proof_index != log_index {
        return Err(bad(
            "tlogEntries.inclusionProof.logIndex",
            format!("{proof_index} differs from logIndex {log_index}"),
        ));
    }
    let tree_size = int(
        "tlogEntries.inclusionProof.treeSize",
        &e.inclusion_proof.tree_size,
    )?;
    if log_index >= tree_size {
        return Err(bad(
            "tlogEntries.inclusionProof.treeSize",
            format!("index {log_index} is not inside a tree of size {tree_size}"),
        ));
    }
    if e.inclusion_proof.hashes.len() > MAX_PROOF_HASHES {
        return Err(bad(
            "tlogEntries.inclusionProof.hashes",
            format!("{} hashes is too many", e.inclusion_proof.hashes.len()),
        ));
    }
    let hashes = e
        .inclusion_proof
        .hashes
        .iter()
        .map(|h| hash32("tlogEntries.inclusionProof.hashes", h))
        .collect::<Result<Vec<_>, _>>()?;
    let checkpoint = e.inclusion_proof.checkpoint.envelope;
    if checkpoint.len() > MAX_CHECKPOINT_LEN {
        return Err(bad(
            "tlogEntries.inclusionProof.checkpoint.envelope",
            "checkpoint note too long",
        ));
    }
    Ok(LogEntry {
        log_index,
        log_id: hash32("tlogEntries.logId.keyId", &e.log_id.key_id)?,
        integrated_time: int("tlogEntries.integratedTime", &e.integrated_time)?,
        body: b64("tlogEntries.canonicalizedBody", &e.canonicalized_body)?,
        tree_size,
        root_hash: hash32(
            "tlogEntries.inclusionProof.rootHash",
            &e.inclusion_proof.root_hash,
        )?,
        hashes,
        checkpoint,
    })
}

impl LogEntry {
    /// A log entry from what `attest log append --json` / `POST /add` returns: an
    /// [`InclusionBundle`] (index, tree size, inclusion path, signed checkpoint). The checkpoint
    /// body is parsed for its origin and root; signatures and the proof are checked by the
    /// verifier, not here. `body` is set by [`ReleaseBundle::with_log_entry`].
    pub fn from_inclusion(
        inc: &InclusionBundle,
        integrated_time: u64,
    ) -> Result<Self, ReleaseError> {
        let field = "inclusion bundle";
        let text = inc
            .checkpoint
            .split_once("\n\n")
            .map(|(t, _)| format!("{t}\n"))
            .ok_or_else(|| {
                bad(
                    field,
                    "checkpoint is not a signed note (no blank line before the signatures)",
                )
            })?;
        let cp = Checkpoint::parse(text.as_bytes()).map_err(|e| bad(field, e.to_string()))?;
        if cp.size != inc.tree_size {
            return Err(bad(
                field,
                format!(
                    "proof is for size {} but the checkpoint is for size {}",
                    inc.tree_size, cp.size
                ),
            ));
        }
        let hashes = inc.proof_hashes().map_err(|e| bad(field, e.to_string()))?;
        Ok(Self {
            log_index: inc.index,
            log_id: Sha256Digest::of(cp.origin.as_bytes()).0,
            integrated_time,
            body: Vec::new(),
            tree_size: cp.size,
            root_hash: cp.root_hash,
            hashes,
            checkpoint: inc.checkpoint.clone(),
        })
    }
}

impl ReleaseBundle {
    pub(crate) fn from_parts(
        key_hint: String,
        envelope: DsseEnvelope,
        statement: InTotoStatement,
        log_entry: Option<LogEntry>,
    ) -> Self {
        Self {
            key_hint,
            envelope,
            statement,
            log_entry,
        }
    }

    /// Parses an untrusted bundle.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let w: BundleWire =
            serde_json::from_slice(bytes).map_err(|e| bad("(document)", e.to_string()))?;
        Self::try_from(w)
    }

    /// Parses a bundle held in a JSON value.
    pub fn from_value(v: &serde_json::Value) -> Result<Self, ReleaseError> {
        let w = BundleWire::deserialize(v).map_err(|e| bad("(document)", e.to_string()))?;
        Self::try_from(w)
    }

    /// The bundle as JSON.
    pub fn to_value(&self) -> serde_json::Value {
        let tlog_entries = self
            .log_entry
            .iter()
            .map(|e| TlogEntryWire {
                log_index: e.log_index.to_string(),
                log_id: LogIdWire {
                    key_id: B64.encode(e.log_id),
                },
                kind_version: KindVersionWire {
                    kind: LOG_ENTRY_KIND.into(),
                    version: LOG_ENTRY_VERSION.into(),
                },
                integrated_time: e.integrated_time.to_string(),
                inclusion_proof: InclusionProofWire {
                    log_index: e.log_index.to_string(),
                    root_hash: B64.encode(e.root_hash),
                    tree_size: e.tree_size.to_string(),
                    hashes: e.hashes.iter().map(|h| B64.encode(h)).collect(),
                    checkpoint: CheckpointWire {
                        envelope: e.checkpoint.clone(),
                    },
                },
                canonicalized_body: B64.encode(&e.body),
            })
            .collect();
        let w = BundleWire {
            media_type: BUNDLE_MEDIA_TYPE.into(),
            verification_material: VerificationMaterialWire {
                public_key: PublicKeyWire {
                    hint: self.key_hint.clone(),
                },
                tlog_entries,
            },
            dsse_envelope: EnvelopeWire {
                payload: B64.encode(self.envelope.payload()),
                payload_type: IN_TOTO_PAYLOAD_TYPE.into(),
                signatures: self
                    .envelope
                    .signatures()
                    .iter()
                    .map(|s| SignatureWire {
                        sig: B64.encode(&s.sig),
                        keyid: s.keyid.clone(),
                    })
                    .collect(),
            },
        };
        serde_json::to_value(&w).unwrap_or(serde_json::Value::Null)
    }

    /// The bundle as pretty JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.to_value()).unwrap_or_default()
    }

    /// The signer key id named by the bundle.
    pub fn key_hint(&self) -> &str {
        &self.key_hint
    }

    /// The DSSE envelope.
    pub fn envelope(&self) -> &DsseEnvelope {
        &self.envelope
    }

    /// The parsed statement (manifest + release digest).
    pub fn statement(&self) -> &InTotoStatement {
        &self.statement
    }

    /// The release digest the bundle is about.
    pub fn release_digest(&self) -> Sha256Digest {
        self.statement.release_digest()
    }

    /// The log entry, if the bundle has been logged.
    pub fn log_entry(&self) -> Option<&LogEntry> {
        self.log_entry.as_ref()
    }

    /// The bytes to append to the transparency log for this bundle: compact JSON
    /// `{"kind":"tandem-release","version":"1","releaseDigest":"sha256:…","releaseName":"…",
    /// "envelopeDigest":"sha256:…","signers":["<key id>",…]}` in exactly that key order.
    pub fn log_entry_body(&self) -> Vec<u8> {
        let w = LogBodyWire {
            kind: LOG_ENTRY_KIND,
            version: LOG_ENTRY_VERSION,
            release_digest: self.release_digest().to_string(),
            release_name: self.statement.manifest().name(),
            envelope_digest: self.envelope.digest().to_string(),
            signers: self
                .envelope
                .signatures()
                .iter()
                .map(|s| s.keyid.as_str())
                .collect(),
        };
        serde_json::to_vec(&w).unwrap_or_default()
    }

    /// The same bundle carrying a log entry (replacing any previous one). The entry's body is
    /// set to [`Self::log_entry_body`].
    pub fn with_log_entry(mut self, mut entry: LogEntry) -> Self {
        entry.body = self.log_entry_body();
        self.log_entry = Some(entry);
        self
    }
}
