//! `tandem-node gateway --config FILE`: run the fleet gateway.

use std::path::PathBuf;

use anyhow::Context;
use tandem_node::gateway::{BoundGateway, GatewayConfig, events};

/// Arguments of `tandem-node gateway`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's TOML config (fields documented in `tandem_node::gateway::config`).
    #[arg(long)]
    config: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Everything is checked before any port is bound.
    let config = GatewayConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let gw = BoundGateway::bind(config, events::stderr_sink()).await?;
        // Scripts and tests read this line to learn the ports when listening on :0.
        println!(
            "gateway listening on {} metrics {}",
            gw.grpc_addr(),
            gw.metrics_addr()
        );
        gw.serve(shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
