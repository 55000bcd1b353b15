//! `cargo xtask bench ray`: cells on a Ray cluster, in one run.
//!
//! `xtask/bench_ray/bench.py` (the repo's `.venv`, with the installed wheel and
//! Ray) starts a local cluster of two raylets (the head, where the driver runs,
//! and `w1`) and measures noop and 64 MiB numpy / torch round trips three ways:
//!
//! * a local cell (`backend="local"`): the zero-copy arena path;
//! * a cell placed on raylet `w1` (`backend="ray"`): a Ray actor call plus the
//!   cell's local channel there, tensors through Ray's object store;
//! * a plain Ray actor on `w1` with the same methods: Ray alone, no sandbox.
//!
//! The driver runs in its own process group, killed past `--timeout`; it writes
//! its rows to `target/bench/ray.raw.json` after each one. This command merges
//! them into `target/bench/ray.json` (`{"rows": [{"scenario", "side",
//! "median_ns", "p90_ns", "min_ns", "samples"} | {.., "error"}], "meta": {..}}`)
//! and prints the table, with what the cell adds over the plain actor call.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Arguments of `cargo xtask bench ray`.
#[derive(clap::Args)]
pub struct Args {
    /// Fewer iterations.
    #[arg(long)]
    pub quick: bool,
    /// Run only these scenarios (comma-separated: noop, numpy_64MiB, torch_64MiB).
    #[arg(long)]
    pub only: Option<String>,
    /// Time limit in seconds; the driver's process group is killed past it.
    #[arg(long, default_value_t = 1200)]
    pub timeout: u64,
}

const SCENARIOS: &[(&str, &str)] = &[
    ("noop", "noop round trip"),
    ("numpy_64MiB", "numpy 64 MiB echo"),
    ("torch_64MiB", "torch 64 MiB echo"),
];
const SIDES: &[(&str, &str)] = &[
    ("local", "local cell"),
    ("remote", "cell on raylet w1"),
    ("plain", "plain Ray actor on w1"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} us", ns / 1e3)
    }
}

fn find<'a>(rows: &'a [Value], scenario: &str, side: &str) -> Option<&'a Value> {
    rows.iter().find(|r| {
        r.get("scenario").and_then(Value::as_str) == Some(scenario)
            && r.get("side").and_then(Value::as_str) == Some(side)
    })
}

fn median(r: Option<&Value>) -> Option<f64> {
    r?.get("median_ns").and_then(Value::as_f64)
}

fn cell(r: Option<&Value>) -> String {
    let Some(r) = r else {
        return "not run".into();
    };
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        let e: String = e.chars().take(50).collect();
        return format!("error: {e}");
    }
    match (median(Some(r)), r.get("p90_ns").and_then(Value::as_f64)) {
        (Some(m), Some(p)) => format!("{} (p90 {})", fmt_ns(m), fmt_ns(p)),
        _ => "?".into(),
    }
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
    let raw_path = out_dir.join("ray.raw.json");
    let _ = std::fs::remove_file(&raw_path);
    let mut cmd = Command::new(&python);
    cmd.arg(repo.join("xtask/bench_ray/bench.py"))
        .arg("--out")
        .arg(&raw_path);
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(only) = &args.only {
        cmd.args(["--only", only]);
    }
    cmd.current_dir(&repo)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .process_group(0);
    let t = Instant::now();
    let mut child = cmd.spawn().context("starting the bench ray driver")?;
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
    // Ray's own processes (GCS, raylets, workers) were started in the driver's group.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let raw: Value = std::fs::read(&raw_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({"rows": [], "meta": {}}));
    let rows: Vec<Value> = raw
        .get("rows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut meta = raw.get("meta").cloned().unwrap_or_else(|| json!({}));
    meta["driver"] = json!(exit);
    meta["seconds"] = json!(t.elapsed().as_secs_f64());
    let out = json!({"rows": rows, "meta": meta});
    let out_path = out_dir.join("ray.json");
    std::fs::write(&out_path, serde_json::to_vec_pretty(&out)?)?;

    println!(
        "\nbench ray: Ray {} (two raylets on this machine), medians of round trips\n",
        meta.get("ray").and_then(Value::as_str).unwrap_or("?")
    );
    let mut header = vec!["scenario".to_string()];
    header.extend(SIDES.iter().map(|(_, h)| h.to_string()));
    header.push("cell on w1 vs plain Ray".into());
    let mut table = vec![header];
    for (sc, label) in SCENARIOS {
        let mut line = vec![label.to_string()];
        for (side, _) in SIDES {
            line.push(cell(find(&rows, sc, side)));
        }
        let cmp = match (
            median(find(&rows, sc, "remote")),
            median(find(&rows, sc, "plain")),
        ) {
            (Some(r), Some(p)) if p > 0.0 => {
                let sign = if r >= p { "+" } else { "-" };
                format!("{:.2}x ({sign}{})", r / p, fmt_ns((r - p).abs()))
            }
            _ => "-".into(),
        };
        line.push(cmp);
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for (n, r) in table.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", cells.join(" | "));
        if n == 0 {
            let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", sep.join("-|-"));
        }
    }
    println!(
        "\ndriver: {exit} in {:.0} s; wrote {}",
        t.elapsed().as_secs_f64(),
        out_path.display()
    );
    if exit != "ok" {
        bail!("the bench ray driver did not finish: {exit}");
    }
    Ok(())
}
