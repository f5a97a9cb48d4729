//! `tandem-fleet dev`: a whole fleet on loopback (log, signed release, N nodes, gateway).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tandem_fleet::dev::{DevFleet, DevOptions};
use tandem_gateway::events;

/// Arguments of `tandem-fleet dev`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of node processes (1..=16).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Write the device-side config (gateway, trust policy, log URL, models) to this file.
    #[arg(long)]
    write_config: Option<PathBuf>,
    /// Directory holding the `device/` and `server/` models the nodes serve.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// The device model instead of `MODELS/device`: a model directory or a `.gguf` file.
    #[arg(long, value_name = "PATH")]
    device_model: Option<PathBuf>,
    /// The server model instead of `MODELS/server`: a model directory or a `.gguf` file (e.g.
    /// the SmolLM2 GGUF that `models/fetch-smollm2.sh` prints; imported to f16 into the cache
    /// on first use).
    #[arg(long, value_name = "PATH")]
    server_model: Option<PathBuf>,
    /// Gateway gRPC address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    gateway: SocketAddr,
    /// Seconds each node may take to load its models and start serving (1..=3600).
    #[arg(long, default_value_t = 300)]
    node_start_timeout: u64,
    /// Sign the log with this key file (`attest log keygen` writes one) instead of a fresh key,
    /// e.g. to forge a conflicting checkpoint in a test of the device's fork detection.
    #[arg(long, value_name = "FILE")]
    log_key: Option<PathBuf>,
    /// The `tandem-node` executable to measure into the release and run (default: the one
    /// beside this `tandem-fleet`).
    #[arg(long, value_name = "FILE")]
    node_binary: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let exe = match a.node_binary {
        Some(p) => p,
        None => {
            let me = std::env::current_exe().context("finding the tandem-fleet executable")?;
            me.with_file_name(format!("tandem-node{}", std::env::consts::EXE_SUFFIX))
        }
    };
    anyhow::ensure!(
        exe.is_file(),
        "no node executable at {}; build it (`cargo build --release -p tandem-node`) or pass \
         --node-binary",
        exe.display()
    );
    let mut opts = DevOptions::new(exe);
    opts.nodes = a.nodes;
    opts.models_dir = a.models;
    opts.device_model = a.device_model;
    opts.server_model = a.server_model;
    opts.gateway_listen = a.gateway;
    opts.write_config = a.write_config.clone();
    opts.node_start_timeout = Duration::from_secs(a.node_start_timeout);
    opts.log_signing_key = a
        .log_key
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p).with_context(|| format!("reading --log-key {}", p.display()))
        })
        .transpose()?;
    let rt = tandem_service::runtime(2).context("starting the async runtime")?;
    rt.block_on(async move {
        let say = |line: &str| {
            use std::io::Write as _;
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        };
        let mut fleet = DevFleet::start(opts, events::stderr_sink(), |l| say(l)).await?;
        say(&format!("gateway {}", fleet.gateway_addr));
        say(&format!("policy {}", fleet.policy_path.display()));
        if let Some(p) = &a.write_config {
            say(&format!("device config {}", p.display()));
        }
        say("ready");
        let stop = tandem_service::shutdown_signal();
        tokio::pin!(stop);
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        let mut reported = Vec::new();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = watch.tick() => {
                    // A node that dies is reported and left out (the gateway's health checks
                    // drop it); the fleet stops only when no node is left.
                    let gone = fleet.exited_nodes();
                    for i in &gone {
                        if !reported.contains(i) {
                            eprintln!("tandem-fleet dev: node {i} exited; the gateway drops it");
                            reported.push(*i);
                        }
                    }
                    if gone.len() == fleet.nodes.len() {
                        fleet.shutdown().await;
                        anyhow::bail!("every node exited; stopping the fleet");
                    }
                }
            }
        }
        say("stopping");
        fleet.shutdown().await;
        anyhow::Ok(())
    })
}
