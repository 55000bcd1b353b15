//! `cargo xtask bench launch`: what a sandbox costs to start.
//!
//! Measures, in one run and interleaved (so drift and noise from other load
//! hit every row alike), the median and p90 wall time from fork to reaped
//! exit of:
//!
//! * plain fork+exec of `/bin/true` (the baseline),
//! * `nodecell run -- /bin/true` (release build, default policy),
//! * `bwrap --unshare-all --die-with-parent --ro-bind /usr /usr ... /bin/true`,
//! * `nodecell run --memory 256M --pids 64 -- /bin/true` (with cgroups; informative),
//! * with `--static`, the same `nodecell run` built as a static-pie binary
//!   (`-C target-feature=+crt-static`): on this VM most of nodecell's
//!   distance to bwrap is the dynamic loader and libgcc_s start-up.
//!
//! Goals (reported, never asserted): nodecell within 3 ms of fork+exec and
//! no slower than bwrap. Prints a table and writes `target/bench/launch.json`
//! as `{"rows":[{"name":..., "median_ns":..., "p90_ns":...}]}`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Arguments of `cargo xtask bench launch`.
#[derive(clap::Args)]
pub struct Args {
    /// Launches per row.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Warm-up launches per row (not measured).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The nodecell binary (default: build and use target/release/nodecell).
    #[arg(long)]
    nodecell: Option<PathBuf>,
    /// Also build a static-pie nodecell (`-C target-feature=+crt-static`,
    /// into target/static) and add it as a row: what a static release build
    /// would gain (no dynamic loader, no libgcc_s start-up).
    #[arg(long = "static")]
    with_static: bool,
}

#[derive(Serialize)]
struct Row {
    name: String,
    median_ns: u64,
    p90_ns: u64,
}

#[derive(Serialize)]
struct Report {
    rows: Vec<Row>,
}

