//! `cargo xtask bench py`: the Python API against pyisolate 0.10.2, in one run.
//!
//! Both sides run the same scenarios (issue 5, "Performance") through the same
//! extension code and the same empty pack, driven by `xtask/bench_py/bench.py`:
//!
//! * nodecell: `.venv/bin/python` (the wheel `scripts/build-wheel.sh` installs;
//!   `--build-wheel` runs that script first), sandbox `required`.
//! * pyisolate 0.10.2: a separate venv, `target/bench/venv` (uv, from
//!   `/usr/bin/python3.11`, the shared uv cache, torch and numpy pinned to
//!   `.venv`'s versions so they come from the cache as hardlinks), its bubblewrap
//!   sandbox on. Nothing is installed into `.venv`.
//!
//! Each side runs in its own process (one after the other, so they do not
//! compete for the 2 cores), writes its raw rows to `target/bench/py-<side>.raw.json`
//! after every scenario, and is killed (whole process group) past `--timeout`.
//! A scenario that fails on one side is recorded as `{"name":..,"error":..}`
//! and shown in the table; it does not stop the run.
//!
//! Writes `target/bench/py.json`: `{"rows":[{"name":"nodecell/noop_rtt",
//! "median_ns":..,"p90_ns":..,"min_ns":..,"samples":..}, {"name":
//! "pyisolate/worker_rss_mb","value":..,"unit":"MiB"}, {"name":..,"error":..}],
//! "goals":[{"goal":..,"status":"met"|"not met"|"unknown","detail":..}],
//! "meta":{..}}`, prints a table with nodecell vs pyisolate ratios and each goal
//! as met / not met.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Arguments of `cargo xtask bench py`.
#[derive(clap::Args)]
pub struct Args {
    /// Fewer iterations, and skip pyisolate's numpy_64MiB_rtt (about a minute per call).
    #[arg(long)]
    pub quick: bool,
    /// Rebuild and reinstall the nodecell wheel into .venv first (scripts/build-wheel.sh).
    #[arg(long)]
    pub build_wheel: bool,
    /// Run only these scenarios (comma-separated, e.g. `noop_rtt,torch_64MiB_rtt`).
    #[arg(long)]
    pub only: Option<String>,
    /// Which side(s) to run: both, nodecell or pyisolate.
    #[arg(long, default_value = "both", value_parser = ["both", "nodecell", "pyisolate"])]
    pub side: String,
    /// Time limit per side, in seconds; the side's process group is killed past it.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Also chart the results: target/bench/py.svg (`cargo xtask bench plot py` redraws it).
    #[arg(long)]
    pub plot: bool,
}

/// The scenarios, in table order.
pub(crate) const SCENARIOS: &[&str] = &[
    "noop_rtt",
    "echo_small_rtt",
    "numpy_1MiB_rtt",
    "numpy_64MiB_rtt",
    "torch_1MiB_rtt",
    "torch_64MiB_rtt",
    "torch_1GiB_rtt",
    "cold_start_shared_torch",
    "worker_rss_mb",
    "concurrent_noop_calls_per_s",
];

