//! ECDSA P-256 release keys.
//!
//! Signing uses the `p256` crate (RFC 6979 deterministic nonces). Verification of release
//! signatures goes through the `sigstore` crate's [`CosignVerificationKey`] (scheme
//! `ECDSA_P256_SHA256_ASN1`, aws-lc-rs backend via its `rustls-tls` feature). We do not use
//! sigstore's full-bundle `Verifier`: it verifies Fulcio certificates against a Sigstore trust
//! root and Rekor entries, while Tandem bundles carry public-key verification material and an
//! entry in Tandem's own log, which [`crate::verify`] checks with [`crate::log`].

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::CryptoRngCore;
use sigstore::crypto::{CosignVerificationKey, SigningScheme};

use super::ReleaseError;
use super::bundle::ReleaseBundle;
use super::dsse::{DsseEnvelope, DsseSignature, IN_TOTO_PAYLOAD_TYPE, InTotoStatement};
use super::manifest::ReleaseManifest;
use crate::digest::Sha256Digest;

/// A release signer's public key, as named in a policy.
#[derive(Debug, Clone)]
pub struct ReleaseSignerKey {
    key_id: String,
    spki_der: Vec<u8>,
    verifier: CosignVerificationKey,
}

impl PartialEq for ReleaseSignerKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}
impl Eq for ReleaseSignerKey {}

impl ReleaseSignerKey {
    /// From a SubjectPublicKeyInfo DER encoding of a P-256 key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, ReleaseError> {
        // Parse with p256 first: this rejects keys on other curves and invalid points up front.
        let vk =
            VerifyingKey::from_public_key_der(der).map_err(|e| ReleaseError::Key(e.to_string()))?;
        Ok(Self::from_verifying_key(&vk))
    }

    /// From a PEM `PUBLIC KEY`.
    pub fn from_pem(pem: &str) -> Result<Self, ReleaseError> {
        let vk = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| ReleaseError::Key(e.to_string()))?;
        Ok(Self::from_verifying_key(&vk))
    }

    fn from_verifying_key(vk: &VerifyingKey) -> Self {
        let spki_der = vk
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let verifier =
            CosignVerificationKey::from_der(&spki_der, &SigningScheme::ECDSA_P256_SHA256_ASN1)
                .unwrap_or_else(|_| {
                    CosignVerificationKey::ECDSA_P256_SHA256_ASN1(spki_der.clone())
                });
        Self {
            key_id: Sha256Digest::of(&spki_der).hex(),
            spki_der,
            verifier,
        }
    }

    /// The key id: lowercase hex SHA-256 of the SubjectPublicKeyInfo DER. Used as the DSSE
    /// `keyid` and the bundle's `publicKey.hint`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> String {
        VerifyingKey::from_public_key_der(&self.spki_der)
            .ok()
            .and_then(|vk| vk.to_public_key_pem(LineEnding::LF).ok())
            .unwrap_or_default()
    }

    /// Checks one DSSE signature over `pae` with sigstore's verification key.
    pub fn verify(&self, pae: &[u8], sig_der: &[u8]) -> Result<(), ReleaseError> {
        self.verifier
            .verify_signature(sigstore::crypto::Signature::Raw(sig_der), pae)
            .map_err(|e| ReleaseError::Signature {
                key_id: self.key_id.clone(),
                reason: e.to_string(),
            })
    }
}

/// A release signing key (ECDSA P-256).
#[derive(Clone)]
pub struct ReleaseSigningKey {
    key: SigningKey,
}

impl std::fmt::Debug for ReleaseSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseSigningKey")
            .field("key_id", &self.public_key().key_id())
            .finish_non_exhaustive()
    }
}

impl ReleaseSigningKey {
    /// A fresh key from `rng`.
    pub fn generate_with_rng(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            key: SigningKey::random(rng),
        }
    }

    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Self {
        Self::generate_with_rng(&mut rand_core::OsRng)
    }

    /// From a PEM PKCS#8 `PRIVATE KEY`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, ReleaseError> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(|key| Self { key })
            .map_err(|e| ReleaseError::Key(e.to_string()))
    }

    /// PEM PKCS#8 `PRIVATE KEY`.
    pub fn to_pkcs8_pem(&self) -> Result<String, ReleaseError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| ReleaseError::Key(e.to_string()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> ReleaseSignerKey {
        ReleaseSignerKey::from_verifying_key(self.key.verifying_key())
    }

    /// Signs a manifest: an in-toto statement about its digest, in a DSSE envelope, in a
    /// Sigstore bundle with no log entry yet (see [`ReleaseBundle::with_log_entry`]).
    pub fn sign(&self, manifest: ReleaseManifest) -> ReleaseBundle {
        let statement = InTotoStatement::for_manifest(manifest);
        let payload = statement.to_json();
        let pae = super::dsse::pae(IN_TOTO_PAYLOAD_TYPE, &payload);
        let sig: Signature = self.key.sign(&pae);
        let key_id = self.public_key().key_id().to_owned();
        let envelope = DsseEnvelope {
            payload,
            signatures: vec![DsseSignature {
                keyid: key_id.clone(),
                sig: sig.to_der().as_bytes().to_vec(),
            }],
        };
        ReleaseBundle::from_parts(key_id, envelope, statement, None)
    }
}
