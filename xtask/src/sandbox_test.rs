//! Not built yet.

/// Arguments.
#[derive(clap::Args)]
pub struct Args {}

/// Entry point.
pub fn main(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("sandbox_test: not built yet")
}
