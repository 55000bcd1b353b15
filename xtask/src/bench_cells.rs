//! `cargo xtask bench cells`: how fast a pack of a host app is ready, and what an extra worker costs.
//!
//! `xtask/bench_cells/bench.py` (the repo's `.venv`, with the installed wheel) runs the
//! stand-in app (tests/fixtures/studio_app) with several packs, three ways in one run: the
//! app's own loader in process (the baseline), one cell per pack (today's path) and app
//! cells (`StudioHost(app_cell=True)`: packs forked from one zygote that imported torch and
//! the app, started in the background when the host is made). Rows: cold start (a fresh
//! interpreter importing torch + the app / the app cell's start), first pack ready,
//! later packs ready (median), warm reload (`ext.restart()`, median), and USS/PSS of
//! one pack's worker. It writes
//! `target/bench/cells.json` and prints the table. The driver runs in its own process
//! group, killed past `--timeout`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Arguments of `cargo xtask bench cells`.
#[derive(clap::Args)]
pub struct Args {
    /// Copies of the stand-in app's two packs (2 x copies packs in the app cell).
    #[arg(long, default_value_t = 3)]
    pub copies: u32,
    /// Packs loaded the one-cell-per-pack way (the comparison).
    #[arg(long, default_value_t = 3)]
    pub own: u32,
    /// Warm reloads timed per way.
    #[arg(long, default_value_t = 5)]
    pub reloads: u32,
    /// Time limit in seconds; the driver's process group is killed past it.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Entry point.
pub fn main(args: Args) -> anyhow::Result<()> {
    let repo = repo();
    let out_dir = repo.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let python = repo.join(".venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh and scripts/build-wheel.sh",
            python.display()
        );
    }
    let out_path = out_dir.join("cells.json");
    let _ = std::fs::remove_file(&out_path);
    let mut cmd = Command::new(&python);
    cmd.arg(repo.join("xtask/bench_cells/bench.py"))
        .arg("--out")
        .arg(&out_path)
        .args(["--copies", &args.copies.to_string()])
        .args(["--own", &args.own.to_string()])
        .args(["--reloads", &args.reloads.to_string()])
        .current_dir(&repo)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .process_group(0);
    let t = Instant::now();
    let mut child = cmd.spawn().context("starting the bench cells driver")?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let limit = Duration::from_secs(args.timeout);
    let exit = loop {
        if let Some(st) = child.try_wait()? {
            break if st.success() {
                "ok".to_string()
            } else {
                format!("driver exited with {st}")
            };
        }
        if t.elapsed() > limit {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break format!("driver killed after the {} s limit", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "\ndriver: {exit} in {:.0} s; wrote {}",
        t.elapsed().as_secs_f64(),
        out_path.display()
    );
    if exit != "ok" {
        bail!("the bench cells driver did not finish: {exit}");
    }
    Ok(())
}
