//! `cargo xtask realpacks --app DIR --packs DIR`: real node packs in a real
//! app, loaded directly and isolated, compared.
//!
//! For each pack folder under `--packs`: two world-readable copies (one per
//! side, so the packs' own writes on one side cannot reach the other),
//! `nodecell migrate --app APP` on the isolated copy (as a user would), then
//! two app processes run `xtask/realpacks/driver.py` with the app's own
//! interpreter: one loads every pack the app's own way, one through
//! `nodecell.studio.StudioHost().load_custom_node` with no other glue. The
//! table compares, per pack: loads, `/object_info` of every node (over the
//! app's HTTP server), the outputs of every node whose inputs can be made up,
//! executed through the app's own `validate_prompt` + `PromptExecutor`, the
//! GET routes the pack registered (over HTTP), and load times. With
//! `--app-cell` the isolated side's cells start from a prestartup script the
//! app's own `main.py` runs before it imports torch (`nodecell.studio.prestart`,
//! `xtask/realpacks/prestart/`), as `examples/comfyui/nodecell-loader` does.
//! Results: `target/realpacks/{direct,isolated}.json`, `report.json`, `table.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Arguments of `cargo xtask realpacks`.
#[derive(clap::Args)]
pub struct Args {
    /// The app's checkout (ComfyUI's folder: main.py, nodes.py, folder_paths.py).
    #[arg(long, value_name = "DIR")]
    app: PathBuf,
    /// A folder holding the pack folders to try.
    #[arg(long, value_name = "DIR")]
    packs: PathBuf,
    /// The app's interpreter (a venv with its requirements) [default: APP/../venv/bin/python,
    /// APP/venv/bin/python or APP/.venv/bin/python, whichever exists].
    #[arg(long, value_name = "PYTHON")]
    python: Option<PathBuf>,
    /// Only these packs (folder names, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seconds each app process may take.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Run nothing: compare the results of the last run again and print the table.
    #[arg(long)]
    report_only: bool,
    /// Load, compare /object_info and routes only: execute no nodes (quick).
    #[arg(long)]
    no_outputs: bool,
    /// Run only this side (`direct` or `isolated`); the other side's last results are compared.
    #[arg(long, value_parser = ["direct", "isolated"])]
    side: Option<String>,
    /// Seconds one node may run, the same on both sides (isolated: the packs' per-call
    /// timeout, after which the runtime fails the call and restarts the worker).
    #[arg(long, default_value_t = 60)]
    node_timeout: u64,
    /// Isolated side: packs share app cells (`StudioHost(app_cell=True)`) where compatible.
    #[arg(long)]
    app_cell: bool,
    /// One app process per pack and side (packs one at a time), instead of one per side.
    #[arg(long)]
    per_pack: bool,
    /// With --app-cell: the app's modules the app cell's zygote imports (comma-separated).
    #[arg(long, default_value = "nodes,server")]
    app_preload: String,
    /// With --app-cell: start the app cells with the first pack's load, not from a prestartup
    /// script while the app boots (`nodecell.studio.prestart`).
    #[arg(long)]
    no_prestart: bool,
    /// Start from an empty state folder: forget what earlier runs' hosts remembered (the app's
    /// shared requirements, the packs that need a cell of their own), as on an app's first start.
    #[arg(long)]
    forget: bool,
}

/// What a host remembers across starts in its state folder (kept between runs unless
/// `--forget`): the booted app's shared requirements and the packs needing a cell of their own.
const HOST_MEMORY: [&str; 2] = ["app-requirements.json", "own-cell"];

/// Empties the isolated side's state folder (the packs' layers of earlier runs), keeping the
/// host's memory of earlier starts unless `forget`.
fn reset_state(state: &Path, forget: bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(state) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let keep = !forget && HOST_MEMORY.iter().any(|m| e.file_name() == *m);
        if keep {
            continue;
        }
        let p = e.path();
        let r = if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("reset the state folder: remove {}", p.display()))?;
    }
    Ok(())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start"))?;
    Ok(out)
}