/// Entry point.
pub fn main(args: Args) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let nodecell = match args.nodecell {
        Some(p) => p,
        None => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args([
                    "build",
                    "-q",
                    "--release",
                    "-p",
                    "nodecell",
                    "--bin",
                    "nodecell",
                ])
                .current_dir(&root)
                .status()
                .context("cargo build --release")?;
            if !st.success() {
                bail!("cargo build --release -p nodecell failed");
            }
            target.join("release/nodecell")
        }
    };
    let static_bin = if args.with_static {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let dir = target.join("static");
        let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let st = Command::new(cargo)
            .args([
                "build",
                "-q",
                "--release",
                "-p",
                "nodecell",
                "--bin",
                "nodecell",
                "--target",
                &triple,
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &dir)
            .current_dir(&root)
            .status()
            .context("cargo build (static)")?;
        if !st.success() {
            bail!("the static build failed");
        }
        Some(dir.join(triple).join("release/nodecell"))
    } else {
        None
    };
    let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("bwrap not found: install Debian's bubblewrap (scripts/setup.sh does)")?;
    let n = nodecell.display().to_string();
    let b = bwrap.display().to_string();
    let mut bwrap_argv: Vec<String> = vec![
        b,
        "--unshare-all".into(),
        "--die-with-parent".into(),
        "--ro-bind".into(),
        "/usr".into(),
        "/usr".into(),
    ];
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        if std::fs::symlink_metadata(link)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            bwrap_argv.extend(["--symlink".into(), target.into(), link.into()]);
        } else if Path::new(link).exists() {
            bwrap_argv.extend(["--ro-bind".into(), link.into(), link.into()]);
        }
    }
    bwrap_argv.extend([
        "--proc".into(),
        "/proc".into(),
        "--dev".into(),
        "/dev".into(),
        "/bin/true".into(),
    ]);

    let mut cases: Vec<(&str, Vec<String>)> = vec![
        ("fork+exec /bin/true", vec!["/bin/true".into()]),
        (
            "nodecell run -- /bin/true",
            vec![n.clone(), "run".into(), "--".into(), "/bin/true".into()],
        ),
        ("bwrap --unshare-all ... /bin/true", bwrap_argv),
        (
            "nodecell run --memory --pids (cgroups)",
            vec![
                n,
                "run".into(),
                "--memory".into(),
                "256M".into(),
                "--pids".into(),
                "64".into(),
                "--".into(),
                "/bin/true".into(),
            ],
        ),
    ];
    if let Some(s) = &static_bin {
        cases.push((
            "nodecell run -- /bin/true (static build)",
            vec![
                s.display().to_string(),
                "run".into(),
                "--".into(),
                "/bin/true".into(),
            ],
        ));
    }
    let prepared: Vec<(String, Vec<CString>)> = cases
        .into_iter()
        .map(|(name, argv)| {
            (
                name.to_string(),
                argv.into_iter().map(|a| CString::new(a).unwrap()).collect(),
            )
        })
        .collect();

    // Each must work before it is timed.
    for (name, argv) in &prepared {
        let code = spawn_wait(argv)?;
        if code != 0 {
            bail!("{name}: exited with {code}");
        }
    }
    for _ in 0..args.warmup {
        for (_, argv) in &prepared {
            spawn_wait(argv)?;
        }
    }
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(args.iterations); prepared.len()];
    for _ in 0..args.iterations {
        for (i, (_, argv)) in prepared.iter().enumerate() {
            let t = Instant::now();
            spawn_wait(argv)?;
            samples[i].push(t.elapsed().as_nanos() as u64);
        }
    }
    let rows: Vec<Row> = prepared
        .iter()
        .zip(samples.iter_mut())
        .map(|((name, _), s)| {
            s.sort_unstable();
            Row {
                name: name.clone(),
                median_ns: percentile(s, 0.5),
                p90_ns: percentile(s, 0.9),
            }
        })
        .collect();

    let base = rows[0].median_ns as f64;
    println!("launch cost, {} runs per row, interleaved", args.iterations);
    println!(
        "{:<40} {:>10} {:>10} {:>12} {:>8}",
        "ROW", "MEDIAN", "P90", "VS FORK+EXEC", "RATIO"
    );
    for r in &rows {
        println!(
            "{:<40} {:>8.2}ms {:>8.2}ms {:>+10.2}ms {:>7.2}x",
            r.name,
            r.median_ns as f64 / 1e6,
            r.p90_ns as f64 / 1e6,
            (r.median_ns as f64 - base) / 1e6,
            r.median_ns as f64 / base
        );
    }
    let delta = (rows[1].median_ns as f64 - base) / 1e6;
    let vs_bwrap = rows[1].median_ns as f64 / rows[2].median_ns as f64;
    println!();
    println!(
        "goal: nodecell within 3 ms of fork+exec: {:+.2} ms -> {}",
        delta,
        if delta <= 3.0 { "met" } else { "NOT met" }
    );
    println!(
        "goal: nodecell no slower than bwrap: {:.2}x bwrap -> {}",
        vs_bwrap,
        if vs_bwrap <= 1.0 { "met" } else { "NOT met" }
    );

    if let Some(r) = rows.iter().find(|r| r.name.contains("static build")) {
        println!(
            "static build: {:+.2} ms over fork+exec, {:.2}x bwrap",
            (r.median_ns as f64 - base) / 1e6,
            r.median_ns as f64 / rows[2].median_ns as f64
        );
    }

    let dir = target.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("launch.json");
    std::fs::write(&path, serde_json::to_string_pretty(&Report { rows })?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// fork + execv + waitpid; returns the exit code. stdout/stderr inherited.
fn spawn_wait(argv: &[CString]) -> Result<i32> {
    let ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    // SAFETY: this task is single-threaded; the child only calls execv and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: `ptrs` is a NULL-terminated array of valid strings.
        unsafe {
            libc::execv(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}
