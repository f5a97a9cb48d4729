//! `attest log ...`: the transparency-log server and its clients.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// Arguments of `attest log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Generate a log signing key (C2SP signed-note Ed25519); prints the verifier key.
    Keygen {
        /// Origin (log name) the key signs checkpoints for, e.g. `tandem.example/log`.
        #[arg(long)]
        origin: String,
        /// Where to write the private signing key (created with mode 0600, never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Run an `attest log` subcommand.
pub fn run(args: LogArgs) -> anyhow::Result<()> {
    match args.command {
        LogCommand::Keygen { origin, out } => keygen(&origin, &out),
    }
}

fn keygen(origin: &str, out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;

    anyhow::ensure!(
        signed_note::is_key_name_valid(origin),
        "origin {origin:?} is not a valid key name (no spaces or '+', not empty)"
    );
    let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, origin);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(out).with_context(|| {
        format!(
            "creating key file {} (it must not exist yet)",
            out.display()
        )
    })?;
    f.write_all(format!("{skey}\n").as_bytes())?;
    f.sync_all()?;
    println!("{vkey}");
    Ok(())
}
