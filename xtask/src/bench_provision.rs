//! `cargo xtask bench provision`: venv provisioning against uv by hand.
//!
//! Rows (all with a warm uv cache, so downloads do not count):
//!
//! * `uv_by_hand` (baseline): `uv venv --python PY DIR` + `uv pip install
//!   --python DIR/bin/python PKG`, as a person would type them.
//! * `provision_first`: `Provisioner::provision` of a pack that needs PKG
//!   when its venv is not cached yet (lock, key, uv venv, uv pip install,
//!   record, atomic rename).
//! * `provision_cache_hit`: a new `Provisioner` + `provision_dir` of the same
//!   pack once its venv exists (manifest parse, key, lock, lookup).
//! * `cli_cache_hit`: `nodecell provision PACK` as a process, cache hit (the
//!   newest of `target/{release,debug}/nodecell`, when one is built).
//!
//! Goals (issue 4): cache hit <= 100 ms; first provision within 1.2x of uv
//! by hand. Writes `target/bench/provision.json`:
//! `{"rows":[{"name":..,"median_ns":..,"p90_ns":..}]}`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nodecell_provision::{NoEvents, Options, Pack, Provisioner};

/// Arguments of `cargo xtask bench provision`.
#[derive(clap::Args)]
pub struct Args {
    /// Iterations of the building rows (uv by hand, first provision).
    #[arg(long, default_value_t = 10)]
    pub iterations: usize,
    /// Iterations of the cache-hit rows.
    #[arg(long, default_value_t = 50)]
    pub hits: usize,
    /// The requirement the pack installs.
    #[arg(long, default_value = "numpy==1.26.4")]
    pub package: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

struct Row {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Row {
    fn pct(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        if s.is_empty() {
            return Duration::ZERO;
        }
        let i = ((s.len() - 1) as f64 * p).round() as usize;
        s[i.min(s.len() - 1)]
    }
    fn median(&self) -> Duration {
        self.pct(0.5)
    }
    fn p90(&self) -> Duration {
        self.pct(0.9)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Entry point.
pub fn main(args: Args) -> anyhow::Result<()> {
    let repo = repo();
    let venv_bin = repo.join(".venv/bin");
    let python = if venv_bin.join("python").exists() {
        venv_bin.join("python")
    } else {
        PathBuf::from("/usr/bin/python3")
    };
    let uv = if venv_bin.join("uv").exists() {
        venv_bin.join("uv")
    } else {
        PathBuf::from("uv")
    };
    let uv_cache = std::env::var_os("UV_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/nodecell-dev/uv")
        });
    let work =
        std::env::temp_dir().join(format!("nodecell-bench-provision-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run(&args, &work, &python, &uv, &uv_cache);
    let _ = std::fs::remove_dir_all(&work);
    let rows = result?;

    let base = rows
        .iter()
        .find(|r| r.name == "uv_by_hand")
        .map(Row::median)
        .unwrap_or(Duration::ZERO);
    println!(
        "\nprovisioning {} (warm uv cache), python {}",
        args.package,
        python.display()
    );
    println!(
        "{:<22} {:>12} {:>12} {:>10}",
        "row", "median", "p90", "vs uv"
    );
    for r in &rows {
        let ratio = if base.is_zero() {
            0.0
        } else {
            r.median().as_secs_f64() / base.as_secs_f64()
        };
        println!(
            "{:<22} {:>12} {:>12} {:>9.2}x",
            r.name,
            ms(r.median()),
            ms(r.p90()),
            ratio
        );
    }
    let first = rows
        .iter()
        .find(|r| r.name == "provision_first")
        .map(Row::median)
        .unwrap_or_default();
    let hit = rows
        .iter()
        .find(|r| r.name == "provision_cache_hit")
        .map(Row::median)
        .unwrap_or_default();
    let ratio = first.as_secs_f64() / base.as_secs_f64().max(1e-9);
    println!(
        "goals: cache hit <= 100 ms: {} ({}); first provision <= 1.2x uv by hand: {} ({ratio:.2}x)",
        if hit <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        },
        ms(hit),
        if ratio <= 1.2 { "met" } else { "NOT met" },
    );

    let out_dir = repo.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let json = serde_json::json!({
        "rows": rows.iter().map(|r| serde_json::json!({
            "name": r.name,
            "median_ns": r.median().as_nanos() as u64,
            "p90_ns": r.p90().as_nanos() as u64,
        })).collect::<Vec<_>>(),
    });
    let path = out_dir.join("provision.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn run(
    args: &Args,
    work: &Path,
    python: &Path,
    uv: &Path,
    uv_cache: &Path,
) -> anyhow::Result<Vec<Row>> {
    let pack = work.join("pack");
    std::fs::create_dir_all(&pack)?;
    std::fs::write(
        pack.join("manifest.yaml"),
        format!("name: bench\ndependencies:\n  - {}\n", args.package),
    )?;
    let root = work.join("root");
    let opts = Options {
        root: Some(root.clone()),
        host_python: Some(python.to_path_buf()),
        uv: Some(uv.to_path_buf()),
        uv_cache_dir: Some(uv_cache.to_path_buf()),
        ..Options::default()
    };
    let loaded = Pack::load(&pack)?;

    // Warm uv's cache and the interpreter cache.
    let v = Provisioner::new(opts.clone())?.provision(&loaded, &NoEvents)?;
    let key = v.key.clone();

    let by_hand = |dir: &Path| -> anyhow::Result<()> {
        let status = Command::new(uv)
            .args(["venv", "--quiet", "--python"])
            .arg(python)
            .arg(dir)
            .env("UV_CACHE_DIR", uv_cache)
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env_remove("VIRTUAL_ENV")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("uv venv failed");
        }
        let status = Command::new(uv)
            .args(["pip", "install", "--quiet", "--python"])
            .arg(dir.join("bin/python"))
            .arg(&args.package)
            .env("UV_CACHE_DIR", uv_cache)
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env_remove("VIRTUAL_ENV")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("uv pip install failed");
        }
        Ok(())
    };
    by_hand(&work.join("warm"))?;

