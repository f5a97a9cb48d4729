//! `tandem-fleet ca …`: the fleet CA an operator runs off the nodes: make the CA key, give a node
//! a software identity, certify a TPM attestation key. Devices pin the CA's public key
//! (`fleetCaKeys` in their policy); a node's certificate goes into its `--identity DIR`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use p256::pkcs8::DecodePublicKey as _;
use tandem_attest::evidence::{CertRole, FleetCa};
use tandem_node::config::{AK_CERT_FILE, IDENTITY_CERT_FILE};
use tandem_node::node::identity::{write_software_identity, write_tpm_identity};

/// `tandem-fleet ca` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Make a fleet CA: `ca.key.pem` (private, mode 0600) and `ca.pub.pem` (for device
    /// policies' `fleetCaKeys`). Refuses to overwrite an existing key.
    Init {
        /// Directory to write the two files into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Give a node a software identity: a fresh P-256 key and its certificate
    /// (`identity.key.pem`, `identity.cert.json`) in the node's identity directory.
    Identity {
        #[command(flatten)]
        ca: CaArgs,
        /// The node's identity directory (`tandem-node serve --identity DIR`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Certify a TPM attestation key (the PEM `tandem-node tpm-ak` prints) into `ak.cert.json`
    /// in the node's identity directory.
    CertifyTpm {
        #[command(flatten)]
        ca: CaArgs,
        /// The attestation key (SPKI PEM from `tandem-node tpm-ak`).
        #[arg(long, value_name = "PEM")]
        ak: PathBuf,
        /// The node's identity directory.
        #[arg(long)]
        out: PathBuf,
    },
}

/// What every certificate needs.
#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// The CA's private key (`ca.key.pem` from `tandem-fleet ca init`).
    #[arg(long, value_name = "FILE")]
    ca_key: PathBuf,
    /// The node's name in its certificate (shown in every verification report).
    #[arg(long)]
    subject: String,
    /// Days the certificate is valid from now.
    #[arg(long, default_value_t = 365)]
    days: u64,
    /// Print one JSON object describing what was written.
    #[arg(long)]
    json: bool,
}

fn load_ca(path: &Path) -> anyhow::Result<FleetCa> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the CA key {}", path.display()))?;
    FleetCa::from_pkcs8_pem(&pem).with_context(|| {
        format!(
            "{} is not a fleet CA key (PKCS#8 PEM P-256, as `tandem-fleet ca init` writes)",
            path.display()
        )
    })
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn validity(a: &CaArgs) -> anyhow::Result<(u64, u64)> {
    if a.days == 0 || a.days > 3650 {
        bail!("--days {} is outside 1..=3650", a.days);
    }
    let n = tandem_service::unix_now();
    if n == 0 {
        bail!("the system clock is before 1970; set the clock before issuing certificates");
    }
    // A minute of slack for nodes whose clock is a little behind the CA's.
    Ok((n.saturating_sub(60), n + a.days * 86_400))
}

fn report(a: &CaArgs, role: CertRole, key_id: &str, file: &Path, until: u64) {
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "subject": a.subject,
                "role": format!("{role:?}"),
                "ca_key_id": key_id,
                "certificate": file.display().to_string(),
                "not_after": until,
            })
        );
    } else {
        println!(
            "certified {:?} ({role:?}) by CA {key_id} until {until}: {}",
            a.subject,
            file.display()
        );
    }
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Init { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let ca = FleetCa::generate_with_rng(&mut rand::rngs::OsRng);
            write_private(&out.join("ca.key.pem"), &ca.to_pkcs8_pem()?)?;
            let public = ca.public_key();
            let pub_path = out.join("ca.pub.pem");
            std::fs::write(&pub_path, public.to_pem())
                .with_context(|| format!("writing {}", pub_path.display()))?;
            println!(
                "fleet CA {} in {} (put ca.pub.pem in device policies' fleetCaKeys; keep ca.key.pem off the nodes)",
                public.key_id(),
                out.display()
            );
            Ok(())
        }
        Cmd::Identity { ca, out } => {
            let authority = load_ca(&ca.ca_key)?;
            let (from, until) = validity(&ca)?;
            if out.join(IDENTITY_CERT_FILE).exists() {
                bail!(
                    "{} already holds an identity; give the node a new directory to rotate it",
                    out.display()
                );
            }
            let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
            let cert = authority.certify(
                CertRole::NodeIdentity,
                &ca.subject,
                key.verifying_key(),
                from,
                until,
            )?;
            write_software_identity(&out, &key, &cert)?;
            report(
                &ca,
                CertRole::NodeIdentity,
                authority.public_key().key_id(),
                &out.join(IDENTITY_CERT_FILE),
                until,
            );
            Ok(())
        }
        Cmd::CertifyTpm { ca, ak, out } => {
            let authority = load_ca(&ca.ca_key)?;
            let (from, until) = validity(&ca)?;
            let pem = std::fs::read_to_string(&ak)
                .with_context(|| format!("reading the attestation key {}", ak.display()))?;
            let key =
                p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim()).with_context(|| {
                    format!(
                        "{} is not a P-256 public key PEM (the output of `tandem-node tpm-ak`)",
                        ak.display()
                    )
                })?;
            let cert =
                authority.certify(CertRole::TpmAttestationKey, &ca.subject, &key, from, until)?;
            write_tpm_identity(&out, &cert)?;
            report(
                &ca,
                CertRole::TpmAttestationKey,
                authority.public_key().key_id(),
                &out.join(AK_CERT_FILE),
                until,
            );
            Ok(())
        }
    }
}
