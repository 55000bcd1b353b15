//! The `nodecell` command line: `check`, `run`, `provision`, `venv`, `migrate`,
//! `state`, and the developer tools `top`, `debug`, `profile` and `deps`.
//!
//! Each subcommand lives in its own module under `src/cli/` and returns the
//! process exit status; this file only parses the command line and exits.

mod cli;

use clap::{Parser, Subcommand};

/// Run untrusted Python node packs behind Linux kernel walls.
#[derive(Parser)]
#[command(name = "nodecell", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what this kernel and this user can enforce.
    Check(cli::check::CheckArgs),
    /// Run a command inside a sandbox.
    Run(Box<cli::run::RunArgs>),
    /// Build (or find) the venv of each pack.
    Provision(cli::provision::ProvisionArgs),
    /// List or garbage-collect cached venvs.
    Venv(cli::venv::VenvArgs),
    /// Write a manifest.yaml for an existing pack from its requirements.txt,
    /// pyproject.toml and install.py.
    Migrate(cli::migrate::MigrateArgs),
    /// Live view of the cells of running host processes: calls/s, latency,
    /// CPU, memory, walls, restarts.
    Top(cli::top::TopArgs),
    /// Attach a debugger (pdb console or Debug Adapter Protocol) to the cells
    /// of a running host process.
    Debug(cli::debug::DebugArgs),
    /// List or remove the per-pack state layers (what isolated packs write
    /// into their own folder).
    State(cli::state::StateArgs),
    /// Record a profile (Chrome trace / Perfetto JSON) of a running host's
    /// calls across the host and its cells.
    Profile(cli::profile::ProfileArgs),
    /// Check node packs' requirements against each other and the host:
    /// conflicts, shared venvs, numpy-ABI hazards, network needs.
    Deps(cli::deps::DepsArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => cli::check::main(args),
        Command::Run(args) => cli::run::main(*args),
        Command::Provision(args) => cli::provision::main(args),
        Command::Venv(args) => cli::venv::main(args),
        Command::Migrate(args) => cli::migrate::main(args),
        Command::Top(args) => cli::top::main(args),
        Command::Debug(args) => cli::debug::main(args),
        Command::State(args) => cli::state::main(args),
        Command::Profile(args) => cli::profile::main(args),
        Command::Deps(args) => cli::deps::main(args),
    };
    std::process::exit(code);
}
