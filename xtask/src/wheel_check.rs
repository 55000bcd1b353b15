//! `cargo xtask wheel-check`: the wheel checks too slow for `scripts/test.sh`.
//!
//! Runs the Python tests marked `xtask` (today
//! `tests/python/test_wheel.py::test_the_sdist_builds_the_same_wheel`: `maturin sdist`,
//! then `pip wheel` of the unpacked sdist, which compiles the extension and the
//! static launcher again, about 150 s on 2 cores, compared file by file with the
//! wheel in `target/wheels`). `scripts/test.sh` deselects them (`-m "not xtask"`)
//! and keeps their fast half: `test_the_sdist_holds_what_the_wheel_is_built_from`
//! (the sdist's metadata, Python sources, crates and lock file).

use std::process::Command;

use anyhow::{bail, Context};

/// Arguments of `cargo xtask wheel-check`.
#[derive(clap::Args)]
pub struct Args {
    /// Rebuild and reinstall the wheel first (scripts/build-wheel.sh); without it the
    /// newest wheel in target/wheels is checked.
    #[arg(long)]
    build_wheel: bool,
}

/// Runs the check; fails when any of its tests fails.
pub fn main(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    if args.build_wheel {
        let status = Command::new(root.join("scripts/build-wheel.sh"))
            .current_dir(&root)
            .status()
            .context("running scripts/build-wheel.sh")?;
        if !status.success() {
            bail!("scripts/build-wheel.sh failed ({status})");
        }
    }
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        bail!("{} is missing: run scripts/setup.sh", python.display());
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-m",
            "xtask",
            "--durations=5",
            "tests/python/test_wheel.py",
        ])
        .current_dir(&root)
        .status()
        .with_context(|| format!("running {} -m pytest", python.display()))?;
    if !status.success() {
        bail!("wheel-check failed ({status})");
    }
    Ok(())
}
