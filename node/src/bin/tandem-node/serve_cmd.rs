//! `tandem-node serve`: run one compute node.
//!
//! The config file is shared by every node of a release (the release measures it); per-node
//! values come from flags: `--listen`, `--identity` (root-of-trust key and certificate, TLS
//! certificate and key). On start the node prints `serving ADDR` on stdout; SIGTERM or Ctrl-C
//! drains it (in-flight streams finish) and it exits 0.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tandem_node::config::{NodeConfig, Overrides};
use tandem_node::node::Node;
use tandem_service::SystemClock;

/// Arguments of `tandem-node serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node config (TOML; see node/README-config.md). Measured into the release.
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:7443 (per node; overrides `listen` in the config).
    #[arg(long)]
    listen: Option<String>,
    /// Per-node identity directory: identity.key.pem + identity.cert.json (software root) or
    /// ak.cert.json (TPM root), tls.cert.pem + tls.key.pem (when the config turns TLS on).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// TLS certificate chain (PEM); overrides <identity>/tls.cert.pem.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); overrides <identity>/tls.key.pem.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Release bundle; overrides `release_bundle` in the config.
    #[arg(long)]
    release: Option<PathBuf>,
    /// TSS2 TCTI of this node's TPM (root_of_trust kind "tpm"); overrides the config's `tcti`.
    #[arg(long, value_name = "TCTI")]
    tpm_tcti: Option<String>,
    /// The launch event log tandem-launch wrote (root_of_trust kind "tpm"; default
    /// /run/tandem/launch.evlog). tandem-launch passes it.
    #[arg(long, value_name = "FILE")]
    tpm_event_log: Option<PathBuf>,
    /// Check the config and files, print the resolved config as JSON, and exit without
    /// loading models or binding.
    #[arg(long)]
    check: bool,
}

pub fn run(a: Args, env: &tandem_node::node::environ::Snapshot) -> anyhow::Result<()> {
    // Validate everything before any port is bound.
    let (cfg, bytes) = NodeConfig::load(&a.config)?;
    env.check(&cfg.environment)
        .with_context(|| format!("the environment does not match {}", a.config.display()))?;
    let resolved = cfg.resolve(
        &a.config,
        &Overrides {
            listen: a.listen,
            identity: a.identity,
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            release_bundle: a.release,
            tpm_tcti: a.tpm_tcti,
            tpm_event_log: a.tpm_event_log,
        },
    )?;
    if a.check {
        println!(
            "{}",
            serde_json::json!({
                "config": a.config.display().to_string(),
                "listen": resolved.listen.to_string(),
                "models": resolved.models.iter().map(|m| serde_json::json!({"name": m.name, "dir": m.dir.display().to_string(), "adapters": m.adapters})).collect::<Vec<_>>(),
                "tls": resolved.tls.is_some(),
                "log_url": resolved.log_url,
                "release_bundle": resolved.release_bundle.display().to_string(),
                "ok": true,
            })
        );
        return Ok(());
    }
    let binary = std::env::current_exe().context("finding the node executable to measure")?;
    let rt = tandem_service::runtime(2).context("starting the async runtime")?;
    rt.block_on(async move {
        let node = Node::start(resolved, &bytes, &binary, Arc::new(SystemClock)).await?;
        let listener = node.bind().await?;
        let addr = listener.local_addr().context("reading the bound address")?;
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "serving {addr}")?;
            out.flush()?;
        }
        node.serve(listener, tandem_service::shutdown_signal())
            .await?;
        anyhow::Ok(())
    })
}
