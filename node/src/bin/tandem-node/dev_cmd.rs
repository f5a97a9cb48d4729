//! `tandem-node dev` (being written: see issue 7).

/// Arguments of `tandem-node dev`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`tandem-node dev` is not built yet")
}
