//! `nodecell venv` (not built yet).

/// Arguments of `nodecell venv`.
#[derive(clap::Args)]
pub struct VenvArgs {}

/// Runs `nodecell venv`; returns the exit status.
pub fn main(_args: VenvArgs) -> i32 {
    eprintln!("nodecell venv: not built yet");
    1
}
