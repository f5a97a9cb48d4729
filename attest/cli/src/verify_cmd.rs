//! `attest verify release BUNDLE` and `attest verify node BUNDLE_FILE_OR_NODE_ADDRESS`: run the
//! verification checklist and print a per-step report (text or `--json`). Exit code 0 only if
//! every step passed. A node address (`host:port`, `http://host:port`, `https://host:port`)
//! is asked for its bundle with the `tandem.v1.Node/GetAttestation` RPC; the bytes it answers
//! are verified exactly like a file's (nothing the node says is trusted).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use tandem_attest::attestation::AttestationBundle;
use tandem_attest::digest::Sha256Digest;
use tandem_attest::release::ReleaseBundle;
use tandem_attest::verify::{KnownCheckpoint, Policy, Report, Verifier, VerifyContext};
use tandem_log::LogClient;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(subcommand)]
    command: VerifyCommand,
}

#[derive(Debug, Subcommand)]
enum VerifyCommand {
    /// Verify a release bundle: signature and signer policy, log inclusion, consistency.
    Release(Common),
    /// Verify a node attestation bundle (a file, or the address of a running node whose
    /// `GetAttestation` answer is verified): the full checklist.
    Node(Common),
}

#[derive(Debug, Args)]
struct Common {
    /// The bundle file; for `node` also a node's gRPC address (`host:port`,
    /// `http://host:port` or `https://host:port`) when no such file exists.
    bundle: PathBuf,
    /// CA certificate (PEM) that signed the node's TLS certificate, for `https://` addresses.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The policy file (JSON; see `tandem_attest::verify::policy`).
    #[arg(long)]
    policy: PathBuf,
    /// The newest checkpoint you have verified before (a signed note file). Without it the
    /// bundle's checkpoint is trusted on first use.
    #[arg(long, conflicts_with = "log")]
    checkpoint: Option<PathBuf>,
    /// Consistency proof between --checkpoint and the bundle's checkpoint (one base64 hash per
    /// line, as printed by `attest log prove --consistency`).
    #[arg(long, requires = "checkpoint")]
    consistency_proof: Option<PathBuf>,
    /// The log's base URL: its current checkpoint becomes the newest known one, and the
    /// consistency proof to the bundle's checkpoint is fetched from it (both are verified).
    #[arg(long)]
    log: Option<String>,
    /// A model or adapter digest the release must contain (repeatable).
    #[arg(long = "require")]
    require: Vec<Sha256Digest>,
    /// Verify as of this time (Unix seconds) instead of the system clock.
    #[arg(long)]
    now: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: VerifyArgs) -> Result<ExitCode> {
    let (is_node, c) = match args.command {
        VerifyCommand::Release(c) => (false, c),
        VerifyCommand::Node(c) => (true, c),
    };
    let policy_bytes =
        fs::read(&c.policy).with_context(|| format!("reading policy {}", c.policy.display()))?;
    let policy = Policy::from_json(&policy_bytes)
        .with_context(|| format!("policy {}", c.policy.display()))?;
    let bundle = load_bundle(&c, is_node)?;
    let now = match c.now {
        Some(n) => n,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("system clock is before 1970")?
            .as_secs(),
    };
    let known = match (&c.checkpoint, &c.log) {
        (Some(path), _) => Some(load_known(&policy, path, c.consistency_proof.as_ref())?),
        (None, Some(url)) => Some(known_from_log(&policy, url, &bundle, is_node)?),
        (None, None) => None,
    };
    let verifier = Verifier::new(policy);
    let cx = VerifyContext {
        now,
        known: known.as_ref(),
        required_digests: &c.require,
        nonce: None,
    };
    let (report, extra): (Report, serde_json::Value) = if is_node {
        let v = verifier.verify_node(&bundle, &cx);
        let extra = match &v.node {
            Some(n) => serde_json::json!({
                "node": n.name(),
                "rootOfTrust": n.root_of_trust(),
                "keyConfigs": B64.encode(n.key_configs().bytes()),
                "keyExpiry": n.key_expiry(),
                "validUntil": n.valid_until(),
                "releaseDigest": n.release().digest().to_string(),
                "logIndex": n.release().log_index(),
            }),
            None => serde_json::Value::Null,
        };
        (v.report, extra)
    } else {
        let v = verifier.verify_release(&bundle, &cx);
        let extra = match &v.release {
            Some(r) => serde_json::json!({
                "releaseDigest": r.digest().to_string(),
                "name": r.manifest().name(),
                "signers": r.signers(),
                "logIndex": r.log_index(),
            }),
            None => serde_json::Value::Null,
        };
        (v.report, extra)
    };
    if c.json {
        let mut v = report.to_json_value();
        v["verified"] = extra;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report.human());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The bundle bytes: the file if it exists; otherwise, for `verify node`, the
/// `GetAttestation` answer of the node at that address.
fn load_bundle(c: &Common, is_node: bool) -> Result<Vec<u8>> {
    if is_node
        && !c.bundle.exists()
        && let Some(url) = c.bundle.to_str().and_then(node_url)
    {
        return fetch_attestation(&url, c.tls_ca.as_deref());
    }
    fs::read(&c.bundle).with_context(|| format!("reading bundle {}", c.bundle.display()))
}

/// `http(s)://…` as given; `host:port` (numeric port, no path) as `http://host:port`.
fn node_url(arg: &str) -> Option<String> {
    if arg.starts_with("http://") || arg.starts_with("https://") {
        return Some(arg.to_owned());
    }
    let (host, port) = arg.rsplit_once(':')?;
    (!host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok())
        .then(|| format!("http://{arg}"))
}

/// Largest attestation document accepted from a node (a bundle is a few KiB).
const MAX_ATTESTATION_BYTES: usize = 1 << 20;

/// Asks the node at `url` for its attestation bundle (`tandem.v1.Node/GetAttestation`).
fn fetch_attestation(url: &str, tls_ca: Option<&Path>) -> Result<Vec<u8>> {
    use tandem_proto::v1::GetAttestationRequest;
    use tandem_proto::v1::node_client::NodeClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    let ca = tls_ca
        .map(|p| fs::read_to_string(p).with_context(|| format!("reading TLS CA {}", p.display())))
        .transpose()?;
    if url.starts_with("https://") && ca.is_none() {
        bail!(
            "{url} uses TLS: pass the CA certificate of the node's TLS certificate with --tls-ca FILE"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut ep = Endpoint::from_shared(url.to_owned())
            .with_context(|| {
                format!("{url} is not a node address (host:port or http(s)://host:port)")
            })?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30));
        if let Some(pem) = ca {
            ep = ep
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .context("TLS configuration")?;
        }
        let channel = ep.connect().await.with_context(|| {
            format!("cannot connect to node {url}; is the address right and the node running?")
        })?;
        let answer = NodeClient::new(channel)
            .max_decoding_message_size(MAX_ATTESTATION_BYTES)
            .get_attestation(GetAttestationRequest {})
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "node {url} refused GetAttestation: {} ({:?})",
                    s.message(),
                    s.code()
                )
            })?;
        let document = answer.into_inner().document;
        if document.is_empty() {
            bail!("node {url} answered GetAttestation with an empty document");
        }
        Ok(document)
    })
}