/// Extra rows and the pyisolate row each one is compared with.
pub(crate) const EXTRAS: &[(&str, &str)] = &[
    ("noop_sync_rtt", "noop_rtt"),
    (
        "concurrent_noop_sync_calls_per_s",
        "concurrent_noop_calls_per_s",
    ),
    ("torch_1MiB_sync_rtt", "torch_1MiB_rtt"),
    ("torch_64MiB_sync_rtt", "torch_64MiB_rtt"),
    ("torch_1GiB_sync_rtt", "torch_1GiB_rtt"),
    ("torch_1MiB_first_send", "torch_1MiB_first_send"),
    ("torch_64MiB_first_send", "torch_64MiB_first_send"),
    ("torch_1GiB_first_send", "torch_1GiB_first_send"),
    ("numpy_1MiB_arena_rtt", "numpy_1MiB_rtt"),
    ("numpy_64MiB_arena_rtt", "numpy_64MiB_rtt"),
    ("cold_start_no_prewarm", "cold_start_shared_torch"),
    ("prewarm", ""),
    ("worker_start_from_warm_zygote", ""),
    ("stop_extension", "stop_extension"),
    ("worker_pss_mb", "worker_pss_mb"),
    ("tree_pss_mb", "tree_pss_mb"),
    // Tensor rows of issue 10: fresh outputs of a node-like function, fresh sends.
    ("image_147KB_node_direct", "image_147KB_node_direct"),
    ("image_147KB_node_rtt", "image_147KB_node_rtt"),
    ("image_12MB_node_direct", "image_12MB_node_direct"),
    ("image_12MB_node_rtt", "image_12MB_node_rtt"),
    ("matmul_1024_node_direct", "matmul_1024_node_direct"),
    ("matmul_1024_node_rtt", "matmul_1024_node_rtt"),
    ("memcpy_64MiB", "memcpy_64MiB"),
    (
        "memcpy_64MiB_from_fresh_tensor",
        "memcpy_64MiB_from_fresh_tensor",
    ),
    ("torch_64MiB_fresh_send", "torch_64MiB_fresh_send"),
    ("torch_64MiB_fresh_out", "torch_64MiB_fresh_out"),
];

const PYISOLATE: &str = "pyisolate==0.10.2";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn uv_cache() -> PathBuf {
    std::env::var_os("UV_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/nodecell-dev/uv")
        })
}

/// Runs `cmd` to completion, failing with its stderr when it fails.
fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `{"torch": "2.15.0", "numpy": "2.4.6"}` as installed in `python`'s environment.
fn dist_versions(python: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let out = run_checked(
        Command::new(python).args([
            "-c",
            "import importlib.metadata as m, json, nodecell, torch, numpy; \
             print(json.dumps({k: m.version(k) for k in ('torch', 'numpy')}))",
        ]),
        &format!(
            "{} importing nodecell, torch and numpy (run scripts/setup.sh and scripts/build-wheel.sh)",
            python.display()
        ),
    )?;
    Ok(serde_json::from_str(out.trim())?)
}

/// Makes (or updates) `target/bench/venv` with pyisolate 0.10.2 and the host's torch and numpy.
fn bench_venv(
    repo: &Path,
    venv: &Path,
    versions: &BTreeMap<String, String>,
) -> anyhow::Result<PathBuf> {
    let uv = repo.join(".venv/bin/uv");
    let uv = if uv.exists() { uv } else { PathBuf::from("uv") };
    let base = Path::new("/usr/bin/python3.11");
    if !base.exists() {
        bail!("/usr/bin/python3.11 is missing (scripts/setup.sh installs it)");
    }
    let python = venv.join("bin/python");
    let uv_cmd = |args: &[&str]| {
        let mut c = Command::new(&uv);
        c.args(args)
            .env("UV_CACHE_DIR", uv_cache())
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env_remove("VIRTUAL_ENV");
        c
    };
    if !python.exists() {
        eprintln!("[bench py] creating {}", venv.display());
        let mut c = uv_cmd(&["venv", "--quiet", "--python"]);
        c.arg(base).arg(venv);
        run_checked(&mut c, "uv venv")?;
    }
    let pins: Vec<String> = ["torch", "numpy"]
        .iter()
        .filter_map(|k| versions.get(*k).map(|v| format!("{k}=={v}")))
        .collect();
    let t = Instant::now();
    let mut c = uv_cmd(&["pip", "install", "--quiet", "--python"]);
    c.arg(&python).arg(PYISOLATE).args(&pins);
    run_checked(&mut c, "uv pip install pyisolate (bench venv)")?;
    eprintln!(
        "[bench py] bench venv ready: {PYISOLATE} {} ({:.1} s)",
        pins.join(" "),
        t.elapsed().as_secs_f64()
    );
    if !venv.join("bin/uv").exists() {
        bail!(
            "pyisolate needs uv on PATH, and {} has none",
            venv.display()
        );
    }
    Ok(python)
}

