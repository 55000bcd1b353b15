//! `nodecell check` (not built yet).

/// Arguments of `nodecell check`.
#[derive(clap::Args)]
pub struct CheckArgs {}

/// Runs `nodecell check`; returns the exit status.
pub fn main(_args: CheckArgs) -> i32 {
    eprintln!("nodecell check: not built yet");
    1
}