fn load_known(policy: &Policy, path: &PathBuf, proof: Option<&PathBuf>) -> Result<KnownCheckpoint> {
    let note = fs::read_to_string(path)
        .with_context(|| format!("reading checkpoint {}", path.display()))?;
    let proof = match proof {
        Some(p) => {
            let text = fs::read_to_string(p)
                .with_context(|| format!("reading consistency proof {}", p.display()))?;
            parse_proof_lines(&text)
                .with_context(|| format!("consistency proof {}", p.display()))?
        }
        None => Vec::new(),
    };
    KnownCheckpoint::open(policy, &note, proof).with_context(|| {
        format!(
            "checkpoint {} does not verify under the policy's log keys; is it from this log?",
            path.display()
        )
    })
}

/// The tree size of the bundle's checkpoint, if the bundle parses and has a log entry (if not,
/// the verifier's report says why; no proof is needed for it here).
fn bundle_tree_size(bundle: &[u8], is_node: bool) -> Option<u64> {
    if is_node {
        AttestationBundle::from_json(bundle)
            .ok()?
            .release()
            .log_entry()
            .map(|e| e.tree_size)
    } else {
        ReleaseBundle::from_json(bundle)
            .ok()?
            .log_entry()
            .map(|e| e.tree_size)
    }
}

/// Fetches the log's current checkpoint and the consistency proof between it and the bundle's
/// checkpoint, built from the log's tiles (C2SP tlog-tiles). Nothing fetched is trusted: the
/// checkpoint is opened under the policy's log keys and the proof is checked by the verifier's
/// step 5.
fn known_from_log(
    policy: &Policy,
    base: &str,
    bundle: &[u8],
    is_node: bool,
) -> Result<KnownCheckpoint> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let reader = LogClient::new(base, std::time::Duration::from_secs(30))?;
    rt.block_on(async {
        let note = String::from_utf8(reader.get("checkpoint").await?)
            .context("the log's checkpoint is not UTF-8")?;
        let current = KnownCheckpoint::open(policy, &note, Vec::new()).with_context(|| {
            format!(
                "the checkpoint of {} does not verify under the policy's log keys",
                reader.base()
            )
        })?;
        let cur = current.checkpoint.size;
        let proof = match bundle_tree_size(bundle, is_node) {
            Some(b) if b != cur && b.min(cur) > 0 => {
                reader.consistency_proof(b.min(cur), b.max(cur)).await?
            }
            _ => Vec::new(),
        };
        Ok(KnownCheckpoint { proof, ..current })
    })
}

/// One standard-base64 SHA-256 hash per non-empty line.
pub fn parse_proof_lines(text: &str) -> Result<Vec<[u8; 32]>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            let b = B64
                .decode(l)
                .with_context(|| format!("line {}: not base64", i + 1))?;
            <[u8; 32]>::try_from(b.as_slice())
                .map_err(|_| anyhow::anyhow!("line {}: {} bytes, expected 32", i + 1, b.len()))
        })
        .collect()
}
