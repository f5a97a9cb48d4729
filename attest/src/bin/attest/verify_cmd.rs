//! `attest verify release BUNDLE` and `attest verify node BUNDLE_FILE`: run the verification
//! checklist and print a per-step report (text or `--json`). Exit code 0 only if every step
//! passed. (Verifying a node by network address arrives with the node crate; for now pass the
//! bundle file a node served.)

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use tandem_attest::digest::Sha256Digest;
use tandem_attest::verify::{KnownCheckpoint, Policy, Report, Verifier, VerifyContext};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(subcommand)]
    command: VerifyCommand,
}

#[derive(Debug, Subcommand)]
enum VerifyCommand {
    /// Verify a release bundle: signature and signer policy, log inclusion, consistency.
    Release(Common),
    /// Verify a node attestation bundle file: the full checklist.
    Node(Common),
}

#[derive(Debug, Args)]
struct Common {
    /// The bundle file.
    bundle: PathBuf,
    /// The policy file (JSON; see `tandem_attest::verify::policy`).
    #[arg(long)]
    policy: PathBuf,
    /// The newest checkpoint you have verified before (a signed note file). Without it the
    /// bundle's checkpoint is trusted on first use.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Consistency proof between --checkpoint and the bundle's checkpoint (one base64 hash per
    /// line, as printed by `attest log prove --consistency`).
    #[arg(long, requires = "checkpoint")]
    consistency_proof: Option<PathBuf>,
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
    let bundle =
        fs::read(&c.bundle).with_context(|| format!("reading bundle {}", c.bundle.display()))?;
    let now = match c.now {
        Some(n) => n,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("system clock is before 1970")?
            .as_secs(),
    };
    let known = match &c.checkpoint {
        Some(path) => Some(load_known(&policy, path, c.consistency_proof.as_ref())?),
        None => None,
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
