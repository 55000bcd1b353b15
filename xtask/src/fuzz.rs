//! Not built yet.

/// Arguments.
#[derive(clap::Args)]
pub struct Args {}

/// Entry point.
pub fn main(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("fuzz: not built yet")
}
