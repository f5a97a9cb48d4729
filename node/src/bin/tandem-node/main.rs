//! `tandem-node`: what a compute node runs, and nothing else. This executable is measured into
//! the node's release, so it links no gateway, fleet or CA code (ARCHITECTURE.md).

use clap::{Parser, Subcommand};

mod serve_cmd;
mod tpm_cmd;

/// Every freed block is zeroed first: a request's plaintext copies (tokenizer, tensors, text)
/// do not stay readable in freed memory after the request (`tandem_node::zeroing`).
#[global_allocator]
static ALLOC: tandem_node::zeroing::ZeroOnFree<std::alloc::System> =
    tandem_node::zeroing::ZeroOnFree(std::alloc::System);

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
    // The environment as the node was started, before `default_thread_count` sets
    // RAYON_NUM_THREADS (a read; no thread exists yet).
    let env = tandem_node::node::environ::Snapshot::capture();
    // SAFETY: no other thread exists yet (the line above only reads the environment).
    #[allow(unsafe_code)]
    unsafe {
        tandem_model::default_thread_count()
    };
    let cli = Cli::parse();
    env.refuse_loader_variables()?;
    match cli.cmd {
        Cmd::Serve(a) => serve_cmd::run(a, &env),
        Cmd::TpmAk(a) => tpm_cmd::run(a),
    }
}
