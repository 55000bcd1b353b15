//! `nodecell provision` (not built yet).

/// Arguments of `nodecell provision`.
#[derive(clap::Args)]
pub struct ProvisionArgs {}

/// Runs `nodecell provision`; returns the exit status.
pub fn main(_args: ProvisionArgs) -> i32 {
    eprintln!("nodecell provision: not built yet");
    1
}