/// How one side's driver ended.
struct SideRun {
    raw: Option<Value>,
    exit: String,
    seconds: f64,
}

/// Runs the driver for `side`, killing its process group after `limit`.
fn run_side(
    repo: &Path,
    side: &str,
    python: &Path,
    args: &Args,
    extra_path: Option<&Path>,
    limit: Duration,
) -> anyhow::Result<SideRun> {
    let out_dir = repo.join("target/bench");
    let raw_path = out_dir.join(format!("py-{side}.raw.json"));
    let _ = std::fs::remove_file(&raw_path);
    let mut cmd = Command::new(python);
    cmd.arg(repo.join("xtask/bench_py/bench.py"))
        .args(["--impl", side, "--out"])
        .arg(&raw_path)
        .arg("--work")
        .arg(out_dir.join("work"));
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(only) = &args.only {
        cmd.args(["--only", only]);
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let path = match extra_path {
        Some(p) => format!("{}:{path}", p.display()),
        None => path,
    };
    cmd.current_dir(repo)
        .env("PATH", path)
        .env("UV_CACHE_DIR", uv_cache())
        .env("PYISOLATE_UV_CACHE_DIR", uv_cache())
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .process_group(0);
    eprintln!("\n[bench py] === {side} ===");
    let t = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the {side} driver"))?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
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
    // Whatever the driver left behind in its group (workers, bwrap) goes too.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let raw = std::fs::read(&raw_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    Ok(SideRun {
        raw,
        exit,
        seconds: t.elapsed().as_secs_f64(),
    })
}

pub(crate) fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} us", ns / 1e3)
    }
}

/// One cell of the table: "131.2 us (p90 494.0 us)", "312 MiB", "error: ...", "-".
fn cell(row: Option<&Value>) -> String {
    let Some(r) = row else {
        return "not run".into();
    };
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        let e: String = e.chars().take(60).collect();
        return format!("error: {e}");
    }
    if let Some(v) = r.get("value").and_then(Value::as_f64) {
        let unit = r.get("unit").and_then(Value::as_str).unwrap_or("");
        return format!("{v:.0} {unit}");
    }
    match (
        r.get("median_ns").and_then(Value::as_f64),
        r.get("p90_ns").and_then(Value::as_f64),
    ) {
        (Some(m), Some(p)) => {
            let n = r.get("samples").and_then(Value::as_u64).unwrap_or(0);
            if n <= 1 {
                format!("{} (n=1)", fmt_ns(m))
            } else {
                format!("{} (p90 {})", fmt_ns(m), fmt_ns(p))
            }
        }
        _ => "?".into(),
    }
}

/// How much better nodecell is than pyisolate on this pair of rows (>1 = better):
/// time rows pyisolate/nodecell, calls/s nodecell/pyisolate, memory pyisolate/nodecell.
fn advantage(nc: Option<&Value>, pi: Option<&Value>) -> Option<f64> {
    let (nc, pi) = (nc?, pi?);
    if let (Some(a), Some(b)) = (
        nc.get("median_ns").and_then(Value::as_f64),
        pi.get("median_ns").and_then(Value::as_f64),
    ) {
        return (a > 0.0).then(|| b / a);
    }
    let (a, b) = (
        nc.get("value").and_then(Value::as_f64)?,
        pi.get("value").and_then(Value::as_f64)?,
    );
    let unit = nc.get("unit").and_then(Value::as_str).unwrap_or("");
    if unit.contains("/s") {
        (b > 0.0).then(|| a / b)
    } else {
        (a > 0.0).then(|| b / a)
    }
}

fn adv_text(a: Option<f64>) -> String {
    match a {
        None => "-".into(),
        Some(x) if x >= 1.0 => format!("{x:.1}x better"),
        Some(x) => format!("{:.1}x worse", 1.0 / x),
    }
}

fn median(row: Option<&Value>) -> Option<f64> {
    row?.get("median_ns").and_then(Value::as_f64)
}

fn value(row: Option<&Value>) -> Option<f64> {
    row?.get("value").and_then(Value::as_f64)
}

