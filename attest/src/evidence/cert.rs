//! Fleet certificates: a fleet CA key (ECDSA P-256) certifies a node's identity key (software
//! root) or a TPM attestation key.
//!
//! Not X.509: a small fixed binary to-be-signed form, so there is one parser and no ASN.1 on the
//! device's verification path. The CA signs (ECDSA P-256, SHA-256, fixed 64-byte `r || s`):
//!
//! ```text
//! "tandem-fleet-cert-v1" 0x00
//! role            u8      (1 = node identity key, 2 = TPM attestation key)
//! subject_len     u16 BE, subject (UTF-8, 1..=255 bytes; the node's name)
//! public_key      65 bytes (SEC1 uncompressed P-256 point)
//! not_before      u64 BE  (seconds since the Unix epoch)
//! not_after       u64 BE
//! ```

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::CryptoRngCore;

use super::EvidenceError;
use crate::digest::Sha256Digest;

const TBS_TAG: &[u8] = b"tandem-fleet-cert-v1\0";

/// What a certified key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertRole {
    /// A software-root node identity key that signs evidence claims.
    NodeIdentity,
    /// A TPM 2.0 restricted signing key that signs quotes.
    TpmAttestationKey,
}

impl CertRole {
    fn code(self) -> u8 {
        match self {
            Self::NodeIdentity => 1,
            Self::TpmAttestationKey => 2,
        }
    }
}

/// A P-256 public key with its key id (hex SHA-256 of the SPKI DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCaKey {
    key: VerifyingKey,
    key_id: String,
    /// SubjectPublicKeyInfo DER, encoded once for [`verify_p256`].
    spki_der: Vec<u8>,
}

/// ECDSA P-256 with SHA-256 over `msg`: `sig` under the key whose SubjectPublicKeyInfo DER is
/// `spki_der`. Runs on sigstore's verification backend (aws-lc), about ten times faster than
/// the pure-Rust `p256` arithmetic; same algorithm and acceptance (no low-S rule either way).
pub(crate) fn verify_p256(spki_der: &[u8], msg: &[u8], sig: &Signature) -> bool {
    let der = sig.to_der();
    sigstore::crypto::CosignVerificationKey::ECDSA_P256_SHA256_ASN1(spki_der.to_vec())
        .verify_signature(sigstore::crypto::Signature::Raw(der.as_bytes()), msg)
        .is_ok()
}

impl FleetCaKey {
    /// From a verifying key.
    pub fn new(key: VerifyingKey) -> Self {
        let spki_der = key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let key_id = if spki_der.is_empty() {
            String::new()
        } else {
            Sha256Digest::of(&spki_der).hex()
        };
        Self {
            key,
            key_id,
            spki_der,
        }
    }

    /// From a PEM `PUBLIC KEY`.
    pub fn from_pem(pem: &str) -> Result<Self, EvidenceError> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(Self::new)
            .map_err(|e| EvidenceError::Key(e.to_string()))
    }

    /// PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// The fleet certificate authority (held by the fleet operator, never by a node).
#[derive(Clone)]
pub struct FleetCa {
    key: SigningKey,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa")
            .field("key_id", &self.public_key().key_id)
            .finish_non_exhaustive()
    }
}

impl FleetCa {
    /// A fresh CA key from `rng`.
    pub fn generate_with_rng(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            key: SigningKey::random(rng),
        }
    }

    /// From a PEM PKCS#8 private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, EvidenceError> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(|key| Self { key })
            .map_err(|e| EvidenceError::Key(e.to_string()))
    }

    /// PEM PKCS#8 private key.
    pub fn to_pkcs8_pem(&self) -> Result<String, EvidenceError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| EvidenceError::Key(e.to_string()))
    }

    /// The CA's public key (what verifiers pin).
    pub fn public_key(&self) -> FleetCaKey {
        FleetCaKey::new(*self.key.verifying_key())
    }

    /// Certifies `public_key` for `role` on node `subject` for `[not_before, not_after]`.
    pub fn certify(
        &self,
        role: CertRole,
        subject: &str,
        public_key: &VerifyingKey,
        not_before: u64,
        not_after: u64,
    ) -> Result<FleetCertificate, EvidenceError> {
        let mut cert = FleetCertificate {
            role,
            subject: subject.to_owned(),
            public_key: *public_key,
            not_before,
            not_after,
            signature: [0; 64],
        };
        cert.check_shape()?;
        let sig: Signature = self.key.sign(&cert.tbs());
        cert.signature = sig.to_bytes().into();
        Ok(cert)
    }
}