fn world_readable_copy(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        std::fs::remove_dir_all(dst).with_context(|| format!("remove {}", dst.display()))?;
    }
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .context("cp")?;
    if !st.success() {
        bail!("copying {} failed", src.display());
    }
    let st = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dst)
        .status()?;
    if !st.success() {
        bail!("chmod {} failed", dst.display());
    }
    Ok(())
}

/// Runs the xtask.
pub fn main(a: Args) -> Result<()> {
    let repo = repo();
    let app =
        std::fs::canonicalize(&a.app).with_context(|| format!("--app {}", a.app.display()))?;
    if !app.join("folder_paths.py").is_file() || !app.join("main.py").is_file() {
        bail!(
            "--app {}: not an app checkout (no main.py / folder_paths.py)",
            app.display()
        );
    }
    let python = match a.python.clone() {
        Some(p) => p,
        None => [
            app.parent().map(|p| p.join("venv/bin/python")),
            Some(app.join("venv/bin/python")),
            Some(app.join(".venv/bin/python")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .context("no app interpreter found: pass --python (a venv with the app's requirements)")?,
    };
    let work = repo.join("target/realpacks");
    std::fs::create_dir_all(&work)?;
    let mut names: Vec<String> = std::fs::read_dir(&a.packs)
        .with_context(|| format!("--packs {}", a.packs.display()))?
        .flatten()
        .filter(|e| e.path().join("__init__.py").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| a.only.is_empty() || a.only.contains(n))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!(
            "no pack folders (with __init__.py) under {}",
            a.packs.display()
        );
    }

    let vcs_dropped = if a.report_only {
        let last: Value = std::fs::read(work.join("report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        last["vcs_left_out"].clone()
    } else {
        json!(run_sides(&a, &repo, &app, &python, &work, &names)?)
    };
    let mut results = BTreeMap::new();
    for side in ["direct", "isolated"] {
        let v: Value = std::fs::read(work.join(format!("{side}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        results.insert(side, v);
    }
    let mut report = compare(&names, &results["direct"], &results["isolated"]);
    report["vcs_left_out"] = vcs_dropped;
    std::fs::write(
        work.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    let table = table(&report);
    std::fs::write(work.join("table.md"), &table)?;
    print!("{table}");
    Ok(())
}

/// Migrates the packs' copies and runs both sides; returns the VCS requirements
/// left out per pack.
fn run_sides(
    a: &Args,
    repo: &Path,
    app: &Path,
    python: &Path,
    work: &Path,
    names: &[String],
) -> Result<BTreeMap<String, Vec<String>>> {
    // The nodecell package the isolated side imports: the wheel installed in .venv.
    let venv_py = repo.join(".venv/bin/python");
    let out = run(
        Command::new(&venv_py).args([
            "-c",
            "import nodecell, os; print(os.path.dirname(nodecell.__file__))",
        ]),
        "find nodecell",
    )?;
    if !out.status.success() {
        bail!("nodecell is not installed in .venv: run scripts/build-wheel.sh");
    }
    let pkg = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let pylib = work.join("pylib");
    std::fs::create_dir_all(&pylib)?;
    let link = pylib.join("nodecell");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&pkg, &link)?;
    let nodecell_bin = pkg.join("bin/nodecell");

    let mut migrate_notes: BTreeMap<String, String> = BTreeMap::new();
    let mut vcs_dropped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Both sides load the packs from the same paths (paths show in /object_info defaults):
    // fresh copies before each side, so one side's writes cannot reach the other.
    let packs_dir = work.join("packs");
    let manifests = work.join("manifests");
    std::fs::create_dir_all(&packs_dir)?;
    std::fs::create_dir_all(&manifests)?;
    for n in names {
        world_readable_copy(&a.packs.join(n), &packs_dir.join(n))?;
    }
    for n in names {
        let copy = packs_dir.join(n);
        let _ = std::fs::remove_file(copy.join("manifest.yaml"));
        let out = run(
            Command::new(&nodecell_bin)
                .arg("migrate")
                .arg(&copy)
                .arg("--app")
                .arg(app),
            "nodecell migrate",
        )?;
        if !out.status.success() {
            bail!(
                "nodecell migrate {n} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut note = String::from_utf8_lossy(&out.stderr).into_owned();
        for dropped in drop_unreachable_vcs(&copy.join("manifest.yaml"))? {
            note.push_str(&format!(
                "realpacks: left out {dropped}: its host is unreachable from this machine\n"
            ));
            vcs_dropped.entry(n.clone()).or_default().push(dropped);
        }
        std::fs::copy(
            copy.join("manifest.yaml"),
            manifests.join(format!("{n}.yaml")),
        )
        .with_context(|| format!("keep the manifest nodecell migrate wrote for {n}"))?;
        migrate_notes.insert(n.clone(), note);
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&copy)
            .status();
    }
    std::fs::write(
        work.join("migrate.txt"),
        migrate_notes
            .iter()
            .map(|(k, v)| format!("== {k}\n{v}"))
            .collect::<String>(),
    )?;

    for (i, side) in ["direct", "isolated"].iter().enumerate() {
        if a.side.as_deref().is_some_and(|only| only != *side) {
            continue;
        }
        for n in names {
            world_readable_copy(&a.packs.join(n), &packs_dir.join(n))?;
            if *side == "isolated" {
                let m = packs_dir.join(n).join("manifest.yaml");
                std::fs::copy(manifests.join(format!("{n}.yaml")), &m)?;
                let _ = Command::new("chmod").arg("a+r").arg(&m).status();
            }
        }
        // One app process for all packs, or one per pack (`--per-pack`: a node left
        // running past its deadline directly ends with its pack's process).
        let groups: Vec<&[String]> = if a.per_pack {
            names.chunks(1).collect()
        } else {
            vec![names]
        };
        for group in groups {
            let tag = if a.per_pack {
                format!("-{}", group[0])
            } else {
                String::new()
            };
            reset_state(&work.join("state"), a.forget)?;
            // This run's results; merged into `{side}.json` afterwards (packs of other runs kept).
            let out_json = work.join(format!("{side}.run.json"));
            let _ = std::fs::remove_file(&out_json);
            // One working folder for both sides (output/temp/input/user), made afresh for each:
            // the app's folders show in /object_info defaults (WAS `Write to GIF`'s output path).
            let run_dir = work.join("run");
            let _ = std::fs::remove_dir_all(&run_dir);
            std::fs::create_dir_all(&run_dir)?;
            let mut cmd = Command::new(python);
            cmd.arg(repo.join("xtask/realpacks/driver.py"))
                .arg("--app")
                .arg(app)
                .args(["--mode", side])
                .arg("--out")
                .arg(&out_json)
                .arg("--work")
                .arg(&run_dir)
                .args(["--port", &(8291 + i).to_string()])
                .arg("--venv-root")
                .arg(work.join("venvs"))
                .arg("--state")
                .arg(work.join("state"));
            if a.no_outputs {
                cmd.arg("--no-outputs");
            }
            cmd.args(["--node-timeout", &a.node_timeout.to_string()]);
            if a.app_cell {
                cmd.arg("--app-cell")
                    .args(["--app-preload", &a.app_preload]);
                if a.no_prestart {
                    cmd.arg("--no-prestart");
                }
            }
            for n in group {
                cmd.arg(packs_dir.join(n));
            }
            if *side == "isolated" {
                cmd.env("PYTHONPATH", &pylib);
                if std::env::var_os("NODECELL_UV").is_none() {
                    cmd.env("NODECELL_UV", repo.join(".venv/bin/uv"));
                }
            }
            cmd.stdout(std::fs::File::create(
                work.join(format!("{side}{tag}.log")),
            )?);
            cmd.stderr(std::fs::File::create(
                work.join(format!("{side}{tag}.err.log")),
            )?);
            eprintln!(
                "realpacks: {side}: {} in {}",
                group.join(", "),
                app.display()
            );
            let app_before = app_tree(app);
            let t0 = Instant::now();
            let mut child = cmd.spawn().context("start the app")?;
            let status = loop {
                if let Some(s) = child.try_wait()? {
                    break Some(s);
                }
                if t0.elapsed() > Duration::from_secs(a.timeout) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            eprintln!(
                "realpacks: {side}{tag}: {} in {:.0} s",
                match status {
                    Some(s) => format!("exited {s}"),
                    None => "timed out".into(),
                },
                t0.elapsed().as_secs_f64()
            );
            // What the packs wrote into the app's checkout (paths relative to the working
            // directory): listed, then removed, so the next side starts from the same checkout.
            let written = undo_app_writes(app, &app_before);
            if !written.is_empty() {
                eprintln!(
                    "realpacks: {side}{tag}: removed what the run wrote into {}: {}",
                    app.display(),
                    written.join(", ")
                );
            }
            std::fs::write(
                work.join(format!("{side}{tag}.app-writes.txt")),
                written.iter().map(|w| format!("{w}\n")).collect::<String>(),
            )?;
            merge_side(&work.join(format!("{side}.json")), &out_json)?;
        }
    }
    Ok(vcs_dropped)
}

/// Every path under the app's checkout (`__pycache__` folders left out: the app's own imports
/// make them).
fn app_tree(app: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![app.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if e.file_name() == "__pycache__" {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.insert(path);
        }
    }
    out
}

/// Removes what appeared under the app's checkout since `before` (a new folder with all it
/// holds); returns those paths, relative to the checkout.
fn undo_app_writes(app: &Path, before: &std::collections::BTreeSet<PathBuf>) -> Vec<String> {
    let mut removed = Vec::new();
    for path in app_tree(app).difference(before) {
        if path
            .ancestors()
            .skip(1)
            .any(|a| a != app && !before.contains(a) && a.starts_with(app))
        {
            continue; // inside a new folder: removed with it
        }
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        let rel = path.strip_prefix(app).unwrap_or(path).display().to_string();
        match gone {
            Ok(()) => removed.push(rel),
            Err(e) => removed.push(format!("{rel} (not removed: {e})")),
        }
    }
    removed
}

/// Merges one run's results (`run`) into the side's results (`all`): the packs it
/// ran replace their earlier entries; the others stay (packs may be run one at a time).
fn merge_side(all: &Path, run: &Path) -> Result<()> {
    let Some(new) = std::fs::read(run)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Ok(()); // the app process wrote nothing: earlier results stay as they are
    };
    let mut merged: Value = std::fs::read(all)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"packs": {}}));
    if let (Some(packs), Some(new_packs)) =
        (merged["packs"].as_object_mut(), new["packs"].as_object())
    {
        for (k, v) in new_packs {
            packs.insert(k.clone(), v.clone());
        }
    } else {
        merged["packs"] = new["packs"].clone();
    }
    if let Some(obj) = new.as_object() {
        for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "packs") {
            merged[k] = v.clone();
        }
    }
    std::fs::write(all, serde_json::to_vec_pretty(&merged)?)
        .with_context(|| format!("write {}", all.display()))?;
    let _ = std::fs::remove_file(run);
    Ok(())
}

/// Comments out the manifest's VCS requirements whose host this machine
/// cannot reach (a sandboxed development machine); returns them.
fn drop_unreachable_vcs(manifest: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(manifest)?;
    let mut out = String::new();
    let mut dropped = Vec::new();
    for line in text.lines() {
        let req = line
            .trim_start()
            .strip_prefix("- ")
            .map(|r| r.split("  #").next().unwrap_or(r).trim());
        let host = req
            .filter(|r| r.starts_with("git+"))
            .and_then(|r| r.split("://").nth(1))
            .and_then(|r| r.split(['/', '@', ':']).next());
        if let (Some(r), Some(h)) = (req, host) {
            let reachable = std::net::ToSocketAddrs::to_socket_addrs(&(h, 443))
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok()
                });
            if !reachable {
                dropped.push(r.to_string());
                out.push_str(&format!(
                    "  # {r}  # left out by cargo xtask realpacks: {h} is unreachable here\n"
                ));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(manifest, out)?;
    Ok(dropped)
}

/// Whether two output digests are equal, where paths into each side's own
/// working folder (`run-direct`, `run-isolated`: results of runs before both
/// sides shared `run`) count as the same.
fn same_output(a: &Value, b: &Value) -> bool {
    let norm = |v: &Value| {
        v.to_string()
            .replace("/run-direct/", "/run/")
            .replace("/run-isolated/", "/run/")
    };
    a == b || norm(a) == norm(b)
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur
}

/// Why a node's run failed, in one word: `timeout` (past the per-node deadline, on
/// either side), `invalid` (the app's `validate_prompt` refused the prompt) or the
/// exception's type name.
fn failure_kind(r: &Value) -> String {
    let err = r["error"].as_str().unwrap_or("");
    if r["timeout"].as_bool() == Some(true)
        || err.starts_with("timeout")
        || err.contains("CallTimeout")
    {
        return "timeout".into();
    }
    if err.starts_with("invalid:") {
        return "invalid".into();
    }
    let mut parts = err.split(": ");
    let name = |p: &str| p.trim().rsplit('.').next().unwrap_or("").to_string();
    let head = name(parts.next().unwrap_or(""));
    // An isolated node's exception arrives as nodecell's Remote<Type> (`RemoteError` for
    // types that are not builtins): the pack's own type follows it.
    match parts.next() {
        Some(inner) if head.starts_with("Remote") && !inner.contains(' ') => name(inner),
        _ => head,
    }
}

/// Per node, the outputs of both sides compared: `equal` (the same digest), `differ`,
/// `fail_both`, `fail_isolated` (runs directly, fails isolated: the reason),
/// `fail_direct`, `direct_only` (not run isolated: the isolated run stopped early).
fn compare_outputs(d: &Value, i: &Value) -> Value {
    let mut nodes = serde_json::Map::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut ms_d, mut ms_i) = (0.0, 0.0);
    let Some(outs) = d.as_object() else {
        return json!({"run": false});
    };
    for (node, a) in outs {
        let b = &i[node];
        let (class, detail) = if b.is_null() {
            ("direct_only", Value::Null)
        } else {
            match (a.get("digest"), b.get("digest")) {
                (Some(x), Some(y)) if same_output(x, y) => {
                    ms_d += a["ms"].as_f64().unwrap_or(0.0);
                    ms_i += b["ms"].as_f64().unwrap_or(0.0);
                    ("equal", Value::Null)
                }
                (Some(_), Some(_)) => ("differ", json!({"direct": a, "isolated": b})),
                (None, None) => (
                    "fail_both",
                    json!({"direct": failure_kind(a), "isolated": failure_kind(b),
                           "direct_error": a["error"], "isolated_error": b["error"]}),
                ),
                (Some(_), None) => (
                    "fail_isolated",
                    json!({"kind": failure_kind(b), "error": b["error"], "ms": b["ms"]}),
                ),
                (None, Some(_)) => (
                    "fail_direct",
                    json!({"kind": failure_kind(a), "error": a["error"], "ms": a["ms"]}),
                ),
            }
        };
        *counts.entry(class).or_default() += 1;
        nodes.insert(node.clone(), json!({"class": class, "detail": detail}));
    }
    let timeouts_both = nodes
        .values()
        .filter(|n| n["class"] == "fail_both" && n["detail"]["direct"] == "timeout")
        .count();
    json!({
        "run": i.is_object(), "counts": counts, "nodes": nodes, "timeouts_both": timeouts_both,
        "exec_ms_direct_equal": ms_d, "exec_ms_isolated_equal": ms_i,
    })
}

/// Per-pack comparison of the two sides.
fn compare(names: &[String], direct: &Value, isolated: &Value) -> Value {
    let mut packs = serde_json::Map::new();
    for n in names {
        let d = get(direct, &["packs", n]);
        let i = get(isolated, &["packs", n]);
        let nodes_d: Vec<String> = serde_json::from_value(d["nodes"].clone()).unwrap_or_default();
        let nodes_i: Vec<String> = serde_json::from_value(i["nodes"].clone()).unwrap_or_default();
        let unstable: Vec<String> =
            serde_json::from_value(d["object_info_unstable"].clone()).unwrap_or_default();
        let mut info_equal = 0;
        let mut info_diff = Vec::new();
        for node in nodes_d.iter().filter(|n| !unstable.contains(n)) {
            let a = &d["object_info"][node];
            let b = &i["object_info"][node];
            if !a.is_null() && a == b {
                info_equal += 1;
            } else {
                info_diff.push(node.clone());
            }
        }
        let outs = compare_outputs(&d["outputs"], &i["outputs"]);
        let (mut routes_ok, mut routes_n) = (0, 0);
        let mut route_diff = Vec::new();
        if let Some(ans) = d["route_answers"].as_object() {
            for (path, a) in ans {
                routes_n += 1;
                let b = &i["route_answers"][path];
                if a["status"] == b["status"] && a["sha"] == b["sha"] && !a["status"].is_null() {
                    routes_ok += 1;
                } else {
                    route_diff.push(json!({"path": path, "direct": a, "isolated": b}));
                }
            }
        }
        packs.insert(
            n.clone(),
            json!({
                "loaded_direct": d["loaded"], "loaded_isolated": i["loaded"],
                "error_direct": d["error"], "error_isolated": i["error"],
                "nodes_direct": nodes_d.len(), "nodes_isolated": nodes_i.len(),
                "object_info_equal": info_equal, "object_info_differ": info_diff,
                "object_info_unstable": unstable,
                "outputs": outs,
                "outputs_run_isolated": i["outputs"].is_object(),
                "outputs_direct": d["outputs"].as_object().map_or(0, |o| o.len()),
                "outputs_direct_ok": d["outputs"].as_object().map_or(0, |o| {
                    o.values().filter(|v| v.get("digest").is_some()).count()
                }),
                "routes_registered_direct": d["routes"].as_array().map_or(0, |r| r.len()),
                "routes_registered_isolated": i["routes"].as_array().map_or(0, |r| r.len()),
                "get_routes": routes_n, "get_routes_equal": routes_ok, "routes_differ": route_diff,
                "load_s_direct": d["load_s"], "load_s_isolated": i["load_s"],
                "cell_isolated": i["cell"], "restarts_isolated": i["restarts"],
            }),
        );
    }
    json!({
        "boot_s_direct": direct["boot_s"], "boot_s_isolated": isolated["boot_s"],
        "app_cell": isolated["app_cell"], "node_timeout": isolated["node_timeout"], "packs": packs,
        "prestart": isolated["prestart"], "early_starts": isolated["early_starts"],
        "app_cells": isolated["app_cells"],
    })
}

/// One line on the isolated side's start: boot times, and what became of the early starts.
fn start_line(r: &Value) -> String {
    let secs = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2} s"));
    let mut s = format!(
        "Boot (the app's own start): direct {}, isolated {}",
        secs(&r["boot_s_direct"]),
        secs(&r["boot_s_isolated"])
    );
    if let Some(early) = r["early_starts"].as_object() {
        let parts: Vec<String> = early
            .iter()
            .map(|(name, e)| {
                format!(
                    "{name} ({}) {}{}",
                    e["pack"].as_str().unwrap_or("-"),
                    e["state"].as_str().unwrap_or("?"),
                    match (e["state"].as_str(), e["waited_s"].as_f64()) {
                        (Some("adopted"), Some(w)) => format!(", the load waited {w:.2} s for it"),
                        (Some("failed"), _) => format!(": {}", e["why"].as_str().unwrap_or("")),
                        _ => String::new(),
                    }
                )
            })
            .collect();
        s.push_str(&format!("; early starts (prestart): {}", parts.join("; ")));
    }
    s.push('\n');
    s
}

/// The outputs column: equal of those run on both sides, then what else happened.
fn outputs_cell(o: &Value) -> String {
    let c = |k: &str| o["counts"][k].as_u64().unwrap_or(0);
    let both = c("equal") + c("differ") + c("fail_both") + c("fail_isolated") + c("fail_direct");
    let mut s = format!("{} / {} equal", c("equal"), both - c("fail_both"));
    let mut more = Vec::new();
    if c("differ") > 0 {
        more.push(format!("{} differ", c("differ")));
    }
    if c("fail_isolated") > 0 {
        more.push(format!("{} fail isolated only", c("fail_isolated")));
    }
    if c("fail_direct") > 0 {
        more.push(format!("{} fail directly only", c("fail_direct")));
    }
    if c("fail_both") > 0 {
        let t = o["timeouts_both"].as_u64().unwrap_or(0);
        more.push(if t > 0 {
            format!("{} fail both ({t} of them time out)", c("fail_both"))
        } else {
            format!("{} fail both", c("fail_both"))
        });
    }
    if c("direct_only") > 0 {
        more.push(format!("{} not reached isolated", c("direct_only")));
    }
    if !more.is_empty() {
        s.push_str(&format!(" ({})", more.join("; ")));
    }
    s
}

/// The nodes whose outputs differ or that fail isolated only, with the reasons.
fn output_details(r: &Value) -> String {
    let mut s = String::new();
    let Some(packs) = r["packs"].as_object() else {
        return s;
    };
    for (n, p) in packs {
        let Some(nodes) = p["outputs"]["nodes"].as_object() else {
            continue;
        };
        for (node, v) in nodes {
            let d = &v["detail"];
            match v["class"].as_str() {
                Some("fail_isolated") => s.push_str(&format!(
                    "* {n} `{node}`: fails isolated only ({}): {}\n",
                    d["kind"].as_str().unwrap_or("?"),
                    d["error"]
                        .as_str()
                        .unwrap_or("")
                        .replace('\n', " ")
                        .chars()
                        .take(300)
                        .collect::<String>()
                )),
                Some("fail_direct") => s.push_str(&format!(
                    "* {n} `{node}`: fails directly only ({})\n",
                    d["kind"].as_str().unwrap_or("?")
                )),
                Some("differ") => s.push_str(&format!("* {n} `{node}`: outputs differ\n")),
                Some("fail_both") if d["direct"] != d["isolated"] => s.push_str(&format!(
                    "* {n} `{node}`: fails both, differently (direct {}, isolated {})\n",
                    d["direct"].as_str().unwrap_or("?"),
                    d["isolated"].as_str().unwrap_or("?")
                )),
                _ => {}
            }
        }
    }
    s
}

fn table(r: &Value) -> String {
    let mut s = String::new();
    s.push_str("| pack | loads (direct / isolated) | nodes | /object_info equal | outputs through PromptExecutor (per node) | GET routes equal (host server) | load time direct / isolated |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    let yes = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "NO"
        }
    };
    if let Some(packs) = r["packs"].as_object() {
        for (n, p) in packs {
            let outs = if p["outputs_run_isolated"].as_bool() != Some(true) {
                format!(
                    "not run isolated (--no-outputs); direct: {} of {} ran",
                    p["outputs_direct_ok"], p["outputs_direct"]
                )
            } else {
                outputs_cell(&p["outputs"])
            };
            let unstable = p["object_info_unstable"].as_array().map_or(0, |u| u.len());
            let info = if unstable > 0 {
                format!(
                    "{} / {} ({unstable} with random defaults left out)",
                    p["object_info_equal"],
                    p["nodes_direct"].as_u64().unwrap_or(0) - unstable as u64
                )
            } else {
                format!("{} / {}", p["object_info_equal"], p["nodes_direct"])
            };
            s.push_str(&format!(
                "| {n} | {} / {} | {} / {} | {info} | {outs} | {} / {} ({} registered) | {:.2} s / {:.2} s{} |\n",
                yes(&p["loaded_direct"]),
                yes(&p["loaded_isolated"]),
                p["nodes_isolated"],
                p["nodes_direct"],
                p["get_routes_equal"],
                p["get_routes"],
                p["routes_registered_isolated"],
                p["load_s_direct"].as_f64().unwrap_or(f64::NAN),
                p["load_s_isolated"].as_f64().unwrap_or(f64::NAN),
                match p["cell_isolated"]["app_cell"].as_bool() {
                    Some(true) if p["cell_isolated"]["app_cell_early"].as_bool() == Some(true) => {
                        " (app cell, started early)"
                    }
                    Some(true) => " (app cell)",
                    Some(false) if r["app_cell"].as_bool() == Some(true) => " (own cell)",
                    _ => "",
                },
            ));
        }
    }
    s.push('\n');
    s.push_str(&start_line(r));
    let details = output_details(r);
    if !details.is_empty() {
        s.push('\n');
        s.push_str(&details);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_classified_per_node() {
        let d = json!({
            "same": {"digest": ["tensor", "float32", [1], "ab"], "ms": 1.0},
            "paths": {"digest": ["/x/run-direct/out.png"], "ms": 1.0},
            "other": {"digest": [1], "ms": 1.0},
            "hangs": {"error": "timeout: still running after 60 s", "timeout": true},
            "both": {"error": "ValueError: No file"},
            "iso": {"digest": [2]},
            "dir": {"error": "RuntimeError: boom"},
            "late": {"digest": [3]},
        });
        let i = json!({
            "same": {"digest": ["tensor", "float32", [1], "ab"], "ms": 2.0},
            "paths": {"digest": ["/x/run-isolated/out.png"], "ms": 1.0},
            "other": {"digest": [9]},
            "hangs": {"error": "nodecell.errors.CallTimeout: pack 'p': execute() did not return within 60 s"},
            "both": {"error": "ValueError: No file"},
            "iso": {"error": "nodecell.errors.WorkerCrashed: pack 'p': worker killed"},
            "dir": {"digest": [4]},
        });
        let r = compare_outputs(&d, &i);
        let class = |n: &str| r["nodes"][n]["class"].as_str().unwrap().to_string();
        assert_eq!(class("same"), "equal");
        assert_eq!(class("paths"), "equal");
        assert_eq!(class("other"), "differ");
        assert_eq!(class("hangs"), "fail_both");
        assert_eq!(r["nodes"]["hangs"]["detail"]["isolated"], "timeout");
        assert_eq!(r["timeouts_both"], 1);
        assert_eq!(class("both"), "fail_both");
        assert_eq!(class("iso"), "fail_isolated");
        assert_eq!(r["nodes"]["iso"]["detail"]["kind"], "WorkerCrashed");
        assert_eq!(r["nodes"]["both"]["detail"]["isolated"], "ValueError");
        assert_eq!(class("dir"), "fail_direct");
        assert_eq!(class("late"), "direct_only");
        assert_eq!(
            outputs_cell(&r),
            "2 / 5 equal (1 differ; 1 fail isolated only; 1 fail directly only; \
             2 fail both (1 of them time out); 1 not reached isolated)"
        );
    }

    #[test]
    fn what_a_run_writes_into_the_app_checkout_is_removed() {
        let app =
            std::env::temp_dir().join(format!("nodecell-realpacks-app-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&app);
        std::fs::create_dir_all(app.join("models/checkpoints")).unwrap();
        std::fs::write(app.join("main.py"), "").unwrap();
        let before = app_tree(&app);
        std::fs::create_dir_all(app.join("ComfyUI/output")).unwrap();
        std::fs::write(app.join("ComfyUI/output/morph.gif"), "gif").unwrap();
        std::fs::create_dir_all(app.join("models/midas")).unwrap();
        std::fs::write(app.join("models/checkpoints/x.ckpt"), "x").unwrap();
        std::fs::create_dir_all(app.join("__pycache__")).unwrap();
        let removed = undo_app_writes(&app, &before);
        assert_eq!(
            removed,
            ["ComfyUI", "models/checkpoints/x.ckpt", "models/midas"],
            "{removed:?}"
        );
        assert!(app.join("main.py").is_file() && app.join("models/checkpoints").is_dir());
        assert!(!app.join("ComfyUI").exists() && !app.join("models/midas").exists());
        assert!(app.join("__pycache__").is_dir());
        std::fs::remove_dir_all(&app).unwrap();
    }

    #[test]
    fn failure_kinds() {
        assert_eq!(failure_kind(&json!({"error": "invalid: {...}"})), "invalid");
        assert_eq!(
            failure_kind(&json!({"error": "nodecell.errors.RemoteError: boom happened"})),
            "RemoteError"
        );
        assert_eq!(failure_kind(&json!({"timeout": true})), "timeout");
        assert_eq!(
            failure_kind(&json!({"error": "nodecell.errors.RemoteError: JSONDecodeError: x: y"})),
            "JSONDecodeError"
        );
        assert_eq!(
            failure_kind(&json!({"error": "json.decoder.JSONDecodeError: Expecting value"})),
            "JSONDecodeError"
        );
    }
}
