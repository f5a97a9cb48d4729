//! Node evidence: a root of trust vouches that a node's HPKE key configs belong to a node
//! running a given release.
//!
//! Every piece of evidence carries its claims in the clear ([`EvidenceClaims`]: key config
//! digest, release digest, key expiry, optional nonce), a [`FleetCertificate`] for the key that
//! vouches for them, and a proof:
//!
//! - **software root** ([`software`]): the node identity key signs [`EvidenceClaims::message`];
//! - **TPM 2.0** ([`tpm`]): the measured launcher (`tandem-launch`) extended the launcher, the
//!   node binary, its config and the release digest into PCR 13 (which only a reboot resets)
//!   and recorded each extension in an [`eventlog::EventLog`]; the attestation key quoted that
//!   PCR with qualifying data [`EvidenceClaims::tpm_qualifying_data`], which binds the key
//!   config digest, expiry and nonce. The verifier replays the event log against the quote
//!   and checks it under the policy's [`eventlog::LaunchPolicy`].
//!
//! [`RootOfTrust`] is the producer side (the node). Checking is in [`crate::verify`], which
//! calls [`Evidence::verify_root`] and [`Evidence::verify_binding`].

pub mod cert;
pub mod eventlog;
pub mod software;
#[cfg(all(feature = "tpm", feature = "test-util"))]
pub mod swtpm;
pub mod tpm;
#[cfg(feature = "tpm")]
pub mod tpm_device;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::Signature;
use p256::pkcs8::EncodePublicKey as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use cert::{CertRole, FleetCa, FleetCaKey, FleetCertificate};
pub use eventlog::{EventKind, EventLog, LaunchPolicy};
pub use software::SoftwareRoot;
pub use tpm::TpmQuote;

use crate::digest::Sha256Digest;

/// Longest accepted nonce.
pub const MAX_NONCE: usize = 64;

/// Node evidence failed to parse or verify, or a root of trust failed to produce it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A field of untrusted evidence is malformed.
    #[error("malformed evidence: {field}: {reason}")]
    Malformed {
        /// The field at fault.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The fleet certificate does not verify or has the wrong role.
    #[error("fleet certificate rejected: {0}")]
    Certificate(String),
    /// The evidence signature or quote signature does not verify under the certified key.
    #[error("evidence signature rejected: {0}")]
    Signature(String),
    /// The TPM quote does not bind what the claims say (qualifying data, PCR selection, PCR digest).
    #[error("TPM quote rejected: {0}")]
    Quote(String),
    /// A key could not be read.
    #[error("invalid key: {0}; expected a PEM ECDSA P-256 key")]
    Key(String),
    /// The TPM (or its simulator) failed while producing evidence.
    #[error("TPM error: {0}; is the TPM (or swtpm) reachable and was the attestation key loaded?")]
    Device(String),
}

/// What a node's evidence asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceClaims {
    /// SHA-256 of the node's key config list (RFC 9458 `application/ohttp-keys` encoding).
    pub key_config_digest: Sha256Digest,
    /// The release the node runs.
    pub release_digest: Sha256Digest,
    /// When the node's HPKE keys expire (seconds since the Unix epoch).
    pub key_expiry: u64,
    /// A verifier-chosen nonce, if the evidence was made on request.
    pub nonce: Option<Vec<u8>>,
}

impl EvidenceClaims {
    /// The software root's signed message:
    /// `"tandem-evidence-v1" 0x00 || key_config_digest (32) || release_digest (32) ||
    /// key_expiry (u64 BE) || nonce_len (u16 BE) || nonce`.
    pub fn message(&self) -> Vec<u8> {
        let mut m = b"tandem-evidence-v1\0".to_vec();
        m.extend_from_slice(self.key_config_digest.as_bytes());
        m.extend_from_slice(self.release_digest.as_bytes());
        self.put_tail(&mut m);
        m
    }

    /// The TPM quote's qualifying data: SHA-256 of `"tandem-tpm-quote-v1" 0x00 ||
    /// key_config_digest (32) || key_expiry (u64 BE) || nonce_len (u16 BE) || nonce`.
    /// (The release digest is bound through the launch PCR and its event log, not here.)
    pub fn tpm_qualifying_data(&self) -> [u8; 32] {
        let mut m = b"tandem-tpm-quote-v1\0".to_vec();
        m.extend_from_slice(self.key_config_digest.as_bytes());
        self.put_tail(&mut m);
        Sha256Digest::of(&m).0
    }

    fn put_tail(&self, m: &mut Vec<u8>) {
        m.extend_from_slice(&self.key_expiry.to_be_bytes());
        let nonce = self.nonce.as_deref().unwrap_or_default();
        m.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
        m.extend_from_slice(nonce);
    }

    fn check(&self) -> Result<(), EvidenceError> {
        if self
            .nonce
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > MAX_NONCE)
        {
            return Err(EvidenceError::Malformed {
                field: "claims.nonce",
                reason: format!("must be 1..={MAX_NONCE} bytes"),
            });
        }
        Ok(())
    }
}

