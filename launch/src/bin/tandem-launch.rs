//! `tandem-launch`: measure a node into TPM PCR 13, record the events, run the node.
//!
//! ```text
//! tandem-launch --tcti device:/dev/tpmrm0 --node /usr/bin/tandem-node \
//!     --config node.toml --release release.json -- --listen 0.0.0.0:7443 --identity /etc/tandem
//! ```
//!
//! Arguments after `--` go to `tandem-node serve` after the launcher's own (`--config`,
//! `--release`, `--tpm-tcti`, `--tpm-event-log`).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Measured launcher: extends PCR 13 with the launcher, node binary, config and release
/// digest, appends each to the launch event log, then runs `tandem-node serve`.
#[derive(Debug, Parser)]
#[command(name = "tandem-launch", version)]
struct Args {
    /// TSS2 TCTI of the node's TPM.
    #[arg(long, value_name = "TCTI", default_value = "device:/dev/tpmrm0")]
    tcti: String,
    /// The launch event log (the boot chain's events so far, if any; the launch is appended).
    #[arg(long, value_name = "FILE", default_value = "/run/tandem/launch.evlog")]
    event_log: PathBuf,
    /// The node executable.
    #[arg(long, value_name = "FILE")]
    node: PathBuf,
    /// The node config (TOML), measured.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The node's signed release bundle; its digest is measured.
    #[arg(long, value_name = "FILE")]
    release: PathBuf,
    /// Further `tandem-node serve` arguments.
    #[arg(last = true)]
    serve_args: Vec<OsString>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tandem_launch::check_environment(std::env::vars_os())?;
    let plan = tandem_launch::Plan {
        tcti: a.tcti,
        event_log: a.event_log,
        node: a.node,
        config: a.config,
        release: a.release,
        launcher: std::env::current_exe().context("finding the launcher's own executable")?,
    };
    let launched = tandem_launch::launch(&plan)?;
    for (kind, digest) in &launched.events {
        eprintln!(
            "tandem-launch: PCR 13 extended with {} {digest}",
            kind.as_str()
        );
    }
    use std::os::unix::process::CommandExt as _;
    let err = launched.command(&plan, &a.serve_args).exec();
    Err(err).with_context(|| format!("running the node {}", plan.node.display()))
}
