//! `cargo xtask pyisolate-suite --src DIR`: pyisolate 0.10.2's own tests against
//! nodecell's pyisolate layer (`nodecell.compat.pyisolate`).
//!
//! `DIR` is pyisolate's source tree (the PyPI sdist, == GitHub Comfy-Org/pyisolate
//! @333b8bc), kept outside the repository. The selection (tests that use only
//! pyisolate's public API, the behaviours applications reach through its
//! `_internal` names, and its integration tests through its test host) and the
//! reasons for what is left out live in `xtask/pyisolate_suite.py`, which runs
//! them in place with `.venv/bin/python` (the installed wheel; `--build-wheel`
//! runs `scripts/build-wheel.sh` first) and prints pass/fail per test, then the
//! rate per group. Exits non-zero when the public or the integration group passes
//! less than 95%. Writes `target/pyisolate-suite.json`.
//!
//! Not part of CI: the integration tests start real sandboxes (about two minutes).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Arguments of `cargo xtask pyisolate-suite`.
#[derive(clap::Args)]
pub struct Args {
    /// pyisolate 0.10.2's source tree (with `tests/` and `tests/harness/`).
    #[arg(long)]
    pub src: PathBuf,
    /// Rebuild and reinstall the nodecell wheel into .venv first (scripts/build-wheel.sh).
    #[arg(long)]
    pub build_wheel: bool,
    /// Only print the selection and the exclusions.
    #[arg(long)]
    pub list: bool,
    /// Per-test timeout in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs the suite; see the module documentation.
pub fn main(a: Args) -> anyhow::Result<()> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh and scripts/build-wheel.sh first",
            python.display()
        );
    }
    let src = a
        .src
        .canonicalize()
        .with_context(|| format!("--src {}", a.src.display()))?;
    if !a.list && !src.join("tests/harness/host.py").is_file() {
        bail!(
            "--src {}: not pyisolate's source tree (no tests/harness/host.py)",
            src.display()
        );
    }
    if a.build_wheel {
        let st = Command::new(root.join("scripts/build-wheel.sh"))
            .current_dir(&root)
            .status()
            .context("running scripts/build-wheel.sh")?;
        if !st.success() {
            bail!("scripts/build-wheel.sh failed ({st})");
        }
    }
    let probe = Command::new(&python)
        .args(["-c", "import pytest_asyncio, nodecell.compat"])
        .status()
        .context("running .venv/bin/python")?;
    if !probe.success() {
        bail!("pytest-asyncio or nodecell.compat is missing from .venv: run scripts/setup.sh and scripts/build-wheel.sh");
    }
    let out = root.join("target/pyisolate-suite.json");
    std::fs::create_dir_all(root.join("target"))?;
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("xtask/pyisolate_suite.py"))
        .arg("--src")
        .arg(&src)
        .arg("--timeout")
        .arg(a.timeout.to_string())
        .arg("--json")
        .arg(&out);
    if a.list {
        cmd.arg("--list");
    }
    let st = cmd.status().context("running xtask/pyisolate_suite.py")?;
    if !st.success() {
        bail!("pyisolate's suite: below 95% in the public or integration group (see above; {st})");
    }
    if !a.list {
        println!("wrote {}", out.display());
    }
    Ok(())
}