fn why_missing(row: Option<&Value>, name: &str) -> String {
    match row.and_then(|r| r.get("error")).and_then(Value::as_str) {
        Some(e) => format!("{name}: {e}"),
        None => format!("{name}: not measured"),
    }
}

/// Entry point.
pub fn main(args: Args) -> anyhow::Result<()> {
    let repo = repo();
    let out_dir = repo.join("target/bench");
    std::fs::create_dir_all(out_dir.join("work"))?;
    if args.build_wheel {
        eprintln!("[bench py] scripts/build-wheel.sh");
        run_checked(
            Command::new(repo.join("scripts/build-wheel.sh")).current_dir(&repo),
            "scripts/build-wheel.sh",
        )?;
    }
    let host_python = repo.join(".venv/bin/python");
    if !host_python.exists() {
        bail!("{} is missing: run scripts/setup.sh", host_python.display());
    }
    let versions = dist_versions(&host_python)?;
    let limit = Duration::from_secs(args.timeout);
    let mut sides: Vec<(&str, SideRun)> = Vec::new();
    if args.side == "both" || args.side == "nodecell" {
        let r = run_side(&repo, "nodecell", &host_python, &args, None, limit)?;
        sides.push(("nodecell", r));
    }
    if args.side == "both" || args.side == "pyisolate" {
        let venv = out_dir.join("venv");
        let r = match bench_venv(&repo, &venv, &versions) {
            Ok(py) => run_side(
                &repo,
                "pyisolate",
                &py,
                &args,
                Some(&venv.join("bin")),
                limit,
            )?,
            Err(e) => SideRun {
                raw: None,
                exit: format!("bench venv could not be made: {e:#}"),
                seconds: 0.0,
            },
        };
        sides.push(("pyisolate", r));
    }

    // Merge the rows; scenarios a side never reached get an error row.
    let only: Option<Vec<&str>> = args.only.as_deref().map(|s| s.split(',').collect());
    let mut rows: Vec<Value> = Vec::new();
    let mut meta = serde_json::Map::new();
    for (side, run) in &sides {
        let mut side_rows: Vec<Value> = run
            .raw
            .as_ref()
            .and_then(|r| r.get("rows"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for sc in SCENARIOS {
            if only.as_ref().is_some_and(|o| !o.contains(sc)) {
                continue;
            }
            let name = format!("{side}/{sc}");
            if !side_rows.iter().any(|r| r["name"] == name.as_str()) {
                side_rows
                    .push(json!({"name": name, "error": format!("not measured: {}", run.exit)}));
            }
        }
        rows.extend(side_rows);
        let mut m = run
            .raw
            .as_ref()
            .and_then(|r| r.get("meta"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        m["exit"] = json!(run.exit);
        m["seconds"] = json!((run.seconds * 10.0).round() / 10.0);
        meta.insert(side.to_string(), m);
    }
    meta.insert("quick".into(), json!(args.quick));
    meta.insert("host_versions".into(), json!(versions));
    let find = |name: String| rows.iter().find(|r| r["name"] == name.as_str());

    // The table.
    println!(
        "\ncargo xtask bench py: nodecell vs {PYISOLATE} (same scenarios, same extension code){}",
        if args.quick { " [--quick]" } else { "" }
    );
    println!("\"better\": faster, more calls/s or less memory; time cells are medians (p90).");
    for (side, run) in &sides {
        let la = |k: &str| {
            run.raw
                .as_ref()
                .and_then(|r| r["meta"].get(k))
                .map(Value::to_string)
                .unwrap_or_else(|| "?".into())
        };
        println!(
            "{side}: {:.0} s, load average at start {} / end {} ({} CPUs){}",
            run.seconds,
            la("loadavg_start"),
            la("loadavg_end"),
            la("cpus"),
            if run.exit == "ok" {
                String::new()
            } else {
                format!(", {}", run.exit)
            }
        );
    }
    println!();
    let label_width = EXTRAS
        .iter()
        .map(|(nc, _)| nc.len())
        .chain(SCENARIOS.iter().map(|s| s.len()))
        .max()
        .unwrap_or(30);
    let w = [label_width, 26, 26, 14];
    println!(
        "{:<a$} {:>b$} {:>c$} {:>d$}",
        "scenario",
        "nodecell",
        "pyisolate",
        "nodecell vs",
        a = w[0],
        b = w[1],
        c = w[2],
        d = w[3]
    );
    let line = |sc: &str, nc: Option<&Value>, pi: Option<&Value>| {
        println!(
            "{:<a$} {:>b$} {:>c$} {:>d$}",
            sc,
            cell(nc),
            cell(pi),
            adv_text(advantage(nc, pi)),
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3]
        );
    };
    for sc in SCENARIOS {
        if only.as_ref().is_some_and(|o| !o.contains(sc)) {
            continue;
        }
        line(
            sc,
            find(format!("nodecell/{sc}")),
            find(format!("pyisolate/{sc}")),
        );
    }
    let extras: Vec<_> = EXTRAS
        .iter()
        .filter(|(nc, pi)| {
            find(format!("nodecell/{nc}")).is_some()
                || (!pi.is_empty() && nc == pi && find(format!("pyisolate/{pi}")).is_some())
        })
        .collect();
    if !extras.is_empty() {
        println!(
            "\nextra rows (a `*_sync_*`, `*_arena_*` or `cold_start_no_prewarm` row of nodecell is \
             compared with pyisolate's plain scenario row):"
        );
        for (nc, pi) in extras {
            let pi_row = (!pi.is_empty())
                .then(|| find(format!("pyisolate/{pi}")))
                .flatten();
            line(nc, find(format!("nodecell/{nc}")), pi_row);
        }
    }
    let notes: Vec<(String, String)> = rows
        .iter()
        .filter_map(|r| {
            let n = r.get("note")?.as_str()?;
            Some((r["name"].as_str()?.to_string(), n.to_string()))
        })
        .filter(|(name, _)| {
            SCENARIOS.iter().any(|s| name.ends_with(&format!("/{s}")))
                || name.ends_with("worker_start_from_warm_zygote")
        })
        .collect();
    if !notes.is_empty() {
        println!("\nwhat was measured:");
        for (name, n) in notes {
            println!("  {name}: {n}");
        }
    }
    let errors: Vec<_> = rows
        .iter()
        .filter_map(|r| Some((r["name"].as_str()?, r.get("error")?.as_str()?)))
        .collect();
    if !errors.is_empty() {
        println!("\nerrors:");
        for (name, e) in errors {
            println!("  {name}: {e}");
        }
    }

    // The goals.
    let mut goals: Vec<Value> = Vec::new();
    let mut goal = |text: &str, status: Option<bool>, detail: String| {
        let s = match status {
            Some(true) => "met",
            Some(false) => "not met",
            None => "unknown",
        };
        goals.push(json!({"goal": text, "status": s, "detail": detail}));
    };
    for sc in ["noop_rtt", "torch_64MiB_rtt"] {
        let nc = find(format!("nodecell/{sc}"));
        let pi = find(format!("pyisolate/{sc}"));
        let text = format!("{sc} at least 20x faster than pyisolate");
        let sync_name = sc.replace("_rtt", "_sync_rtt");
        let sync = advantage(find(format!("nodecell/{sync_name}")), pi)
            .map(|a| format!("; with a plain `def` method ({sync_name}): {a:.1}x"))
            .unwrap_or_default();
        match (median(nc), median(pi)) {
            (Some(a), Some(b)) => goal(
                &text,
                Some(b / a >= 20.0),
                format!(
                    "{:.1}x ({} vs {}, same `async def` method on both sides){sync}",
                    b / a,
                    fmt_ns(a),
                    fmt_ns(b)
                ),
            ),
            _ => goal(
                &text,
                None,
                format!(
                    "{}; {}",
                    why_missing(nc, "nodecell"),
                    why_missing(pi, "pyisolate")
                ),
            ),
        }
    }
    {
        let big = find("nodecell/torch_1GiB_rtt".into());
        let small = find("nodecell/torch_1MiB_rtt".into());
        let text = "nodecell torch_1GiB_rtt within 2x of torch_1MiB_rtt";
        match (median(big), median(small)) {
            (Some(a), Some(b)) => goal(
                text,
                Some(a <= 2.0 * b),
                format!("{:.2}x ({} vs {})", a / b, fmt_ns(a), fmt_ns(b)),
            ),
            _ => goal(
                text,
                None,
                format!(
                    "{}; {}",
                    why_missing(big, "1GiB"),
                    why_missing(small, "1MiB")
                ),
            ),
        }
    }
    {
        let nc = find("nodecell/cold_start_shared_torch".into());
        let what = meta
            .get("nodecell")
            .and_then(|m| m.get("cold_start_measured"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let text = "nodecell cold_start_shared_torch under 100 ms with a warm zygote";
        match median(nc) {
            Some(a) => goal(
                text,
                Some(a < 100e6),
                format!("{} (measured: {what})", fmt_ns(a)),
            ),
            None => goal(text, None, why_missing(nc, "nodecell")),
        }
    }
    {
        let nc = find("nodecell/worker_rss_mb".into());
        let pi = find("pyisolate/worker_rss_mb".into());
        let text = "nodecell worker_rss_mb no higher than pyisolate's";
        match (value(nc), value(pi)) {
            (Some(a), Some(b)) => goal(text, Some(a <= b), format!("{a:.0} MiB vs {b:.0} MiB")),
            _ => goal(
                text,
                None,
                format!(
                    "{}; {}",
                    why_missing(nc, "nodecell"),
                    why_missing(pi, "pyisolate")
                ),
            ),
        }
    }
    tensor_goals(&find, &mut goal);
    println!("\ngoals (issues 5, 10, 13):");
    for g in &goals {
        println!(
            "  [{}] {}: {}",
            g["status"].as_str().unwrap_or("?"),
            g["goal"].as_str().unwrap_or("?"),
            g["detail"].as_str().unwrap_or("")
        );
    }
    for (side, run) in &sides {
        if run.exit != "ok" {
            println!("  note: {side} side: {}", run.exit);
        }
        let meta = run.raw.as_ref().map(|r| &r["meta"]);
        let load = meta
            .and_then(|m| m["loadavg_start"].get(0))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let cpus = meta
            .and_then(|m| m["cpus"].as_f64())
            .unwrap_or(1.0)
            .max(1.0);
        if load > 0.75 * cpus {
            println!(
                "  note: the machine was busy when the {side} side started (load average {load:.1} on \
                 {cpus:.0} CPUs): its timings are inflated and noisy; rerun on a quiet machine"
            );
        }
    }

    let json = json!({"rows": rows, "goals": goals, "meta": meta});
    let path = out_dir.join("py.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", path.display());
    if args.plot {
        crate::bench_plot::plot_file("py", &path, &path.with_file_name("py.svg"))?;
    }
    Ok(())
}

/// The tensor goals of issues 10 and 13.
fn tensor_goals<'a>(
    find: &impl Fn(String) -> Option<&'a Value>,
    goal: &mut impl FnMut(&str, Option<bool>, String),
) {
    let missing = |a: Option<&Value>, an: &str, b: Option<&Value>, bn: &str| {
        format!("{}; {}", why_missing(a, an), why_missing(b, bn))
    };
    for label in ["147KB", "12MB"] {
        let iso = find(format!("nodecell/image_{label}_node_rtt"));
        let dir = find(format!("nodecell/image_{label}_node_direct"));
        let text =
            format!("image_{label}_node_rtt within 2x of the direct call + 0.1 ms (issue 10)");
        match (median(iso), median(dir)) {
            (Some(i), Some(d)) => goal(
                &text,
                Some(i <= 2.0 * d + 0.1e6),
                format!(
                    "{} isolated vs {} direct: limit {}",
                    fmt_ns(i),
                    fmt_ns(d),
                    fmt_ns(2.0 * d + 0.1e6)
                ),
            ),
            _ => goal(&text, None, missing(iso, "isolated", dir, "direct")),
        }
    }
    let memcpy = find("nodecell/memcpy_64MiB".into());
    for sc in [
        "torch_64MiB_fresh_send",
        "torch_64MiB_fresh_out",
        "numpy_64MiB_rtt",
    ] {
        let nc = find(format!("nodecell/{sc}"));
        let text = format!("{sc} at most 1.5x one memcpy of 64 MiB (issue 10)");
        match (median(nc), median(memcpy)) {
            (Some(a), Some(m)) => goal(
                &text,
                Some(a <= 1.5 * m),
                format!("{:.2}x ({} vs memcpy {})", a / m, fmt_ns(a), fmt_ns(m)),
            ),
            _ => goal(&text, None, missing(nc, "nodecell", memcpy, "memcpy")),
        }
    }
    for sc in ["torch_64MiB_fresh_send", "torch_64MiB_fresh_out"] {
        let nc = find(format!("nodecell/{sc}"));
        let pi = find(format!("pyisolate/{sc}"));
        let text = format!("{sc} at least 3x faster than pyisolate's first send (issue 10)");
        match (median(nc), median(pi)) {
            (Some(a), Some(b)) => goal(
                &text,
                Some(b / a >= 3.0),
                format!("{:.1}x ({} vs {})", b / a, fmt_ns(a), fmt_ns(b)),
            ),
            _ => goal(&text, None, missing(nc, "nodecell", pi, "pyisolate")),
        }
    }
    // Issue 13's call goals (the 20x rows above are issue 5's).
    {
        let nc = find("nodecell/noop_rtt".into());
        let pi = find("pyisolate/noop_rtt".into());
        let text = "noop_rtt (`async def`) at least 50x faster than pyisolate (issue 13)";
        match (median(nc), median(pi)) {
            (Some(a), Some(b)) => goal(
                text,
                Some(b / a >= 50.0),
                format!("{:.1}x ({} vs {})", b / a, fmt_ns(a), fmt_ns(b)),
            ),
            _ => goal(text, None, missing(nc, "nodecell", pi, "pyisolate")),
        }
        let sync = find("nodecell/noop_sync_rtt".into());
        let text = "noop_rtt (`async def`) within 1.5x of noop_sync_rtt (`def`) (issue 13)";
        match (median(nc), median(sync)) {
            (Some(a), Some(d)) => goal(
                text,
                Some(a <= 1.5 * d),
                format!("{:.2}x ({} vs {})", a / d, fmt_ns(a), fmt_ns(d)),
            ),
            _ => goal(text, None, missing(nc, "async", sync, "def")),
        }
        let sc = "concurrent_noop_calls_per_s";
        let (nc, pi) = (
            find(format!("nodecell/{sc}")),
            find(format!("pyisolate/{sc}")),
        );
        let text = "concurrent_noop_calls_per_s (8 in flight) at least 20x pyisolate's (issue 13)";
        match (value(nc), value(pi)) {
            (Some(a), Some(b)) if b > 0.0 => goal(
                text,
                Some(a / b >= 20.0),
                format!("{:.1}x ({a:.0} vs {b:.0} calls/s)", a / b),
            ),
            _ => goal(text, None, missing(nc, "nodecell", pi, "pyisolate")),
        }
    }
    for size in ["1MiB", "64MiB", "1GiB"] {
        let sc = format!("torch_{size}_rtt");
        let nc = find(format!("nodecell/{sc}"));
        let pi = find(format!("pyisolate/{sc}"));
        let text = format!("{sc} (already shared) at least 50x faster than pyisolate (issue 13)");
        match (median(nc), median(pi)) {
            (Some(a), Some(b)) => goal(
                &text,
                Some(b / a >= 50.0),
                format!("{:.1}x ({} vs {})", b / a, fmt_ns(a), fmt_ns(b)),
            ),
            _ => goal(&text, None, missing(nc, "nodecell", pi, "pyisolate")),
        }
    }
}
