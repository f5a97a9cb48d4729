//! `tandem-node tpm-ak`: the public attestation key of a node's TPM, which the fleet CA
//! certifies (role `tpm-attestation-key`) into `ak.cert.json` of the node's `--identity DIR`.
//! The key is a TPM primary key (owner seed + fixed template): the same TPM gives the same key
//! at every start, so enrolment happens once per machine.

use anyhow::Context as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};

/// Arguments of `tandem-node tpm-ak`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TSS2 TCTI of the TPM, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    #[arg(long, value_name = "TCTI", default_value = "device:/dev/tpmrm0")]
    tcti: String,
    /// Print one JSON object (`tcti`, `public_key_pem`, `public_key_sec1_base64`).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let key = tandem_attest::evidence::tpm_device::attestation_key_public(&a.tcti)?;
    let pem = key
        .to_public_key_pem(LineEnding::LF)
        .context("encoding the attestation key")?;
    if a.json {
        use base64::Engine as _;
        let sec1 = key.to_encoded_point(false);
        println!(
            "{}",
            serde_json::json!({
                "tcti": a.tcti,
                "public_key_pem": pem,
                "public_key_sec1_base64":
                    base64::engine::general_purpose::STANDARD.encode(sec1.as_bytes()),
            })
        );
    } else {
        print!("{pem}");
    }
    Ok(())
}
