//! `nodecell run` (not built yet).

/// Arguments of `nodecell run`.
#[derive(clap::Args)]
pub struct RunArgs {}

/// Runs `nodecell run`; returns the exit status.
pub fn main(_args: RunArgs) -> i32 {
    eprintln!("nodecell run: not built yet");
    1
}
