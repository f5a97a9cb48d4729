//! `attest`: the Tandem attestation and transparency-log command line.

mod log_cmd;
mod release_cmd;
mod verify_cmd;
mod witness_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "attest",
    version,
    about = "Tandem releases, transparency log and verification"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run or talk to the transparency log.
    Log(log_cmd::LogArgs),
    /// Make, sign and show releases.
    Release(release_cmd::ReleaseArgs),
    /// Verify a release or a node attestation bundle (exit code 0 only if every step passed).
    Verify(verify_cmd::VerifyArgs),
    /// Run a C2SP tlog-witness that cosigns logs' checkpoints, or make its key.
    Witness(witness_cmd::WitnessArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Log(args) => log_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Release(args) => release_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => verify_cmd::run(args),
        Command::Witness(args) => witness_cmd::run(args).map(|()| ExitCode::SUCCESS),
    }
}
