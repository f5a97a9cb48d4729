//! `tandem-gateway --config FILE`: run the fleet gateway (discovery, relay of sealed requests,
//! failover). The operator's program; it holds no key that opens anything and runs no model.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tandem_gateway::{BoundGateway, GatewayConfig, events};

/// Tandem's fleet gateway: offers attested nodes to devices and relays sealed requests.
#[derive(Debug, Parser)]
#[command(name = "tandem-gateway", version)]
struct Args {
    /// The gateway's TOML config (fields documented in `tandem_gateway::config`).
    #[arg(long)]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Everything is checked before any port is bound.
    let config = GatewayConfig::load(&args.config)?;
    let rt = tandem_service::runtime(2).context("starting the async runtime")?;
    rt.block_on(async move {
        let gw = BoundGateway::bind(config, events::stderr_sink()).await?;
        // Scripts and tests read this line to learn the ports when listening on :0.
        println!(
            "gateway listening on {} metrics {}",
            gw.grpc_addr(),
            gw.metrics_addr()
        );
        gw.serve(tandem_service::shutdown_signal()).await?;
        anyhow::Ok(())
    })
}
