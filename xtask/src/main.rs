//! `cargo xtask`: nodecell's developer tasks.
//!
//! * `cargo xtask sandbox-test` — the escape and containment suite (`sandbox_test.rs`).
//! * `cargo xtask bench launch|ipc|provision|py|ray|cells` — benchmarks; each prints a table
//!   and writes `target/bench/<name>.json` (`bench_*.rs`); `bench py|ipc --plot` and
//!   `bench plot py|ipc` chart it as an SVG (`bench_plot.rs`).
//! * `cargo xtask fuzz ipc --runs N` — the ipc fuzz targets (`fuzz.rs`).
//! * `cargo xtask pyisolate-suite --src DIR` — pyisolate 0.10.2's tests against
//!   nodecell's pyisolate layer (`pyisolate_suite.rs`).
//! * `cargo xtask soak` — the Python API under a long fault soak, with leak accounting (`soak.rs`).
//! * `cargo xtask realpacks --app DIR --packs DIR` — real packs in a real app, direct vs
//!   isolated (`realpacks.rs`).
//! * `cargo xtask wheel-check` — the sdist compiled into a wheel and compared with the
//!   built one (too slow for `scripts/test.sh`; `wheel_check.rs`).
use clap::{Parser, Subcommand};

mod bench_cells;
mod bench_ipc;
mod bench_launch;
mod bench_plot;
mod bench_provision;
mod bench_py;
mod bench_ray;
mod fuzz;
mod pyisolate_suite;
mod realpacks;
mod sandbox_test;
mod soak;
mod wheel_check;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "nodecell developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The sandbox escape and containment suite.
    SandboxTest(sandbox_test::Args),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Fuzz targets.
    Fuzz(fuzz::Args),
    /// pyisolate 0.10.2's own tests against nodecell.compat.pyisolate.
    PyisolateSuite(pyisolate_suite::Args),
    /// Calls, crashes and start/stop cycles through the Python API, with leak accounting.
    Soak(soak::Args),
    /// Real node packs in a real app (ComfyUI), loaded directly and isolated, compared.
    Realpacks(realpacks::Args),
    /// The sdist built into a wheel and compared with target/wheels' (slow; not in scripts/test.sh).
    WheelCheck(wheel_check::Args),
}

#[derive(Subcommand)]
enum Bench {
    /// Launch cost: fork+exec vs `nodecell run` vs bwrap.
    Launch(bench_launch::Args),
    /// Ring, futex, socket and tensor hand-off round trips.
    Ipc(bench_ipc::Args),
    /// Venv provisioning vs uv by hand.
    Provision(bench_provision::Args),
    /// The Python API vs pyisolate.
    Py(bench_py::Args),
    /// Cells on a Ray cluster: local cell vs cell on another raylet vs a plain Ray actor.
    Ray(bench_ray::Args),
    /// Packs of a host app: own cell per pack vs app cells (fork from a zygote with the app).
    Cells(bench_cells::Args),
    /// An SVG chart from a bench's saved JSON (py: nodecell vs pyisolate; ipc: rows vs floors).
    Plot(bench_plot::Args),
}

/// The repository root (xtask/..).
pub(crate) fn workspace_root() -> std::path::PathBuf {
    let xtask = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask
        .parent()
        .map(std::path::PathBuf::from)
        .unwrap_or(xtask)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::SandboxTest(a) => sandbox_test::main(a),
        Cmd::Bench { which } => match which {
            Bench::Launch(a) => bench_launch::main(a),
            Bench::Ipc(a) => bench_ipc::main(a),
            Bench::Provision(a) => bench_provision::main(a),
            Bench::Py(a) => bench_py::main(a),
            Bench::Ray(a) => bench_ray::main(a),
            Bench::Cells(a) => bench_cells::main(a),
            Bench::Plot(a) => bench_plot::main(a),
        },
        Cmd::Fuzz(a) => fuzz::main(a),
        Cmd::PyisolateSuite(a) => pyisolate_suite::main(a),
        Cmd::Soak(a) => soak::main(a),
        Cmd::Realpacks(a) => realpacks::main(a),
        Cmd::WheelCheck(a) => wheel_check::main(a),
    }
}
