//! `tandem-node gateway` (being written: see issue 7).

/// Arguments of `tandem-node gateway`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`tandem-node gateway` is not built yet")
}
