//! `tandem-node`: what a compute node runs, and nothing else. This executable is measured into
//! the node's release, so it links no gateway, fleet or CA code (ARCHITECTURE.md).

use clap::{Parser, Subcommand};

mod serve_cmd;
mod tpm_cmd;

/// A Tandem compute node: opens sealed requests, runs the model, streams sealed answers.
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
    /// Print the attestation key of this node's TPM, for the fleet CA to certify.
    TpmAk(tpm_cmd::Args),
}

fn main() -> anyhow::Result<()> {
    // SAFETY: the first statement of `main`: no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        tandem_model::default_thread_count()
    };
    match Cli::parse().cmd {
        Cmd::Serve(a) => serve_cmd::run(a),
        Cmd::TpmAk(a) => tpm_cmd::run(a),
    }
}
