//! `tandem-fleet`: the operator's and developer's fleet tools: a whole local fleet in one
//! command (`dev`) and the fleet CA (`ca`). Not measured into any release.

use clap::{Parser, Subcommand};

mod ca_cmd;
mod dev_cmd;

/// Tandem fleet tooling: a local fleet on loopback, and the fleet CA.
#[derive(Debug, Parser)]
#[command(name = "tandem-fleet", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a local fleet on loopback: log, signed release, N nodes and a gateway.
    Dev(dev_cmd::Args),
    /// The fleet CA: make its key, give nodes identities, certify TPM attestation keys.
    #[command(subcommand)]
    Ca(ca_cmd::Cmd),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Dev(a) => dev_cmd::run(a),
        Cmd::Ca(c) => ca_cmd::run(c),
    }
}
