//! The software root of trust's files in `--identity DIR`: the node's P-256 identity key
//! (`identity.key.pem`, PKCS#8 PEM) and its fleet certificate (`identity.cert.json`).
//!
//! Certificate JSON (the same fields as the `certificate` object inside evidence):
//!
//! ```text
//! {"role":"node-identity","subject":"node-1","publicKey":"<base64 SEC1>",
//!  "notBefore":<unix s>,"notAfter":<unix s>,"signature":"<base64 r||s>"}
//! ```

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use serde::{Deserialize, Serialize};
use tandem_attest::evidence::{CertRole, FleetCertificate, SoftwareRoot};

use super::NodeError;
use crate::config::{IDENTITY_CERT_FILE, IDENTITY_KEY_FILE};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CertFile {
    role: CertRole,
    subject: String,
    public_key: String,
    not_before: u64,
    not_after: u64,
    signature: String,
}

/// The certificate file's JSON bytes.
pub fn cert_to_json(cert: &FleetCertificate) -> Vec<u8> {
    let f = CertFile {
        role: cert.role(),
        subject: cert.subject().to_owned(),
        public_key: B64.encode(cert.public_key_sec1()),
        not_before: cert.not_before(),
        not_after: cert.not_after(),
        signature: B64.encode(cert.signature()),
    };
    serde_json::to_vec_pretty(&f).unwrap_or_default()
}

/// Parses a certificate file (shape checks only; the device verifies the CA signature).
pub fn cert_from_json(bytes: &[u8]) -> Result<FleetCertificate, NodeError> {
    let bad = |r: String| NodeError::Identity(format!("{IDENTITY_CERT_FILE}: {r}"));
    let f: CertFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let pk = B64
        .decode(&f.public_key)
        .map_err(|e| bad(format!("publicKey: {e}")))?;
    let sig: [u8; 64] = B64
        .decode(&f.signature)
        .map_err(|e| bad(format!("signature: {e}")))?
        .try_into()
        .map_err(|_| bad("signature: not 64 bytes".into()))?;
    FleetCertificate::from_parts(f.role, f.subject, &pk, f.not_before, f.not_after, sig)
        .map_err(|e| bad(e.to_string()))
}

/// Writes an identity directory for the software root (the key file with mode 0600). For
/// provisioning tools, the local dev fleet and tests.
pub fn write_software_identity(
    dir: &Path,
    key: &SigningKey,
    cert: &FleetCertificate,
) -> Result<(), NodeError> {
    let io = |path: &Path, source| NodeError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| NodeError::Identity(format!("encoding the identity key: {e}")))?;
    let kp = dir.join(IDENTITY_KEY_FILE);
    {
        use std::io::Write as _;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&kp).map_err(|e| io(&kp, e))?;
        f.write_all(pem.as_bytes()).map_err(|e| io(&kp, e))?;
    }
    write_cert(dir, IDENTITY_CERT_FILE, cert)
}

/// Writes `cert` as `dir/name` (creating `dir`).
fn write_cert(dir: &Path, name: &str, cert: &FleetCertificate) -> Result<(), NodeError> {
    let io = |path: &Path, source| NodeError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let cp = dir.join(name);
    std::fs::write(&cp, cert_to_json(cert)).map_err(|e| io(&cp, e))
}

/// Reads a certificate file and checks it is for `role` (`what` names that role's key in the
/// error, `hint` says what to do instead).
fn read_cert(
    path: &Path,
    role: CertRole,
    what: &str,
    hint: &str,
) -> Result<FleetCertificate, NodeError> {
    let bytes = std::fs::read(path).map_err(|source| NodeError::Io {
        path: path.to_owned(),
        source,
    })?;
    let c = cert_from_json(&bytes)?;
    if c.role() != role {
        return Err(NodeError::Identity(format!(
            "{}: the certificate is not for {what} (role {:?}){hint}",
            path.display(),
            c.role()
        )));
    }
    Ok(c)
}

