//! DSSE envelopes (<https://github.com/secure-systems-lab/dsse>, protocol v1) carrying an in-toto
//! Statement v1 (<https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>) whose
//! subject is the release digest and whose predicate is the release manifest.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ReleaseError;
use super::manifest::ReleaseManifest;
use crate::digest::Sha256Digest;

/// `payloadType` of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement v1 `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of a Tandem release manifest.
pub const RELEASE_PREDICATE_TYPE: &str = "https://example.invalid/tandem/release-manifest/v1";
/// Largest accepted DSSE payload (a bound for untrusted input).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Most signatures accepted on one envelope.
pub const MAX_SIGNATURES: usize = 16;

/// DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths as ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsseSignature {
    /// The signer's key id (hex SHA-256 of its SubjectPublicKeyInfo DER).
    pub keyid: String,
    /// ASN.1 DER ECDSA signature over [`pae`].
    pub sig: Vec<u8>,
}

/// A checked DSSE envelope: in-toto payload type, bounded payload, 1..=16 signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsseEnvelope {
    pub(crate) payload: Vec<u8>,
    pub(crate) signatures: Vec<DsseSignature>,
}

impl DsseEnvelope {
    /// Checks the shape of an envelope taken from untrusted input.
    pub fn new(
        payload_type: &str,
        payload: Vec<u8>,
        signatures: Vec<DsseSignature>,
    ) -> Result<Self, ReleaseError> {
        let bad = |field, reason: String| ReleaseError::Bundle { field, reason };
        if payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(bad(
                "dsseEnvelope.payloadType",
                format!("{payload_type:?} is not {IN_TOTO_PAYLOAD_TYPE:?}"),
            ));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(bad(
                "dsseEnvelope.payload",
                format!(
                    "{} bytes is over the {MAX_PAYLOAD}-byte limit",
                    payload.len()
                ),
            ));
        }
        if signatures.is_empty() || signatures.len() > MAX_SIGNATURES {
            return Err(bad(
                "dsseEnvelope.signatures",
                format!(
                    "{} signatures; expected 1..={MAX_SIGNATURES}",
                    signatures.len()
                ),
            ));
        }
        Ok(Self {
            payload,
            signatures,
        })
    }

    /// The payload (the in-toto statement JSON).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signatures.
    pub fn signatures(&self) -> &[DsseSignature] {
        &self.signatures
    }

    /// The bytes every signature signs.
    pub fn pae(&self) -> Vec<u8> {
        pae(IN_TOTO_PAYLOAD_TYPE, &self.payload)
    }

    /// SHA-256 over the PAE bytes and every (keyid, signature), each length-prefixed (u32 BE):
    /// identifies exactly this signed envelope in the log entry.
    pub fn digest(&self) -> Sha256Digest {
        let mut buf = Vec::new();
        let mut put = |b: &[u8]| {
            buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
            buf.extend_from_slice(b);
        };
        put(&self.pae());
        for s in &self.signatures {
            put(s.keyid.as_bytes());
            put(&s.sig);
        }
        Sha256Digest::of(&buf)
    }
}

/// A checked in-toto Statement v1 about one release: exactly one subject, named after the
/// release, whose `sha256` digest equals the digest of the manifest in the predicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InTotoStatement {
    manifest: ReleaseManifest,
    digest: Sha256Digest,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementWire {
    #[serde(rename = "_type")]
    statement_type: String,
    subject: Vec<SubjectWire>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectWire {
    name: String,
    digest: std::collections::BTreeMap<String, String>,
}

impl InTotoStatement {
    /// The statement for a manifest.
    pub fn for_manifest(manifest: ReleaseManifest) -> Self {
        let digest = manifest.digest();
        Self { manifest, digest }
    }

    /// The release manifest (the predicate).
    pub fn manifest(&self) -> &ReleaseManifest {
        &self.manifest
    }

    /// The release digest (the subject).
    pub fn release_digest(&self) -> Sha256Digest {
        self.digest
    }

    /// The statement's JSON (the DSSE payload).
    pub fn to_json(&self) -> Vec<u8> {
        let wire = StatementWire {
            statement_type: STATEMENT_TYPE.into(),
            subject: vec![SubjectWire {
                name: self.manifest.name().to_owned(),
                digest: [("sha256".to_owned(), self.digest.hex())]
                    .into_iter()
                    .collect(),
            }],
            predicate_type: RELEASE_PREDICATE_TYPE.into(),
            predicate: self.manifest.to_value(),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses an untrusted payload and checks subject against predicate.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let w: StatementWire = serde_json::from_slice(bytes)
            .map_err(|e| ReleaseError::Statement(format!("not an in-toto statement: {e}")))?;
        if w.statement_type != STATEMENT_TYPE {
            return Err(ReleaseError::Statement(format!(
                "_type {:?} is not {STATEMENT_TYPE:?}",
                w.statement_type
            )));
        }
        if w.predicate_type != RELEASE_PREDICATE_TYPE {
            return Err(ReleaseError::Statement(format!(
                "predicateType {:?} is not {RELEASE_PREDICATE_TYPE:?}",
                w.predicate_type
            )));
        }
        let [subject] = w.subject.as_slice() else {
            return Err(ReleaseError::Statement(format!(
                "{} subjects; a release statement has exactly one",
                w.subject.len()
            )));
        };
        let manifest = ReleaseManifest::from_value(&w.predicate)?;
        let digest = manifest.digest();
        let Some(claimed) = subject.digest.get("sha256") else {
            return Err(ReleaseError::Statement(
                "subject has no sha256 digest".into(),
            ));
        };
        let claimed =
            Sha256Digest::from_hex(claimed).map_err(|e| ReleaseError::Statement(e.to_string()))?;
        if claimed != digest {
            return Err(ReleaseError::Statement(format!(
                "subject digest {claimed} is not the digest {digest} of the manifest in the predicate"
            )));
        }
        if subject.name != manifest.name() {
            return Err(ReleaseError::Statement(format!(
                "subject name {:?} is not the manifest's name {:?}",
                subject.name,
                manifest.name()
            )));
        }
        Ok(Self { manifest, digest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_dsse_spec_example() {
        // DSSE protocol.md test vector.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