    let mut uv_row = Row {
        name: "uv_by_hand",
        samples: vec![],
    };
    let mut first_row = Row {
        name: "provision_first",
        samples: vec![],
    };
    // Interleave the two, so drift on a shared machine hits both alike.
    for i in 0..args.iterations {
        let dir = work.join(format!("hand{i}"));
        let t = Instant::now();
        by_hand(&dir)?;
        uv_row.samples.push(t.elapsed());
        std::fs::remove_dir_all(&dir)?;

        std::fs::remove_dir_all(root.join(&key)).context("remove the cached venv")?;
        let t = Instant::now();
        let v = Provisioner::new(opts.clone())?.provision(&loaded, &NoEvents)?;
        first_row.samples.push(t.elapsed());
        if v.cache_hit {
            bail!("expected a build");
        }
    }

    let mut hit_row = Row {
        name: "provision_cache_hit",
        samples: vec![],
    };
    for _ in 0..args.hits {
        let t = Instant::now();
        let v = Provisioner::new(opts.clone())?.provision_dir(&pack, &NoEvents)?;
        hit_row.samples.push(t.elapsed());
        if !v.cache_hit {
            bail!("expected a cache hit");
        }
    }
    let mut rows = vec![uv_row, first_row, hit_row];

    // The newest built binary (a stale one lacks the flags: then the row is skipped).
    let cli = ["release/nodecell", "debug/nodecell"]
        .iter()
        .map(|p| crate_target().join(p))
        .filter_map(|p| {
            std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (t, p))
        })
        .max()
        .map(|(_, p)| p);
    match cli {
        Some(cli) => {
            let mut cli_row = Row {
                name: "cli_cache_hit",
                samples: vec![],
            };
            for _ in 0..args.hits {
                let t = Instant::now();
                let out = Command::new(&cli)
                    .arg("provision")
                    .arg("--root")
                    .arg(&root)
                    .arg("--host-python")
                    .arg(python)
                    .arg(&pack)
                    .output()?;
                cli_row.samples.push(t.elapsed());
                if !String::from_utf8_lossy(&out.stdout).contains("cache-hit") {
                    println!(
                        "({} failed, cli_cache_hit row skipped: {})",
                        cli.display(),
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .next()
                            .unwrap_or("")
                    );
                    cli_row.samples.clear();
                    break;
                }
            }
            if !cli_row.samples.is_empty() {
                println!("(cli_cache_hit: {})", cli.display());
                rows.push(cli_row);
            }
        }
        None => println!("(no built nodecell binary: cli_cache_hit row skipped)"),
    }
    Ok(rows)
}

fn crate_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
}