/// Loads the software root from its key and certificate files.
pub fn load_software_root(key: &Path, cert: &Path) -> Result<SoftwareRoot, NodeError> {
    let pem = std::fs::read_to_string(key).map_err(|source| NodeError::Io {
        path: key.to_owned(),
        source,
    })?;
    let sk = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        NodeError::Identity(format!(
            "{}: not a PKCS#8 PEM P-256 key ({e})",
            key.display()
        ))
    })?;
    let c = read_cert(cert, CertRole::NodeIdentity, "a node identity key", "")?;
    SoftwareRoot::new(sk, c).map_err(|e| {
        NodeError::Identity(format!(
            "{} and {} do not belong together: {e}",
            key.display(),
            cert.display()
        ))
    })
}

/// Starts the TPM root: reads the launch event log `tandem-launch` wrote (`event_log`), opens
/// the TPM at `tcti` on its own thread, checks that the fleet certificate in `cert` certifies
/// its attestation key, that the log replays to PCR 13 and that it launched `release`. The
/// node extends nothing: what the verifier trusts was measured before the node ran.
pub fn load_tpm_root(
    tcti: &str,
    cert: &Path,
    event_log: &Path,
    release: &tandem_attest::digest::Sha256Digest,
) -> Result<tandem_attest::evidence::tpm_device::TpmThread, NodeError> {
    let c = read_cert(
        cert,
        CertRole::TpmAttestationKey,
        "a TPM attestation key",
        "; certify the key `tandem-node tpm-ak` prints",
    )?;
    let bytes = std::fs::read(event_log).map_err(|e| {
        NodeError::Identity(format!(
            "reading the launch event log {}: {e}; a TPM-rooted node must be started by \
             tandem-launch, which measures it into PCR 13 and writes that log (pass its path \
             with --tpm-event-log)",
            event_log.display()
        ))
    })?;
    let log = tandem_attest::evidence::EventLog::parse(&bytes)
        .map_err(|e| NodeError::Identity(format!("{}: {e}", event_log.display())))?;
    tandem_attest::evidence::tpm_device::TpmThread::start(tcti, c, log, *release).map_err(|e| {
        NodeError::Identity(format!(
            "TPM at {tcti:?} with {} and {}: {e}",
            cert.display(),
            event_log.display()
        ))
    })
}

/// Writes the TPM attestation key's fleet certificate into an identity directory.
pub fn write_tpm_identity(dir: &Path, cert: &FleetCertificate) -> Result<(), NodeError> {
    write_cert(dir, crate::config::AK_CERT_FILE, cert)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tandem_attest::evidence::FleetCa;

    #[test]
    fn identity_files_round_trip() {
        let mut rng = rand::rngs::OsRng;
        let ca = FleetCa::generate_with_rng(&mut rng);
        let key = SigningKey::random(&mut rng);
        let cert = ca
            .certify(CertRole::NodeIdentity, "node-1", key.verifying_key(), 1, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_software_identity(dir.path(), &key, &cert).unwrap_or_else(|e| panic!("{e}"));
        let back = cert_from_json(&cert_to_json(&cert)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, cert);
        load_software_root(
            &dir.path().join(IDENTITY_KEY_FILE),
            &dir.path().join(IDENTITY_CERT_FILE),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // A certificate for another key is refused.
        let other = SigningKey::random(&mut rng);
        let cert2 = ca
            .certify(
                CertRole::NodeIdentity,
                "node-1",
                other.verifying_key(),
                1,
                2,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(IDENTITY_CERT_FILE), cert_to_json(&cert2))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = load_software_root(
            &dir.path().join(IDENTITY_KEY_FILE),
            &dir.path().join(IDENTITY_CERT_FILE),
        )
        .unwrap_err();
        assert!(err.to_string().contains("do not belong together"), "{err}");
    }
}
