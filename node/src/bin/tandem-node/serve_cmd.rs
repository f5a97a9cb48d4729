//! `tandem-node serve` (being written: see issue 7).

/// Arguments of `tandem-node serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`tandem-node serve` is not built yet")
}
