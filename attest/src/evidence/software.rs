//! The software root of trust (development): a node identity key, certified by the fleet CA,
//! signs the evidence claims. It proves only that the holder of a fleet-certified key vouches
//! for the claims; nothing measures the running code. Use the TPM root for real deployments.

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

use super::{
    Evidence, EvidenceClaims, EvidenceError, EvidenceProof, FleetCertificate, RootOfTrust,
};

/// A node identity key and its fleet certificate.
#[derive(Clone)]
pub struct SoftwareRoot {
    key: SigningKey,
    certificate: FleetCertificate,
}

impl std::fmt::Debug for SoftwareRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareRoot")
            .field("subject", &self.certificate.subject)
            .finish_non_exhaustive()
    }
}

/// A fresh identity key for a node (the fleet CA then certifies its public half).
pub fn generate_identity_key_with_rng(rng: &mut impl CryptoRngCore) -> SigningKey {
    SigningKey::random(rng)
}

impl SoftwareRoot {
    /// Pairs an identity key with its certificate; the certificate must certify this key as a
    /// node identity key.
    pub fn new(key: SigningKey, certificate: FleetCertificate) -> Result<Self, EvidenceError> {
        if certificate.public_key != VerifyingKey::from(&key) {
            return Err(EvidenceError::Certificate(
                "certificate is for a different key than this node's identity key".into(),
            ));
        }
        if certificate.role != super::CertRole::NodeIdentity {
            return Err(EvidenceError::Certificate(
                "certificate is not for a node identity key".into(),
            ));
        }
        Ok(Self { key, certificate })
    }
}

impl RootOfTrust for SoftwareRoot {
    fn kind(&self) -> &'static str {
        "software"
    }

    fn attest(&mut self, claims: &EvidenceClaims) -> Result<Evidence, EvidenceError> {
        claims.check()?;
        let sig: Signature = self.key.sign(&claims.message());
        Ok(Evidence::new(
            claims.clone(),
            self.certificate.clone(),
            EvidenceProof::Software {
                signature: sig.to_bytes().into(),
            },
        ))
    }
}