/// How the claims are proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceProof {
    /// ECDSA P-256 signature (`r || s`) by the node identity key over [`EvidenceClaims::message`].
    Software {
        /// The signature.
        signature: [u8; 64],
    },
    /// A TPM 2.0 quote.
    Tpm2 {
        /// The parsed quote (with its raw `TPMS_ATTEST` bytes).
        quote: TpmQuote,
        /// ECDSA P-256 signature (`r || s`) by the attestation key over the `TPMS_ATTEST` bytes.
        signature: [u8; 64],
        /// Every extension of the quoted PCR since reset.
        event_log: EventLog,
    },
}

/// Node evidence, parsed but not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub(crate) claims: EvidenceClaims,
    pub(crate) certificate: FleetCertificate,
    pub(crate) proof: EvidenceProof,
}

/// A producer of evidence: the node's root of trust.
pub trait RootOfTrust {
    /// Which kind this is (`"software"` or `"tpm2"`), for logs and reports.
    fn kind(&self) -> &'static str;

    /// Produces evidence for `claims`. A TPM root also checks that its PCR holds the release
    /// digest it was measured with.
    fn attest(&mut self, claims: &EvidenceClaims) -> Result<Evidence, EvidenceError>;
}

// ---- JSON wire form ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EvidenceWire {
    root_of_trust: String,
    claims: ClaimsWire,
    certificate: CertWire,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm_quote: Option<QuoteWire>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimsWire {
    key_config_digest: Sha256Digest,
    release_digest: Sha256Digest,
    key_expiry: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CertWire {
    role: CertRole,
    subject: String,
    public_key: String,
    not_before: u64,
    not_after: u64,
    signature: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QuoteWire {
    attest: String,
    signature: String,
    event_log: String,
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, EvidenceError> {
    B64.decode(s).map_err(|e| EvidenceError::Malformed {
        field,
        reason: format!("not standard base64: {e}"),
    })
}

fn sig64(field: &'static str, s: &str) -> Result<[u8; 64], EvidenceError> {
    b64(field, s)?
        .try_into()
        .map_err(|v: Vec<u8>| EvidenceError::Malformed {
            field,
            reason: format!("{} bytes; expected 64 (r || s)", v.len()),
        })
}

impl TryFrom<EvidenceWire> for Evidence {
    type Error = EvidenceError;

    fn try_from(w: EvidenceWire) -> Result<Self, EvidenceError> {
        let nonce = w
            .claims
            .nonce
            .as_deref()
            .map(|n| b64("claims.nonce", n))
            .transpose()?;
        let claims = EvidenceClaims {
            key_config_digest: w.claims.key_config_digest,
            release_digest: w.claims.release_digest,
            key_expiry: w.claims.key_expiry,
            nonce,
        };
        claims.check()?;
        let c = w.certificate;
        let certificate = FleetCertificate::from_parts(
            c.role,
            c.subject,
            &b64("certificate.publicKey", &c.public_key)?,
            c.not_before,
            c.not_after,
            sig64("certificate.signature", &c.signature)?,
        )?;
        let proof = match (w.root_of_trust.as_str(), w.signature, w.tpm_quote) {
            ("software", Some(sig), None) => EvidenceProof::Software {
                signature: sig64("signature", &sig)?,
            },
            ("tpm2", None, Some(q)) => EvidenceProof::Tpm2 {
                quote: TpmQuote::parse(b64("tpmQuote.attest", &q.attest)?)?,
                signature: sig64("tpmQuote.signature", &q.signature)?,
                event_log: EventLog::parse(&b64("tpmQuote.eventLog", &q.event_log)?)?,
            },
            (kind, _, _) => {
                return Err(EvidenceError::Malformed {
                    field: "rootOfTrust",
                    reason: format!(
                        "{kind:?} with the wrong proof fields; expected \"software\" with `signature` or \"tpm2\" with `tpmQuote`"
                    ),
                });
            }
        };
        Ok(Self {
            claims,
            certificate,
            proof,
        })
    }
}

impl Evidence {
    /// Evidence from its parts (unverified, like parsed evidence; the verifier checks it).
    pub fn new(
        claims: EvidenceClaims,
        certificate: FleetCertificate,
        proof: EvidenceProof,
    ) -> Self {
        Self {
            claims,
            certificate,
            proof,
        }
    }

    /// Parses untrusted JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let w: EvidenceWire =
            serde_json::from_slice(bytes).map_err(|e| EvidenceError::Malformed {
                field: "(document)",
                reason: e.to_string(),
            })?;
        Self::try_from(w)
    }

    pub(crate) fn from_value(v: &serde_json::Value) -> Result<Self, EvidenceError> {
        let w = EvidenceWire::deserialize(v).map_err(|e| EvidenceError::Malformed {
            field: "(document)",
            reason: e.to_string(),
        })?;
        Self::try_from(w)
    }

    /// The JSON form.
    pub fn to_value(&self) -> serde_json::Value {
        let (kind, signature, tpm_quote) = match &self.proof {
            EvidenceProof::Software { signature } => {
                ("software", Some(B64.encode(signature)), None)
            }
            EvidenceProof::Tpm2 {
                quote,
                signature,
                event_log,
            } => (
                "tpm2",
                None,
                Some(QuoteWire {
                    attest: B64.encode(quote.raw()),
                    signature: B64.encode(signature),
                    event_log: B64.encode(event_log.encode()),
                }),
            ),
        };
        let c = &self.certificate;
        let w = EvidenceWire {
            root_of_trust: kind.into(),
            claims: ClaimsWire {
                key_config_digest: self.claims.key_config_digest,
                release_digest: self.claims.release_digest,
                key_expiry: self.claims.key_expiry,
                nonce: self.claims.nonce.as_ref().map(|n| B64.encode(n)),
            },
            certificate: CertWire {
                role: c.role,
                subject: c.subject.clone(),
                public_key: B64.encode(c.public_key_sec1()),
                not_before: c.not_before,
                not_after: c.not_after,
                signature: B64.encode(c.signature),
            },
            signature,
            tpm_quote,
        };
        serde_json::to_value(&w).unwrap_or(serde_json::Value::Null)
    }

    /// The claims.
    pub fn claims(&self) -> &EvidenceClaims {
        &self.claims
    }
    /// The fleet certificate.
    pub fn certificate(&self) -> &FleetCertificate {
        &self.certificate
    }
    /// The proof.
    pub fn proof(&self) -> &EvidenceProof {
        &self.proof
    }

    /// `"software"` or `"tpm2"`.
    pub fn kind(&self) -> &'static str {
        match self.proof {
            EvidenceProof::Software { .. } => "software",
            EvidenceProof::Tpm2 { .. } => "tpm2",
        }
    }

    /// Verification step "root of trust": the certificate is signed by a fleet CA in `cas` with
    /// the role this proof needs, and the proof is signed by the certified key. Validity
    /// periods are checked by the expiry step. Returns the CA's key id.
    pub fn verify_root<'a>(&self, cas: &'a [FleetCaKey]) -> Result<&'a FleetCaKey, EvidenceError> {
        let ca = self.certificate.verify(cas)?;
        let (want_role, signed, sig) = match &self.proof {
            EvidenceProof::Software { signature } => {
                (CertRole::NodeIdentity, self.claims.message(), signature)
            }
            EvidenceProof::Tpm2 {
                quote, signature, ..
            } => (CertRole::TpmAttestationKey, quote.raw().to_vec(), signature),
        };
        if self.certificate.role != want_role {
            return Err(EvidenceError::Certificate(format!(
                "{} evidence needs a {want_role:?} certificate, got {:?}",
                self.kind(),
                self.certificate.role
            )));
        }
        let sig = Signature::from_slice(sig)
            .map_err(|_| EvidenceError::Signature("not a valid P-256 (r, s) pair".into()))?;
        let spki = self
            .certificate
            .public_key
            .to_public_key_der()
            .map_err(|e| EvidenceError::Key(e.to_string()))?;
        if !cert::verify_p256(spki.as_bytes(), &signed, &sig) {
            return Err(EvidenceError::Signature(format!(
                "{} evidence is not signed by the key certified for {:?}",
                self.kind(),
                self.certificate.subject
            )));
        }
        Ok(ca)
    }

    /// Verification step "key binding", evidence side: for a TPM quote, the qualifying data is
    /// [`EvidenceClaims::tpm_qualifying_data`], the quote selects exactly the launch PCR, and the
    /// event log replays to the quoted value and passes `launch` for the claimed release, whose
    /// manifest is `manifest` (see [`eventlog`]). A TPM quote without a launch policy is
    /// refused. (For the software root the claims are themselves what was signed.) The caller
    /// then compares the claims with the bundle's key configs and release.
    pub fn verify_binding(
        &self,
        launch: Option<&LaunchPolicy>,
        manifest: &crate::release::ReleaseManifest,
    ) -> Result<(), EvidenceError> {
        match &self.proof {
            EvidenceProof::Software { .. } => Ok(()),
            EvidenceProof::Tpm2 {
                quote, event_log, ..
            } => {
                quote.check_binding(&self.claims)?;
                let launch = launch.ok_or_else(|| {
                    EvidenceError::Quote(
                        "the policy has no tpmLaunch allow-list (bootChain, launchers), so no \
                         TPM launch chain can be trusted; add the allowed launcher digests to \
                         the policy"
                            .into(),
                    )
                })?;
                launch.check(
                    event_log,
                    &quote.pcr_digest,
                    &self.claims.release_digest,
                    manifest,
                )
            }
        }
    }
}
