//! `tandem-node`: run a compute node, the fleet gateway, or a whole local fleet.

use clap::{Parser, Subcommand};

mod ca_cmd;
mod dev_cmd;
mod gateway_cmd;
mod serve_cmd;
mod tpm_cmd;

/// Tandem's server side: stateless compute nodes and the fleet gateway.
#[derive(Debug, Parser)]
#[command(name = "tandem-node", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a compute node from a config file.
    Serve(serve_cmd::Args),
    /// Run the fleet gateway from a config file.
    Gateway(gateway_cmd::Args),
    /// Start a local fleet on loopback: log, signed release, N nodes and a gateway.
    Dev(dev_cmd::Args),
    /// Print the attestation key of this node's TPM, for the fleet CA to certify.
    TpmAk(tpm_cmd::Args),
    /// The fleet CA: make its key, give nodes identities, certify TPM attestation keys.
    #[command(subcommand)]
    Ca(ca_cmd::Cmd),
}

fn main() -> anyhow::Result<()> {
    // SAFETY: the first statement of `main`: no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        tandem_model::default_thread_count()
    };
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => serve_cmd::run(a),
        Cmd::Gateway(a) => gateway_cmd::run(a),
        Cmd::Dev(a) => dev_cmd::run(a),
        Cmd::TpmAk(a) => tpm_cmd::run(a),
        Cmd::Ca(c) => ca_cmd::run(c),
    }
}