/// A certificate issued by a fleet CA. Parsed, not yet verified: see [`FleetCertificate::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCertificate {
    pub(crate) role: CertRole,
    pub(crate) subject: String,
    pub(crate) public_key: VerifyingKey,
    pub(crate) not_before: u64,
    pub(crate) not_after: u64,
    pub(crate) signature: [u8; 64],
}

impl FleetCertificate {
    /// Builds a certificate from untrusted parts (shape checks only).
    pub fn from_parts(
        role: CertRole,
        subject: String,
        public_key_sec1: &[u8],
        not_before: u64,
        not_after: u64,
        signature: [u8; 64],
    ) -> Result<Self, EvidenceError> {
        if public_key_sec1.len() != 65 {
            return Err(EvidenceError::Malformed {
                field: "certificate.publicKey",
                reason: format!(
                    "{} bytes; expected a 65-byte uncompressed P-256 point",
                    public_key_sec1.len()
                ),
            });
        }
        let public_key = VerifyingKey::from_sec1_bytes(public_key_sec1).map_err(|_| {
            EvidenceError::Malformed {
                field: "certificate.publicKey",
                reason: "not a point on P-256".into(),
            }
        })?;
        let cert = Self {
            role,
            subject,
            public_key,
            not_before,
            not_after,
            signature,
        };
        cert.check_shape()?;
        Ok(cert)
    }

    fn check_shape(&self) -> Result<(), EvidenceError> {
        if self.subject.is_empty()
            || self.subject.len() > 255
            || self.subject.chars().any(char::is_control)
        {
            return Err(EvidenceError::Malformed {
                field: "certificate.subject",
                reason: "must be 1..=255 bytes without control characters".into(),
            });
        }
        if self.not_before > self.not_after {
            return Err(EvidenceError::Malformed {
                field: "certificate.notAfter",
                reason: format!(
                    "not_after {} is before not_before {}",
                    self.not_after, self.not_before
                ),
            });
        }
        Ok(())
    }

    /// The to-be-signed bytes (see the module documentation).
    pub fn tbs(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TBS_TAG.len() + 1 + 2 + self.subject.len() + 65 + 16);
        out.extend_from_slice(TBS_TAG);
        out.push(self.role.code());
        out.extend_from_slice(&(self.subject.len() as u16).to_be_bytes());
        out.extend_from_slice(self.subject.as_bytes());
        out.extend_from_slice(&self.public_key_sec1());
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        out
    }

    /// Checks the CA signature under any of `cas`; returns the CA that signed.
    pub fn verify<'a>(&self, cas: &'a [FleetCaKey]) -> Result<&'a FleetCaKey, EvidenceError> {
        let sig = Signature::from_slice(&self.signature).map_err(|_| {
            EvidenceError::Certificate("signature is not a valid P-256 (r, s) pair".into())
        })?;
        let tbs = self.tbs();
        cas.iter().find(|ca| verify_p256(&ca.spki_der, &tbs, &sig)).ok_or_else(|| {
            EvidenceError::Certificate(format!(
                "certificate for {:?} is not signed by any of the {} fleet CA key(s) in the policy; is the policy's fleetCaKeys list right?",
                self.subject,
                cas.len()
            ))
        })
    }

    /// The role.
    pub fn role(&self) -> CertRole {
        self.role
    }
    /// The node name.
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// Start of validity (Unix seconds).
    pub fn not_before(&self) -> u64 {
        self.not_before
    }
    /// End of validity (Unix seconds).
    pub fn not_after(&self) -> u64 {
        self.not_after
    }
    /// The certified key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.public_key
    }
    /// The certified key as a 65-byte SEC1 uncompressed point.
    pub fn public_key_sec1(&self) -> Vec<u8> {
        self.public_key.to_encoded_point(false).as_bytes().to_vec()
    }
    /// The CA signature (`r || s`).
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}
