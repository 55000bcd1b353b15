//! `cargo xtask soak`: the Python API under a long fault soak (issue 17).
//!
//! Runs `xtask/soak/soak.py` with `.venv/bin/python` (the installed wheel:
//! `scripts/build-wheel.sh`): `--calls` calls with every answer checked, `--crashes`
//! worker deaths of five kinds with every exception kept, `--cycles` whole-sandbox
//! load/stop cycles. Prints a table of throughput and leaks (fds, memfds, mappings,
//! processes, cgroups) and writes `target/bench/soak.json`; fails on any leak, wrong
//! answer or exception of an unexpected type.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

/// Arguments of `cargo xtask soak`.
#[derive(clap::Args)]
pub struct Args {
    /// Calls (a quarter sequential, the rest 64 in flight).
    #[arg(long, default_value_t = 100_000)]
    calls: u64,
    /// Worker crashes (exit, segfault, SIGKILL inside and outside, memory limit).
    #[arg(long, default_value_t = 200)]
    crashes: u64,
    /// Load / call / stop cycles of a whole sandbox.
    #[arg(long, default_value_t = 300)]
    cycles: u64,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repo")
        .to_path_buf()
}

/// Runs the soak and prints its table.
pub fn main(a: Args) -> anyhow::Result<()> {
    let repo = repo();
    let python = repo.join(".venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh and scripts/build-wheel.sh",
            python.display()
        );
    }
    let out = repo.join("target/bench/soak.json");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    let _ = std::fs::remove_file(&out);
    let status = Command::new(&python)
        .arg(repo.join("xtask/soak/soak.py"))
        .args(["--calls", &a.calls.to_string()])
        .args(["--crashes", &a.crashes.to_string()])
        .args(["--cycles", &a.cycles.to_string()])
        .arg("--out")
        .arg(&out)
        .current_dir(&repo)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .context("starting the soak driver")?;
    let report: Value = serde_json::from_slice(
        &std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?,
    )
    .context("parsing the soak report")?;
    print_table(&report);
    if !status.success() || report["ok"] != Value::Bool(true) {
        bail!("soak failed: {}", report["problems"]);
    }
    Ok(())
}

fn leak_text(p: &Value) -> String {
    match p["leaks"].as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k} +{v}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".into(),
    }
}

fn res_text(p: &Value, when: &str) -> String {
    let r = &p[when];
    format!(
        "{} fds, {} memfds, {} maps, {} procs, {} cgroups, {} MiB",
        r["fds"], r["memfds"], r["mappings"], r["processes"], r["cgroups"], r["rss_mb"]
    )
}

fn print_table(r: &Value) {
    let ph = &r["phases"];
    let calls = &ph["calls"];
    let crashes = &ph["crashes"];
    let churn = &ph["churn"];
    println!("\n| phase | volume | throughput | detail | leaks | host before → after |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| calls | {} calls, {} wrong | {} calls/s sequential, {} calls/s at 64 in flight | | {} | {} → {} |",
        calls["calls"],
        calls["mismatches"],
        calls["sequential_per_s"],
        calls["concurrent_64_per_s"],
        leak_text(calls),
        res_text(calls, "before"),
        res_text(calls, "after"),
    );
    println!(
        "| crashes | {} crashes, {} exceptions kept | {} crashes/s | recovery p50 {} ms, max {} ms; unexpected: {} | {} | {} → {} |",
        crashes["crashes"],
        crashes["kept_exceptions"],
        crashes["per_s"],
        crashes["recovery_ms_p50"],
        crashes["recovery_ms_max"],
        crashes["unexpected"].as_array().map_or(0, |v| v.len()),
        leak_text(crashes),
        res_text(crashes, "before"),
        res_text(crashes, "after"),
    );
    println!(
        "| churn | {} load/stop cycles | {} cycles/s | p50 {} ms, max {} ms | {} | {} → {} |",
        churn["cycles"],
        churn["per_s"],
        churn["cycle_ms_p50"],
        churn["cycle_ms_max"],
        leak_text(churn),
        res_text(churn, "before"),
        res_text(churn, "after"),
    );
    if let Some(p) = r["problems"].as_array() {
        for x in p {
            println!("problem: {x}");
        }
    }
}
