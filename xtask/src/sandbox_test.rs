//! `cargo xtask sandbox-test`: the escape and containment suite.
//!
//! Every case runs in a fresh sandbox through the real `nodecell` binary
//! and has a positive control: the same action outside the sandbox (or on
//! an allowed path inside it) succeeds, so a case cannot pass because the
//! action was impossible anyway. The actions themselves are done by this
//! binary, copied next to the fixtures and run as `probe sandbox-test
//! --probe OP ARGS` (inside the sandbox, and outside for the controls).
//!
//! The suite runs twice: as root, then as an unprivileged user it creates
//! (`nodecell-test`) inside a cgroup delegated to that user (what systemd
//! gives a normal user). A missing kernel feature is an explicit SKIP, never
//! a pass. One table row per case, then `N passed, N failed`; the exit
//! status is nonzero when any case failed.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Arguments of `cargo xtask sandbox-test`.
#[derive(clap::Args)]
pub struct Args {
    /// The nodecell binary to test (default: build and use target/debug/nodecell).
    #[arg(long)]
    nodecell: Option<PathBuf>,
    /// Only run cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Run only the root half.
    #[arg(long)]
    root_only: bool,
    /// Internal: run the rootless half (started by the suite as the test user).
    #[arg(long, hide = true)]
    rootless_child: bool,
    /// Internal: the fixtures directory of this run.
    #[arg(long, hide = true)]
    fixtures: Option<PathBuf>,
    /// Internal: perform one probe action and exit.
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true)]
    probe: Option<Vec<String>>,
}

/// The unprivileged user of the rootless run.
const TEST_USER: &str = "nodecell-test";
/// An unrelated uid owning a private fixture file.
const OTHER_UID: u32 = 4321;
/// Debian's interpreter (readable by any uid, unlike pyenv's).
const PYTHON: &str = "/usr/bin/python3.11";

/// Entry point.
pub fn main(args: Args) -> Result<()> {
    if let Some(p) = &args.probe {
        std::process::exit(probe::run(p));
    }
    if args.rootless_child {
        let fx = args.fixtures.clone().context("--fixtures is required")?;
        let nodecell = args
            .nodecell
            .clone()
            .unwrap_or_else(|| fx.join("bin/nodecell"));
        let ctx = Ctx::new(nodecell, fx, "rootless")?;
        let out = std::io::stdout();
        for case in selected(&args) {
            let r = ctx.run_case(case);
            let mut o = out.lock();
            writeln!(o, "{}", serde_json::to_string(&r)?)?;
            o.flush()?;
        }
        return Ok(());
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let nodecell = match &args.nodecell {
        Some(p) => p.clone(),
        None => build_nodecell()?,
    };
    let mut fx = Fixtures::create(&nodecell)?;
    let mut results = Vec::new();
    let run_all = || -> Result<Vec<CaseResult>> {
        let mut results = Vec::new();
        let ctx = Ctx::new(
            fx.dir.join("bin/nodecell"),
            fx.dir.clone(),
            if root { "root" } else { "user" },
        )?;
        eprintln!(
            "sandbox-test: running {} cases as {}",
            selected(&args).len(),
            ctx.label
        );
        for case in selected(&args) {
            let r = ctx.run_case(case);
            print_row(&r);
            results.push(r);
        }
        Ok(results)
    };
    print_header();
    results.extend(run_all()?);
    if root && !args.root_only {
        eprintln!("sandbox-test: running the rootless half as {TEST_USER}");
        results.extend(fx.run_rootless(&args, print_row)?);
    } else if !root {
        eprintln!("sandbox-test: not root: ran the rootless half only (as this user)");
    }
    let pass = results
        .iter()
        .filter(|r| r.verdict == Verdict::Pass)
        .count();
    let fail = results
        .iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .count();
    let skip = results
        .iter()
        .filter(|r| r.verdict == Verdict::Skip)
        .count();
    println!();
    println!(
        "{pass} passed, {fail} failed{}",
        if skip > 0 {
            format!(", {skip} skipped (not counted as passed)")
        } else {
            String::new()
        }
    );
    let distinct = results
        .iter()
        .map(|r| r.case.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    println!("{distinct} cases, {} runs", results.len());
    print_slowest(&results);
    drop(fx);
    if fail > 0 {
        bail!("{fail} sandbox case(s) failed");
    }
    Ok(())
}

fn selected(args: &Args) -> Vec<&'static Case> {
    CASES
        .iter()
        .filter(|c| args.filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect()
}

/// Builds the debug `nodecell` binary and returns its path.
fn build_nodecell() -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "-p", "nodecell", "--bin", "nodecell"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("cargo build -p nodecell failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("debug/nodecell"))
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

// ------------------------------------------------------------------ results

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Verdict {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CaseResult {
    case: String,
    who: String,
    verdict: Verdict,
    control: String,
    attempt: String,
    /// Wall time of the case (control and attempt), seconds: the suite ends with the slowest.
    #[serde(default)]
    secs: f64,
}

fn print_header() {
    println!(
        "{:<34} {:<8} {:<6} {:<44} ATTEMPT",
        "CASE", "AS", "RESULT", "CONTROL"
    );
}

fn print_row(r: &CaseResult) {
    let v = match r.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Skip => "SKIP",
    };
    let clip = |s: &str, n: usize| -> String {
        let s = s.replace('\n', " ");
        if s.chars().count() > n {
            format!("{}…", s.chars().take(n - 1).collect::<String>())
        } else {
            s
        }
    };
    println!(
        "{:<34} {:<8} {:<6} {:<44} {}",
        r.case,
        r.who,
        v,
        clip(&r.control, 44),
        clip(&r.attempt, 90)
    );
}

/// The time of each half and the slowest runs (where the suite's minutes go).
fn print_slowest(results: &[CaseResult]) {
    let mut halves: Vec<(&str, f64)> = Vec::new();
    for r in results {
        match halves.iter_mut().find(|(w, _)| *w == r.who) {
            Some((_, t)) => *t += r.secs,
            None => halves.push((&r.who, r.secs)),
        }
    }
    let halves: Vec<String> = halves
        .iter()
        .map(|(w, t)| format!("{w} {t:.1} s"))
        .collect();
    println!("time per half: {}", halves.join(", "));
    let mut slow: Vec<&CaseResult> = results.iter().collect();
    slow.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    println!("slowest runs:");
    for r in slow.iter().take(12) {
        println!("  {:>6.2} s  {} ({})", r.secs, r.case, r.who);
    }
}

// ------------------------------------------------------------------ fixtures

/// Files and users the cases use, created by root before the runs and
/// removed afterwards.
struct Fixtures {
    dir: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl Fixtures {
    fn create(nodecell: &Path) -> Result<Fixtures> {
        // SAFETY: geteuid has no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(format!("nodecell-suite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mkdir = |p: &Path, mode: u32| -> Result<()> {
            std::fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
            Ok(())
        };
        mkdir(&dir, 0o755)?;
        let fx = Fixtures {
            dir: dir.clone(),
            cgroups: Vec::new(),
        };
        for (d, mode) in [
            ("bin", 0o755),
            ("ro", 0o755),
            ("data", 0o755),
            ("rootowned", 0o755),
        ] {
            mkdir(&dir.join(d), mode)?;
        }
        let copy = |from: &Path, to: &Path, mode: u32| -> Result<()> {
            std::fs::copy(from, to)
                .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
            Ok(())
        };
        copy(nodecell, &dir.join("bin/nodecell"), 0o755)?;
        let me = std::env::current_exe()?;
        copy(&me, &dir.join("bin/probe"), 0o755)?;
        std::fs::write(dir.join("ro/public.txt"), "public\n")?;
        std::fs::write(dir.join("data/secret.txt"), "host secret\n")?;
        std::fs::set_permissions(
            dir.join("data/secret.txt"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        std::fs::write(dir.join("rootowned/file"), "root's\n")?;
        std::fs::set_permissions(
            dir.join("rootowned/file"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        std::fs::write(dir.join("ro/other.txt"), "another user's\n")?;
        std::fs::set_permissions(
            dir.join("ro/other.txt"),
            std::fs::Permissions::from_mode(0o600),
        )?;
        if root {
            chown(&dir.join("ro/other.txt"), OTHER_UID, OTHER_UID)?;
            // A set-uid-root copy of the probe.
            copy(&me, &dir.join("bin/suid-probe"), 0o755)?;
            std::fs::set_permissions(
                dir.join("bin/suid-probe"),
                std::fs::Permissions::from_mode(0o4755),
            )?;
            ensure_user()?;
        }
        make_venv(&dir.join("venv"))?;
        Ok(fx)
    }

    /// Starts the rootless half as the test user inside a delegated cgroup
    /// and collects its results.
    fn run_rootless(
        &mut self,
        args: &Args,
        mut each: impl FnMut(&CaseResult),
    ) -> Result<Vec<CaseResult>> {
        let (uid, gid) = ensure_user()?;
        let deleg = self.delegate("deleg", uid, true)?;
        self.delegate("nodeleg", uid, false)?;
        let mut cmd = Command::new(self.dir.join("bin/probe"));
        cmd.args(["sandbox-test", "--rootless-child", "--fixtures"])
            .arg(&self.dir);
        if let Some(f) = &args.filter {
            cmd.args(["--filter", f]);
        }
        cmd.current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/tmp");
        let procs: Vec<CString> = deleg
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()).unwrap())
            .collect();
        // SAFETY: the closure only makes async-signal-safe system calls
        // (open/write/close, setgroups/setgid/setuid) on prepared strings.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                    libc::close(fd);
                    if !ok {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the rootless half")?;
        let mut results = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line?;
            match serde_json::from_str::<CaseResult>(&line) {
                Ok(r) => {
                    each(&r);
                    results.push(r);
                }
                Err(_) => eprintln!("{line}"),
            }
        }
        let st = child.wait()?;
        if !st.success() {
            bail!("the rootless half exited with {st}");
        }
        Ok(results)
    }

    /// Creates `<own cgroup>/nodecell-suite-<name>-<pid>` in the memory,
    /// pids and cpu hierarchies. `full`: chown the directory (delegation);
    /// otherwise only `cgroup.procs` (the user may enter, not create).
    fn delegate(&mut self, name: &str, uid: u32, full: bool) -> Result<Vec<PathBuf>> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let mut dirs = Vec::new();
        for c in ["memory", "pids", "cpu"] {
            let rel = own
                .lines()
                .find_map(|l| {
                    let mut p = l.splitn(3, ':');
                    let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
                    ctl.split(',').any(|x| x == c).then(|| path.to_string())
                })
                .with_context(|| format!("no {c} line in /proc/self/cgroup"))?;
            let d = PathBuf::from(format!("/sys/fs/cgroup/{c}{}", rel.trim_end_matches('/')))
                .join(format!("nodecell-suite-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
            if full {
                for f in ["", "cgroup.procs", "tasks"] {
                    let p = if f.is_empty() { d.clone() } else { d.join(f) };
                    if p.exists() {
                        chown(&p, uid, u32::MAX)?;
                    }
                }
            } else {
                chown(&d.join("cgroup.procs"), uid, u32::MAX)?;
            }
            dirs.push(d);
        }
        self.cgroups.extend(dirs.iter().cloned());
        Ok(dirs)
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        for d in self.cgroups.iter().rev() {
            // Children first (sandboxes left by a crashed run), then the dir.
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(d);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<()> {
    let c = CString::new(p.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is a valid string; u32::MAX leaves the gid unchanged.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        bail!("chown {}: {}", p.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the test user (idempotent); returns (uid, gid).
fn ensure_user() -> Result<(u32, u32)> {
    let lookup = || -> Option<(u32, u32)> {
        let out = Command::new("id").arg(TEST_USER).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8_lossy(&out.stdout);
        let num =
            |key: &str| -> Option<u32> { s.split(key).nth(1)?.split('(').next()?.parse().ok() };
        Some((num("uid=")?, num("gid=")?))
    };
    if let Some(ids) = lookup() {
        return Ok(ids);
    }
    let st = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ])
        .status()
        .context("useradd")?;
    lookup().with_context(|| format!("useradd {TEST_USER} failed ({st})"))
}

/// A numpy venv made with uv from the shared cache (world-readable).
fn make_venv(dir: &Path) -> Result<()> {
    let uv = workspace_root().join(".venv/bin/uv");
    if !uv.exists() {
        bail!("{} is missing: run scripts/setup.sh", uv.display());
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache =
        std::env::var("UV_CACHE_DIR").unwrap_or_else(|_| format!("{home}/.cache/nodecell-dev/uv"));
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(&uv)
            .args(args)
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_CACHE_DIR", &cache)
            .output()
            .context("running uv")?;
        if !out.status.success() {
            bail!(
                "uv {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let d = dir.to_str().context("venv path")?;
    run(&["venv", "-q", "--python", PYTHON, d])?;
    run(&[
        "pip",
        "install",
        "-q",
        "--python",
        &format!("{d}/bin/python"),
        "numpy",
    ])?;
    // Everything the worker reads must be readable by it.
    let _ = Command::new("chmod").args(["-R", "a+rX", d]).status();
    Ok(())
}

// ------------------------------------------------------------------ context

/// What a probe printed.
#[derive(Debug, Clone)]
struct Res {
    code: i32,
    out: String,
    err: String,
    secs: f64,
}

impl Res {
    fn ok(&self) -> bool {
        self.code == 0
    }
    /// The probe's one-line summary (or the launcher's error).
    fn line(&self) -> String {
        let o = self.out.trim();
        if o.is_empty() {
            format!(
                "exit {}: {}",
                self.code,
                self.err.trim().lines().last().unwrap_or("")
            )
        } else {
            o.lines().last().unwrap_or("").to_string()
        }
    }
    /// The errno name the probe reported (`err ENOENT ...`).
    fn errno(&self) -> Option<&str> {
        self.out
            .lines()
            .last()?
            .strip_prefix("err ")?
            .split_whitespace()
            .next()
    }
}

struct Ctx {
    nodecell: PathBuf,
    probe: PathBuf,
    fx: PathBuf,
    label: &'static str,
    root: bool,
    /// A process of this run's user outside the sandbox (ptrace, kill targets).
    sleeper: std::process::Child,
    /// A scratch writable dir per run, bound with --rw.
    rw: PathBuf,
    /// `guard=<mnt ns>:<pid ns>` of the host: destructive probe actions
    /// (mount, kill(-1), fill, fork bomb) refuse to run there.
    guard: String,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        let _ = std::fs::remove_dir_all(&self.rw);
    }
}

impl Ctx {
    fn new(nodecell: PathBuf, fx: PathBuf, label: &'static str) -> Result<Ctx> {
        // SAFETY: geteuid has no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let sleeper = Command::new("/bin/sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()?;
        let rw =
            std::env::temp_dir().join(format!("nodecell-suite-rw-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&rw);
        std::fs::create_dir_all(&rw)?;
        std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777))?;
        let guard = format!("guard={}-{}", probe::ns_id("mnt"), probe::ns_id("pid"));
        if probe::guard_allows(&guard, "mnt").is_ok() || probe::guard_allows(&guard, "pid").is_ok()
        {
            bail!("internal error: the destructive-probe guard would allow actions on the host");
        }
        Ok(Ctx {
            probe: fx.join("bin/probe"),
            nodecell,
            fx,
            label,
            root,
            sleeper,
            rw,
            guard,
        })
    }

    fn run_case(&self, case: &Case) -> CaseResult {
        let t = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(self)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Outcome::fail("-", format!("case panicked: {msg}"))
            });
        CaseResult {
            case: case.name.to_string(),
            who: self.label.to_string(),
            verdict: out.verdict,
            control: out.control,
            attempt: out.attempt,
            secs: t.elapsed().as_secs_f64(),
        }
    }

    fn fxs(&self, rel: &str) -> String {
        self.fx.join(rel).display().to_string()
    }

    /// `nodecell run` args binding the probe, then `flags`.
    fn run_args(&self, flags: &[&str]) -> Vec<String> {
        let mut a = vec!["run".to_string(), "--ro".into(), self.fxs("bin")];
        a.extend(flags.iter().map(|s| s.to_string()));
        a
    }

    /// Runs the probe `op` inside a sandbox with `flags`.
    fn inside(&self, flags: &[&str], op: &[&str]) -> Res {
        let mut a = self.run_args(flags);
        a.push("--".into());
        a.push(self.probe.display().to_string());
        a.extend(["sandbox-test".into(), "--probe".into()]);
        a.extend(op.iter().map(|s| s.to_string()));
        self.exec(Command::new(&self.nodecell).args(&a))
    }

    /// Runs an arbitrary command inside a sandbox with `flags`.
    fn inside_cmd(&self, flags: &[&str], argv: &[&str]) -> Res {
        let mut a = self.run_args(flags);
        a.push("--".into());
        a.extend(argv.iter().map(|s| s.to_string()));
        self.exec(Command::new(&self.nodecell).args(&a))
    }

    /// Runs the probe `op` outside, as this run's user.
    fn outside(&self, op: &[&str]) -> Res {
        self.exec(
            Command::new(&self.probe)
                .arg("sandbox-test")
                .arg("--probe")
                .args(op),
        )
    }

    /// Runs `op` outside in a private mount namespace: as root directly, in
    /// a fresh user namespace when rootless (where namespace-local
    /// privileges let the call reach the kernel). Never in the host's mount
    /// namespace: a control that mounts must not touch the host.
    fn outside_privileged(&self, op: &[&str]) -> Res {
        let mut v = vec![if self.root { "in-mountns" } else { "in-userns" }];
        v.extend_from_slice(op);
        self.outside(&v)
    }

    fn exec(&self, cmd: &mut Command) -> Res {
        let t = Instant::now();
        let out = cmd.stdin(Stdio::null()).current_dir("/").output();
        match out {
            Ok(o) => Res {
                code: o.status.code().unwrap_or(-1),
                out: String::from_utf8_lossy(&o.stdout).into_owned(),
                err: String::from_utf8_lossy(&o.stderr).into_owned(),
                secs: t.elapsed().as_secs_f64(),
            },
            Err(e) => Res {
                code: -1,
                out: String::new(),
                err: e.to_string(),
                secs: 0.0,
            },
        }
    }

    fn sleeper_pid(&self) -> String {
        self.sleeper.id().to_string()
    }
}

// ------------------------------------------------------------------ cases

struct Outcome {
    verdict: Verdict,
    control: String,
    attempt: String,
}

impl Outcome {
    fn fail(control: impl Into<String>, attempt: impl Into<String>) -> Outcome {
        Outcome {
            verdict: Verdict::Fail,
            control: control.into(),
            attempt: attempt.into(),
        }
    }
    fn skip(why: impl Into<String>) -> Outcome {
        Outcome {
            verdict: Verdict::Skip,
            control: "-".into(),
            attempt: why.into(),
        }
    }
}

/// The usual shape: the control must succeed, the attempt must be denied.
fn judge(control: &Res, attempt: &Res, denied: impl Fn(&Res) -> bool) -> Outcome {
    let c = format!(
        "{}: {}",
        if control.ok() { "ok" } else { "FAILED" },
        control.line()
    );
    let a = attempt.line();
    let verdict = if control.ok() && denied(attempt) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Outcome {
        verdict,
        control: c,
        attempt: a,
    }
}

/// Denied by the probe itself (it ran and the action failed).
fn probe_denied(r: &Res) -> bool {
    r.code == 1 && r.out.trim_start().starts_with("err")
}

/// Denied with one of these errnos.
fn denied_with(errnos: &'static [&'static str]) -> impl Fn(&Res) -> bool {
    move |r: &Res| probe_denied(r) && r.errno().is_some_and(|e| errnos.contains(&e))
}

/// Both controls must hold.
fn both(a: Res, b: Res) -> Res {
    if !a.ok() {
        return a;
    }
    if !b.ok() {
        return b;
    }
    Res {
        code: 0,
        out: format!("{}; {}", a.line(), b.line()),
        err: String::new(),
        secs: a.secs + b.secs,
    }
}

struct Case {
    name: &'static str,
    run: fn(&Ctx) -> Outcome,
}

macro_rules! cases {
    ($($name:literal => $f:expr),* $(,)?) => { &[$(Case { name: $name, run: $f }),*] };
}

static CASES: &[Case] = cases![
    // ---- secrets and files outside the allowed paths
    "read /etc/shadow" => |c| {
        let ctl = if c.root { c.outside(&["read", "/etc/shadow"]) } else { c.inside(&[], &["read", "/etc/passwd"]) };
        judge(&ctl, &c.inside(&[], &["read", "/etc/shadow"]), probe_denied)
    },
    "list /root" => |c| {
        let ctl = if c.root { c.outside(&["list", "/root"]) } else { c.inside(&[], &["list", "/tmp"]) };
        judge(&ctl, &c.inside(&[], &["list", "/root"]), probe_denied)
    },
    "read unbound host file" => |c| {
        let f = c.fxs("data/secret.txt");
        judge(&c.outside(&["read", &f]), &c.inside(&[], &["read", &f]), denied_with(&["ENOENT"]))
    },
    "read another user's file" => |c| {
        let ro = c.fxs("ro");
        let ctl = c.inside(&["--ro", &ro], &["read", &c.fxs("ro/public.txt")]);
        judge(&ctl, &c.inside(&["--ro", &ro], &["read", &c.fxs("ro/other.txt")]), denied_with(&["EACCES"]))
    },
    "write into a read-only bind" => |c| {
        let ro = c.fxs("ro");
        let rw = c.rw.display().to_string();
        let ctl = c.inside(&["--rw", &rw], &["write", &format!("{rw}/written")]);
        let seen = std::fs::read_to_string(c.rw.join("written")).is_ok();
        let ctl = if ctl.ok() && !seen { Res { code: 1, out: "err written file not visible outside".into(), ..ctl } } else { ctl };
        judge(&ctl, &c.inside(&["--ro", &ro], &["write", &format!("{ro}/new")]), denied_with(&["EROFS", "EACCES"]))
    },
    "truncate a read-only file" => |c| {
        let rw = c.rw.display().to_string();
        std::fs::write(c.rw.join("t.txt"), "data").ok();
        std::fs::set_permissions(c.rw.join("t.txt"), std::fs::Permissions::from_mode(0o666)).ok();
        let ctl = c.inside(&["--rw", &rw], &["truncate", &format!("{rw}/t.txt")]);
        let attempt = c.inside(&["--ro", &c.fxs("ro")], &["truncate", &c.fxs("ro/public.txt")]);
        let intact = std::fs::read_to_string(c.fx.join("ro/public.txt")).map(|s| s == "public\n").unwrap_or(false);
        let mut o = judge(&ctl, &attempt, denied_with(&["EROFS", "EACCES"]));
        if !intact {
            o.verdict = Verdict::Fail;
            o.attempt.push_str(" (file changed!)");
        }
        o
    },
    "write outside writable roots" => |c| {
        let ctl = c.inside(&[], &["write", "/tmp/ok"]);
        let mut worst = None;
        for p in ["/x", "/usr/x", "/etc/x", "/var/x", "/proc/x", "/dev/x"] {
            let r = c.inside(&[], &["write", p]);
            if !probe_denied(&r) {
                worst = Some(r);
                break;
            }
        }
        let attempt = worst.unwrap_or_else(|| Res { code: 1, out: "err EROFS all of / /usr /etc /var /proc /dev refused".into(), err: String::new(), secs: 0.0 });
        judge(&ctl, &attempt, probe_denied)
    },
    "write a root-owned file via a bind" => |c| {
        // Root-owned 0644 file in a writable bind: a worker that kept host
        // uid 0 could write it.
        let dir = c.fxs("rootowned");
        if !c.root {
            let ctl = c.inside(&["--rw", &c.rw.display().to_string()], &["write", &format!("{}/mine", c.rw.display())]);
            return judge(&ctl, &c.inside(&["--rw", &dir], &["write", &format!("{dir}/file")]), denied_with(&["EACCES"]));
        }
        let ctl = c.outside(&["write", &format!("{dir}/file")]);
        std::fs::write(c.fx.join("rootowned/file"), "root's\n").ok();
        judge(&ctl, &c.inside(&["--rw", &dir], &["write", &format!("{dir}/file")]), denied_with(&["EACCES"]))
    },
    "symlink escape" => |c| {
        let rw = c.rw.display().to_string();
        let _ = std::fs::remove_file(c.rw.join("to-secret"));
        let _ = std::fs::remove_file(c.rw.join("to-public"));
        std::os::unix::fs::symlink(c.fx.join("data/secret.txt"), c.rw.join("to-secret")).ok();
        std::os::unix::fs::symlink(c.fx.join("ro/public.txt"), c.rw.join("to-public")).ok();
        let flags = ["--rw", rw.as_str(), "--ro", &c.fxs("ro")];
        let ctl = c.inside(&flags, &["read", &format!("{rw}/to-public")]);
        let a1 = c.inside(&flags, &["read", &format!("{rw}/to-secret")]);
        let a2 = c.inside(&flags, &["symlink-read", "/etc/shadow", &format!("{rw}/made-inside")]);
        let a = if probe_denied(&a1) { a2 } else { a1 };
        judge(&ctl, &a, probe_denied)
    },
    "hardlink escape" => |c| {
        let rw = c.rw.display().to_string();
        std::fs::write(c.rw.join("a"), "a").ok();
        // protected_hardlinks: the worker may link a file it can read and write.
        std::fs::set_permissions(c.rw.join("a"), std::fs::Permissions::from_mode(0o666)).ok();
        let _ = std::fs::remove_file(c.rw.join("b"));
        let _ = std::fs::remove_file(c.rw.join("hl"));
        let flags = ["--rw", rw.as_str(), "--ro", &c.fxs("ro")];
        let ctl = c.inside(&flags, &["link", &format!("{rw}/a"), &format!("{rw}/b")]);
        judge(&ctl, &c.inside(&flags, &["link", &c.fxs("ro/public.txt"), &format!("{rw}/hl")]), denied_with(&["EXDEV", "EPERM", "EACCES"]))
    },
    "/proc/1/root escape" => |c| {
        let ctl = c.inside(&[], &["read", "/proc/self/status"]);
        let a = c.inside(&[], &["read", "/proc/1/root/etc/shadow"]);
        let b = c.inside(&[], &["read", &format!("/proc/{}/root/etc/passwd", c.sleeper_pid())]);
        judge(&ctl, if probe_denied(&a) { &b } else { &a }, probe_denied)
    },
    "the host's mount tree is detached" => |c| {
        // Mount points (field 5 of mountinfo) at "/": the host shows its
        // root filesystem; inside, only the sandbox's tmpfs may be there
        // (the old root stacked on it by pivot_root is detached before the
        // command starts) and no host mount such as /sys or /run.
        let roots = |r: &Res| -> Vec<String> {
            r.out
                .lines()
                .filter(|l| l.split_whitespace().nth(4) == Some("/"))
                .map(|l| l.split(" - ").nth(1).unwrap_or("").split_whitespace().next().unwrap_or("").to_string())
                .collect()
        };
        let host_only = |r: &Res| r.out.lines().any(|l| matches!(l.split_whitespace().nth(4), Some("/sys") | Some("/run")));
        let ctl = c.exec(Command::new("/bin/cat").arg("/proc/self/mountinfo"));
        let ctl_roots = roots(&ctl);
        let ctl = Res { code: if ctl.ok() && ctl_roots.iter().any(|t| t != "tmpfs") { 0 } else { 1 }, out: format!("ok host \"/\" is {ctl_roots:?}"), ..ctl };
        let a = c.inside_cmd(&[], &["/bin/cat", "/proc/self/mountinfo"]);
        let a_roots = roots(&a);
        let clean = a.ok() && a_roots == ["tmpfs"] && !host_only(&a);
        let a = Res { code: if clean { 1 } else { 0 }, out: format!("\"/\" is {a_roots:?}, host mounts {}", if host_only(&a) { "VISIBLE" } else { "absent" }), ..a };
        judge(&ctl, &a, |r| r.code == 1)
    },
    "exec from private /tmp" => |c| {
        let ctl = c.inside(&[], &["exec", "/bin/true"]);
        judge(&ctl, &c.inside(&[], &["copy-exec", "/bin/true", "/tmp/t"]), denied_with(&["EACCES"]))
    },
    "exec from a writable bind" => |c| {
        let rw = c.rw.display().to_string();
        let ctl = c.outside(&["copy-exec", "/bin/true", &format!("{rw}/t-outside")]);
        judge(&ctl, &c.inside(&["--rw", &rw], &["copy-exec", "/bin/true", &format!("{rw}/t")]), denied_with(&["EACCES"]))
    },
    "fill the private /tmp" => |c| {
        let ctl = c.inside(&["--tmp-size", "4M"], &["write-bytes", "/tmp/small", "1048576"]);
        let a = c.inside(&["--tmp-size", "4M"], &["fill", "/tmp/big", &c.guard]);
        let capped = |r: &Res| {
            probe_denied(r) && r.errno() == Some("ENOSPC") && r.out.split_whitespace().nth(2).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n <= 4 << 20)
        };
        judge(&ctl, &a, capped)
    },
    "host /dev/shm is not shared" => |c| {
        let name = format!("/dev/shm/nodecell-suite-{}-{}", c.label, std::process::id());
        std::fs::write(&name, "host shm").ok();
        let ctl = both(c.outside(&["read", &name]), c.inside(&[], &["write", "/dev/shm/inside"]));
        let a = c.inside(&[], &["read", &name]);
        let _ = std::fs::remove_file(&name);
        judge(&ctl, &a, denied_with(&["ENOENT"]))
    },
    "setuid binary gains nothing" => |c| {
        let suid = c.fxs("bin/suid-probe");
        if !Path::new(&suid).exists() {
            return Outcome::skip("no set-uid fixture (the suite was not started as root)");
        }
        // Outside, as the unprivileged user, the set-uid bit works.
        let ctl = if c.root { c.outside(&["as-test-user", &suid, "sandbox-test", "--probe", "whoami"]) } else { c.exec(Command::new(&suid).args(["sandbox-test", "--probe", "whoami"])) };
        let ctl = if ctl.ok() && ctl.out.contains("euid=0") { ctl } else { Res { code: 1, ..ctl } };
        let a = c.inside(&[], &["exec", &suid, "sandbox-test", "--probe", "whoami"]);
        let gained = a.out.contains("euid=0");
        judge(&ctl, &a, |r| r.ok() && !gained && r.out.contains("euid="))
    },
    "block devices" => |c| {
        let ctl = both(c.outside(&["exists", "/dev/vda"]), c.inside(&[], &["open", "/dev/null"]));
        for d in ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0", "/dev/mem", "/dev/port"] {
            let r = c.inside(&[], &["open", d]);
            if !probe_denied(&r) {
                return judge(&ctl, &r, probe_denied);
            }
        }
        judge(&ctl, &Res { code: 1, out: "err ENOENT vda sda nvme0n1 loop0 mem port absent".into(), err: String::new(), secs: 0.0 }, probe_denied)
    },
    "read /dev/kmsg" => |c| {
        let ctl = if c.root { c.outside(&["open", "/dev/kmsg"]) } else { both(c.outside(&["exists", "/dev/kmsg"]), c.inside(&[], &["read-n", "/dev/urandom", "16"])) };
        judge(&ctl, &c.inside(&[], &["open", "/dev/kmsg"]), denied_with(&["ENOENT"]))
    },
    "write /proc/sys" => |c| {
        let f = "/proc/sys/kernel/panic_on_oops";
        let ctl = if c.root { both(c.outside(&["rewrite", f]), c.inside(&[], &["read", f])) } else { c.inside(&[], &["read", f]) };
        judge(&ctl, &c.inside(&[], &["rewrite", f]), probe_denied)
    },
    "write /sys" => |c| {
        let f = "/sys/kernel/mm/transparent_hugepage/enabled";
        let ctl = c.outside(&["read", f]);
        let a = c.inside(&[], &["rewrite", f]);
        let b = c.inside(&["--gpu"], &["rewrite", f]);
        judge(&ctl, if probe_denied(&a) { &b } else { &a }, probe_denied)
    },
    // ---- network
    "TCP to a host loopback service" => |c| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port().to_string();
        let ctl = both(c.outside(&["tcp", "127.0.0.1", &port]), c.inside(&["--net"], &["tcp", "127.0.0.1", &port]));
        judge(&ctl, &c.inside(&[], &["tcp", "127.0.0.1", &port]), denied_with(&["ECONNREFUSED", "ENETUNREACH", "ETIMEDOUT"]))
    },
    "UDP to a host loopback service" => |c| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let port = s.local_addr().unwrap().port().to_string();
        let recv = |s: &std::net::UdpSocket| {
            let mut b = [0u8; 64];
            s.recv(&mut b).map(|n| String::from_utf8_lossy(&b[..n]).into_owned()).ok()
        };
        let out = c.outside(&["udp", "127.0.0.1", &port, "outside"]);
        let got_out = recv(&s);
        let ctl = if out.ok() && got_out.as_deref() == Some("outside") { out } else { Res { code: 1, ..out } };
        let a = c.inside(&[], &["udp", "127.0.0.1", &port, "inside"]);
        let got_in = recv(&s);
        let a = Res { out: format!("{} (host received: {:?})", a.line(), got_in), ..a };
        judge(&ctl, &a, |_| got_in.is_none())
    },
    "raw IP socket" => |c| {
        let ctl = if c.root { c.outside(&["socket", "raw"]) } else { c.inside(&[], &["socket", "udp"]) };
        judge(&ctl, &c.inside(&[], &["socket", "raw"]), denied_with(&["EPERM"]))
    },
    "packet socket" => |c| {
        let ctl = if c.root { c.outside(&["socket", "packet"]) } else { c.inside(&[], &["socket", "unix"]) };
        judge(&ctl, &c.inside(&["--net"], &["socket", "packet"]), denied_with(&["EPERM"]))
    },
    "other socket families" => |c| {
        let ctl = c.inside(&[], &["socket", "netlink"]);
        let mut last = None;
        for fam in ["vsock", "key", "alg", "bluetooth"] {
            let r = c.inside(&[], &["socket", fam]);
            if !denied_with(&["EPERM"])(&r) {
                return judge(&ctl, &r, |_| false);
            }
            last = Some(r);
        }
        judge(&ctl, &Res { out: "err EPERM vsock key alg bluetooth refused".into(), ..last.unwrap() }, |_| true)
    },
    "host abstract unix socket" => |c| {
        let name = format!("nodecell-suite-{}-{}", c.label, std::process::id());
        let _l = abstract_listener(&name);
        let ctl = c.outside(&["abstract", &name]);
        judge(&ctl, &c.inside(&[], &["abstract", &name]), denied_with(&["ECONNREFUSED", "ENOENT"]))
    },
    "host abstract socket with --net" => |c| {
        let name = format!("nodecell-suite-net-{}-{}", c.label, std::process::id());
        let _l = abstract_listener(&name);
        let ctl = c.outside(&["abstract", &name]);
        // Same network namespace: only Landlock's scoping stands in the way.
        judge(&ctl, &c.inside(&["--net"], &["abstract", &name]), denied_with(&["EPERM"]))
    },
    "network interfaces" => |c| {
        // Loopback works inside; it is the only interface there.
        let ctl = c.inside(&[], &["tcp-self"]);
        judge(&ctl, &c.inside(&[], &["ifaces"]), |r| r.out.trim() == "ok lo")
    },
    // ---- namespaces, privileges, other processes
    "nested user namespace" => |c| {
        judge(&c.outside(&["unshare-user"]), &c.inside(&[], &["unshare-user"]), denied_with(&["EPERM"]))
    },
    "mount a filesystem" => |c| {
        judge(&c.outside_privileged(&["mount-tmpfs", "/tmp", &c.guard]), &c.inside(&[], &["mount-tmpfs", "/tmp", &c.guard]), denied_with(&["EPERM"]))
    },
    "chroot" => |c| {
        judge(&c.outside_privileged(&["chroot", "/tmp"]), &c.inside(&[], &["chroot", "/tmp"]), denied_with(&["EPERM"]))
    },
    "pivot_root" => |c| {
        judge(&c.outside_privileged(&["syscalls", "pivot_root"]), &c.inside(&[], &["syscalls", "pivot_root"]), all_eperm)
    },
    "ptrace a host process" => |c| {
        let pid = c.sleeper_pid();
        judge(&c.outside(&["ptrace", &pid]), &c.inside(&[], &["ptrace", &pid]), denied_with(&["ESRCH", "EPERM"]))
    },
    "ptrace own child" => |c| {
        judge(&c.outside(&["ptrace-child"]), &c.inside(&[], &["ptrace-child"]), denied_with(&["EPERM"]))
    },
    "process_vm_readv a host process" => |c| {
        let pid = c.sleeper_pid();
        judge(&c.outside(&["vmread-child"]), &c.inside(&[], &["vmread", &pid]), denied_with(&["ESRCH", "EPERM"]))
    },
    "process_vm_readv own child" => |c| {
        judge(&c.outside(&["vmread-child"]), &c.inside(&[], &["vmread-child"]), denied_with(&["EPERM"]))
    },
    "see host pids" => |c| {
        let pid = c.sleeper_pid();
        let ctl = c.outside(&["see-pid", &pid]);
        let a = c.inside(&[], &["see-pid", &pid]);
        let few = c.inside(&[], &["count-pids"]);
        let ok_few = few.ok() && few.out.split_whitespace().nth(1).and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n <= 3);
        let mut o = judge(&ctl, &a, denied_with(&["ENOENT"]));
        o.attempt = format!("{}; {}", o.attempt, few.line());
        if !ok_few {
            o.verdict = Verdict::Fail;
        }
        o
    },
    "signal host pids" => |c| {
        let pid = c.sleeper_pid();
        let ctl = c.outside(&["kill0", &pid]);
        let a = c.inside(&[], &["kill0", &pid]);
        let _all = c.inside(&[], &["kill-all", &c.guard]);
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        let mut o = judge(&ctl, &a, denied_with(&["ESRCH"]));
        o.attempt = format!("{}; kill(-1, SIGKILL) inside: host process {}", o.attempt, if alive { "alive" } else { "KILLED" });
        if !alive {
            o.verdict = Verdict::Fail;
        }
        o
    },
    "setns via /proc" => |c| {
        let ctl = c.inside(&[], &["open", "/proc/self/ns/net"]);
        let a = c.inside(&[], &["setns", "/proc/self/ns/user"]);
        let b = c.inside(&[], &["setns", &format!("/proc/{}/ns/mnt", c.sleeper_pid())]);
        let mut o = judge(&ctl, &a, denied_with(&["EPERM"]));
        if !denied_with(&["ENOENT"])(&b) {
            o.verdict = Verdict::Fail;
        }
        o.attempt = format!("{}; host pid ns file: {}", o.attempt, b.line());
        o
    },
    "capabilities and no_new_privs" => |c| {
        let ctl = c.outside(&["caps"]);
        let a = c.inside(&[], &["caps"]);
        let clear = a.out.contains("CapEff=0000000000000000") && a.out.contains("CapBnd=0000000000000000") && a.out.contains("CapPrm=0000000000000000") && a.out.contains("CapAmb=0000000000000000") && a.out.contains("NoNewPrivs=1") && a.out.contains("Seccomp=2");
        // The control shows the probe reads real values: outside differs.
        let differs = ctl.out != a.out;
        let ctl = if differs { ctl } else { Res { code: 1, ..ctl } };
        judge(&ctl, &a, |_| clear)
    },
    "worker uid is not host root" => |c| {
        let ctl = c.outside(&["whoami"]);
        let a = c.inside_status(&[], &["/bin/sleep", "1"]);
        judge(&ctl, &a, |r| r.code == 1 && !r.out.contains("host-uid=0 ") && !r.out.contains("host-uid=?"))
    },
    "mount family syscalls" => |c| family_case(c, "mount"),
    "ptrace family syscalls" => |c| family_case(c, "ptrace"),
    "bpf and perf syscalls" => |c| family_case(c, "bpf"),
    "key syscalls" => |c| family_case(c, "keys"),
    "kexec and module syscalls" => |c| family_case(c, "modules"),
    "file handle syscalls" => |c| family_case(c, "handles"),
    "userfaultfd" => |c| family_case(c, "userfaultfd"),
    "io_uring" => |c| family_case(c, "io_uring"),
    "unshare, setns, clone(CLONE_NEW*)" => |c| family_case(c, "namespaces"),
    "system-wide syscalls" => |c| family_case(c, "system"),
    "clone3 returns ENOSYS" => |c| {
        let ctl = c.outside(&["syscalls", "clone3"]);
        let a = c.inside(&[], &["syscalls", "clone3"]);
        judge(&Res { code: if ctl.out.contains("=ENOSYS") { 1 } else { 0 }, ..ctl }, &a, |r| r.out.contains("clone3=ENOSYS"))
    },
    "TIOCSTI and TIOCLINUX" => |c| family_case(c, "tty"),
    "x32 ABI syscalls" => |c| {
        if !cfg!(target_arch = "x86_64") {
            return Outcome::skip("x32 exists on x86-64 only");
        }
        family_case(c, "x32")
    },
    // ---- pid 1, the report channel, memfds, identities
    "read pid 1's environment" => |c| {
        let ctl = both(c.outside(&["proc-peek", &c.sleeper_pid(), "environ"]), c.inside(&[], &["proc-peek-child", "environ"]));
        judge(&ctl, &c.inside(&[], &["proc-peek", "1", "environ"]), denied_with(&["EACCES"]))
    },
    "read pid 1's memory" => |c| {
        let ctl = both(c.outside(&["mem-read", &c.sleeper_pid()]), c.inside(&[], &["mem-read-child"]));
        judge(&ctl, &c.inside(&[], &["mem-read", "1"]), denied_with(&["EACCES"]))
    },
    "pid 1's command line" => |c| {
        // Outside, a process's command line shows its host paths.
        let ctl = c.outside(&["proc-peek", &c.sleeper_pid(), "cmdline"]);
        let ctl = if ctl.out.contains("/bin/sleep") { ctl } else { Res { code: 1, ..ctl } };
        let a = c.inside(&[], &["proc-peek", "1", "cmdline"]);
        let shown = a.out.split_once(": ").map(|(_, t)| t.trim().to_string()).unwrap_or_default();
        judge(&ctl, &a, |r| r.ok() && shown == "nodecell-init")
    },
    "forge the report pipe" => |c| {
        let a = c.inside(&[], &["forge-report"]);
        let ctl = Res { code: if a.out.contains("control=ok") { 0 } else { 1 }, out: "ok a pipe of the worker's own child is writable through /proc/<pid>/fd".into(), ..a.clone() };
        let line = format!("{}; nodecell exit {}", a.line(), a.code);
        judge(&ctl, &Res { out: line, ..a.clone() }, |_| a.code == 3 && a.out.contains("opened=0") && !a.err.contains("forged"))
    },
    "exec a memfd" => |c| {
        let ctl = c.outside(&["memfd-exec"]);
        judge(&ctl, &c.inside(&[], &["memfd-exec"]), probe_denied)
    },
    "host cgroup paths" => |c| {
        let ctl = c.outside(&["cgroup-paths"]);
        let a = c.inside(&[], &["cgroup-paths"]);
        let b = c.inside(&["--memory", "256M", "--pids", "64"], &["cgroup-paths"]);
        judge(&ctl, if probe_denied(&a) { &b } else { &a }, denied_with(&["ENOENT"]))
    },
    "another cell's files" => |c| {
        if !c.root {
            return Outcome::skip("rootless launchers map only the caller's uid: every rootless cell is the same user (kept apart by what each is given)");
        }
        let rw = c.rw.display().to_string();
        let f = format!("{rw}/cell-a-private");
        let _ = std::fs::remove_file(&f);
        let ctl = c.inside(&["--rw", &rw], &["write-private", &f]);
        let a = c.inside(&["--rw", &rw], &["read", &f]);
        let _ = std::fs::remove_file(&f);
        judge(&ctl, &a, denied_with(&["EACCES"]))
    },
    "set-uid bits in a writable bind" => |c| {
        let rw = c.rw.display().to_string();
        let ctl = c.outside(&["setid", &rw]);
        judge(&ctl, &c.inside(&["--rw", &rw], &["setid", &rw]), probe_denied)
    },
    "device nodes through a bind" => |c| {
        let ctl = both(c.outside(&["open", "/dev/null"]), c.inside(&[], &["open", "/dev/null"]));
        judge(&ctl, &c.inside(&["--ro", "/dev:/hostdev"], &["open", "/hostdev/null"]), denied_with(&["EACCES"]))
    },
    "prctl beyond the allow-list" => |c| family_case(c, "prctl"),
    "page cache state (cachestat)" => |c| family_case(c, "pagecache"),
    "netlink beyond NETLINK_ROUTE" => |c| {
        let ctl = both(c.outside(&["socket", "netlink-uevent"]), c.inside(&[], &["socket", "netlink"]));
        for fam in ["netlink-uevent", "netlink-generic", "netlink-diag"] {
            let r = c.inside(&[], &["socket", fam]);
            if !denied_with(&["EPERM"])(&r) {
                return judge(&ctl, &r, |_| false);
            }
        }
        judge(&ctl, &Res { code: 1, out: "err EPERM uevent generic sock_diag refused".into(), err: String::new(), secs: 0.0 }, |_| true)
    },
    "tty ioctls on an inherited tty" => |c| tty_case(c),
    "--overlay: writes stay out" => |c| overlay_case(c),
    "zygote workers confined" => |c| zygote_case(c),
    "supplementary groups" => |c| groups_case(c),
    // ---- environment, fds
    "inherited fds" => |c| inherited_fds(c),
    "host environment" => |c| {
        let mut cmd = Command::new(&c.nodecell);
        cmd.args(c.run_args(&["--env", "ALLOWED=yes"])).arg("--").arg(&c.probe).args(["sandbox-test", "--probe", "env"]);
        cmd.env("NODECELL_SUITE_SECRET", "hunter2").env("AWS_SECRET_ACCESS_KEY", "x");
        let a = c.exec(&mut cmd);
        let ctl = Res { code: if a.out.contains("ALLOWED=yes") { 0 } else { 1 }, out: "ok --env ALLOWED=yes visible".into(), ..a.clone() };
        let leaked = a.out.contains("hunter2") || a.out.contains("AWS_SECRET") || a.out.contains("/root");
        judge(&ctl, &Res { out: format!("{} vars, secrets {}", a.out.lines().count(), if leaked { "LEAKED" } else { "absent" }), ..a }, |_| !leaked)
    },
    // ---- resources
    "fork bomb vs --pids" => |c| {
        let ctl = c.inside(&["--pids", "64"], &["fork", "10", &c.guard]);
        let a = c.inside(&["--pids", "32"], &["fork", "10000", &c.guard]);
        // "err EAGAIN after N forks"
        let n = a.out.split_whitespace().nth(3).and_then(|n| n.parse::<u32>().ok()).unwrap_or(u32::MAX);
        judge(&ctl, &a, |r| probe_denied(r) && n < 32)
    },
    "memory hog vs --memory" => |c| {
        let ctl = c.inside(&["--memory", "64M"], &["alloc", "16"]);
        let a = c.inside(&["--memory", "64M"], &["alloc", "512"]);
        let said = a.err.lines().any(|l| l.contains("memory limit") && l.contains("--memory 64M"));
        let a2 = Res { out: format!("exit {}; stderr: {}", a.code, a.err.trim()), ..a.clone() };
        judge(&ctl, &a2, |_| a.code == 137 && said)
    },
    "CPU spin vs --timeout" => |c| {
        let marker = format!("nodecell-suite-spin-{}-{}", c.label, std::process::id());
        let script = format!("{} {} while :; do :; done", bg(&marker, "while :; do :; done"), bg(&marker, "sleep 600"));
        let start = Instant::now();
        let child = Command::new(&c.nodecell)
            .args(c.run_args(&["--timeout", "2"]))
            .args(["--", "/bin/sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(child) = child else { return Outcome::fail("-", "spawn failed") };
        // Control: the spinning and sleeping children really run inside.
        let started = wait_until(1.8, || pids_with(&marker).len() >= 2);
        let out = child.wait_with_output();
        let secs = start.elapsed().as_secs_f64();
        let code = out.as_ref().ok().and_then(|o| o.status.code()).unwrap_or(-1);
        let gone = wait_until(3.0, || pids_with(&marker).is_empty());
        let ctl = Res { code: if started { 0 } else { 1 }, out: format!("ok background spinner and sleeper running: {started}"), err: String::new(), secs: 0.0 };
        let a = Res { code, out: format!("exit {code} after {secs:.2}s, leftovers: {}", if gone { "none" } else { "SOME" }), err: String::new(), secs };
        judge(&ctl, &a, |_| code == 124 && secs < 5.0 && gone)
    },
    "CPU quota --cpu" => |c| {
        // 1.5 s at --cpu 0.05 should use about 0.075 s of CPU.
        let ctl = c.inside(&[], &["spin", "1.5"]);
        let a = c.inside(&["--cpu", "0.05"], &["spin", "1.5"]);
        let used = |r: &Res| r.out.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).unwrap_or(99.0);
        let lim = used(&a);
        // The unlimited spinner must clearly out-run the limited one (on a
        // busy machine it gets far less than a whole CPU, so no fixed floor
        // beyond twice the quota).
        let ctl = if used(&ctl) >= 0.15 && used(&ctl) >= 2.0 * lim + 0.03 { ctl } else { Res { code: 1, ..ctl } };
        judge(&ctl, &a, |_| lim <= 0.15)
    },
    "launcher death kills the sandbox" => |c| launcher_death(c),
    "background children die with it" => |c| {
        let marker = format!("nodecell-suite-bg-{}-{}", c.label, std::process::id());
        let (m1, m2) = marker.split_at(marker.len() / 2);
        let script = format!("setsid sh -c 'sh -c \"sleep 600; : {m1}\"\"{m2}\" >/dev/null 2>&1 </dev/null &' ; sleep 0.2");
        // Outside, the daemon survives its parent.
        let out = c.exec(Command::new("/bin/sh").args(["-c", &script]));
        let survived = wait_until(1.0, || !pids_with(&marker).is_empty());
        kill_groups(&pids_with(&marker));
        let ctl = Res { code: if out.ok() && survived { 0 } else { 1 }, out: format!("ok outside the daemon outlives its parent: {survived}"), ..out };
        let a = c.inside_cmd(&[], &["/bin/sh", "-c", &script]);
        let gone = wait_until(2.0, || pids_with(&marker).is_empty());
        judge(&ctl, &Res { out: format!("exit {}, daemon {}", a.code, if gone { "gone" } else { "SURVIVED" }), ..a }, |_| gone)
    },
    "fail closed when a wall is missing" => |c| fail_closed(c),
    // ---- the positive side
    "python multiprocessing and threads" => |c| {
        let code = "import multiprocessing as mp, threading\ndef sq(x): return x*x\nif __name__ == '__main__':\n    with mp.Pool(2) as p: r = sum(p.map(sq, range(10)))\n    out = []\n    ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n    [t.start() for t in ts]; [t.join() for t in ts]\n    print('ok', r, len(out))";
        let ctl = c.exec(Command::new(PYTHON).args(["-c", code]));
        let a = c.inside_cmd(&["--pids", "64"], &[PYTHON, "-c", code]);
        let good = a.ok() && a.out.trim() == "ok 285 8";
        let a = Res { code: if good { 1 } else { 0 }, ..a };
        judge(&ctl, &a, |r| r.code == 1)
    },
    "the command gets the caller's CPUs and time slice" => |c| {
        // The launch runs pinned to one CPU with a short slice until the
        // command's exec (sandbox/src/cpu.rs); the command's own process,
        // read by the shell's builtins first thing, never does.
        let script = "while IFS= read -r l; do case \"$l\" in Cpus_allowed_list*) echo \"$l\";; esac; done < /proc/self/status; \
                      [ -r /proc/self/sched ] && while IFS= read -r l; do case \"$l\" in se.slice*) echo \"$l\";; esac; done < /proc/self/sched; true";
        let norm = |r: &Res| r.out.split_whitespace().collect::<Vec<_>>().join(" ");
        let ctl = c.exec(Command::new("/bin/sh").args(["-c", script]));
        let a = c.inside_cmd(&[], &["/bin/sh", "-c", script]);
        let same = a.ok() && ctl.ok() && norm(&a) == norm(&ctl) && norm(&ctl).contains("Cpus_allowed_list");
        let a = Res { code: if same { 1 } else { 0 }, out: format!("inside: {}", norm(&a)), ..a };
        judge(&Res { out: norm(&ctl), ..ctl }, &a, |r| r.code == 1)
    },
    "numpy from a mounted venv" => |c| {
        let venv = c.fxs("venv");
        let py = format!("{venv}/bin/python");
        let code = "import numpy; print('ok', numpy.__version__, int(numpy.arange(5).sum()))";
        let with = c.inside_cmd(&["--ro", &venv], &[&py, "-c", code]);
        let without = c.inside_cmd(&[], &[PYTHON, "-c", "import numpy"]);
        let works = with.ok() && with.out.contains("ok") && with.out.trim().ends_with(" 10");
        // The control here is the negative: without the venv, numpy is absent.
        let ctl = Res { code: if without.code != 0 { 0 } else { 1 }, out: format!("ok without the venv: exit {} (ImportError)", without.code), ..without };
        judge(&ctl, &Res { code: if works { 1 } else { 0 }, ..with }, |r| r.code == 1)
    },
];

fn all_eperm(r: &Res) -> bool {
    let line = r.out.lines().last().unwrap_or("");
    let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
    !parts.is_empty() && parts.iter().all(|p| p.ends_with("=EPERM"))
}

/// A syscall family: every member fails with EPERM inside; outside (as root,
/// or in a user namespace when rootless) at least one reaches the kernel.
fn family_case(c: &Ctx, family: &str) -> Outcome {
    let ctl = c.outside_privileged(&["syscalls", family]);
    let reached = ctl
        .out
        .split_whitespace()
        .skip(1)
        .any(|p| !p.ends_with("=EPERM"));
    if !reached && !c.root && ["modules", "bpf", "system"].contains(&family) {
        return Outcome::skip(format!(
            "control needs host root (unprivileged callers get EPERM outside too: {})",
            ctl.line()
        ));
    }
    let ctl = Res {
        code: if reached { 0 } else { 1 },
        ..ctl
    };
    judge(&ctl, &c.inside(&[], &["syscalls", family]), all_eperm)
}

impl Ctx {
    /// Runs `argv` in a sandbox with `--status-fd`, reads the host uid of the
    /// sandbox's init from the first status line: `err`-style result with
    /// the uid, code 1 = checked.
    fn inside_status(&self, flags: &[&str], argv: &[&str]) -> Res {
        let (r, w) = pipe();
        let mut a = self.run_args(flags);
        a.extend(["--status-fd".into(), "3".into(), "--".into()]);
        a.extend(argv.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(&self.nodecell);
        cmd.args(&a)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let wfd = std::os::fd::AsRawFd::as_raw_fd(&w);
        // SAFETY: dup2 is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(wfd, 3) < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Res {
                    code: -1,
                    out: String::new(),
                    err: e.to_string(),
                    secs: 0.0,
                }
            }
        };
        drop(w);
        let mut line = String::new();
        let mut rd = BufReader::new(r);
        let _ = rd.read_line(&mut line);
        let pid = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["pid"].as_i64())
            .unwrap_or(0);
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2).unwrap_or("?").to_string())
            })
            .unwrap_or_else(|| "?".into());
        let _ = child.wait();
        Res {
            code: 1,
            out: format!("err checked host-uid={uid} (sandbox init pid {pid})"),
            err: String::new(),
            secs: 0.0,
        }
    }
}

fn inherited_fds(c: &Ctx) -> Outcome {
    // An fd to the host's / that is not close-on-exec (a classic escape:
    // fchdir to it and walk the host tree), and a pipe we keep on purpose.
    let root_dir = std::fs::File::open("/").unwrap();
    let stray = std::os::fd::AsRawFd::as_raw_fd(&root_dir);
    let (r, w) = pipe();
    let keep = std::os::fd::AsRawFd::as_raw_fd(&w);
    for fd in [stray, keep] {
        // SAFETY: F_SETFD on fds we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    let mut cmd = Command::new(&c.nodecell);
    cmd.args(c.run_args(&["--keep-fd", &keep.to_string()]))
        .arg("--")
        .arg(&c.probe)
        .args([
            "sandbox-test",
            "--probe",
            "fds",
            &keep.to_string(),
            &stray.to_string(),
        ]);
    let a = c.exec(&mut cmd);
    drop(w);
    let mut got = String::new();
    let _ = BufReader::new(r).read_to_string(&mut got);
    drop(root_dir);
    let ctl = Res {
        code: if got.trim() == "through-kept-fd" {
            0
        } else {
            1
        },
        out: format!("ok --keep-fd {keep}: {:?} arrived", got.trim()),
        err: String::new(),
        secs: 0.0,
    };
    judge(&ctl, &a, |r| {
        probe_denied(r) && r.out.contains(&format!("fd {stray} closed"))
    })
}

/// `--overlay LOWER:STATE`: the pack writes into its folder; the writes land
/// in STATE, LOWER stays as it was, and (root) another cell cannot read STATE.
fn overlay_case(c: &Ctx) -> Outcome {
    let lower = c.fx.join("ro");
    let state = c.rw.join(format!("overlay-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let spec = format!("{}:{}", lower.display(), state.display());
    let target = lower.join("written-by-pack.txt");
    let t = target.display().to_string();
    let a = c.inside(&["--overlay", &spec], &["write", &t]);
    let in_state = state.join("upper/written-by-pack.txt");
    // Control: the write worked inside and is kept in the state directory.
    let ctl = Res {
        code: if a.ok() && in_state.exists() { 0 } else { 1 },
        out: format!(
            "ok inside: {}; kept in {}: {}",
            a.line(),
            in_state.display(),
            in_state.exists()
        ),
        ..a.clone()
    };
    let reached_lower = target.exists();
    let _ = std::fs::remove_file(&target);
    // Another cell given the state directory cannot read it (its own uid);
    // a cell with the owner's uid (--worker-uid) can: the uid is the wall.
    let (other, owner_reads) = if c.root {
        use std::os::unix::fs::MetadataExt;
        let st = state.display().to_string();
        let f = in_state.display().to_string();
        let owner = std::fs::metadata(&state)
            .map(|m| m.uid().to_string())
            .unwrap_or_default();
        let r = c.inside(&["--ro", &st], &["read", &f]);
        let o = c.inside(&["--worker-uid", &owner, "--ro", &st], &["read", &f]);
        (Some(r), o.ok())
    } else {
        (None, true)
    };
    let ctl = if owner_reads {
        ctl
    } else {
        Res {
            code: 1,
            out: format!("{}; the owner's uid could NOT read it", ctl.out),
            ..ctl
        }
    };
    let other_denied = other.as_ref().is_none_or(denied_with(&["EACCES"]));
    let _ = std::fs::remove_dir_all(&state);
    judge(
        &ctl,
        &Res {
            code: 1,
            out: format!(
                "lower folder {}; another cell reading the state: {}",
                if reached_lower {
                    "WRITTEN"
                } else {
                    "untouched"
                },
                other
                    .map(|r| r.line())
                    .unwrap_or_else(|| "n/a rootless (one uid)".into())
            ),
            err: String::new(),
            secs: 0.0,
        },
        |_| !reached_lower && other_denied,
    )
}

/// A zygote forks two workers and confines each to its own pack with
/// `nodecell_sandbox::confine` (each its own uid from `--uid-range` as
/// root): the worker reads its pack and writes its rw dir, and cannot read
/// the other pack, write elsewhere, signal or read the memory of the zygote
/// or its sibling; unconfined (the control) it could.
fn zygote_case(c: &Ctx) -> Outcome {
    let base = c.rw.join(format!("zygote-{}", std::process::id()));
    let (pa, pb, rw) = (base.join("a"), base.join("b"), base.join("rw"));
    let mk = || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for d in [&base, &pa, &pb, &rw] {
            std::fs::create_dir_all(d)?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777))?;
        std::fs::set_permissions(&pa, std::fs::Permissions::from_mode(0o777))?;
        std::fs::write(pa.join("code.py"), "a")?;
        std::fs::write(pb.join("secret.txt"), "b")
    };
    if let Err(e) = mk() {
        let r = Res {
            code: 1,
            out: format!("err fixture: {e}"),
            err: String::new(),
            secs: 0.0,
        };
        return judge(&r, &r, |_| false);
    }
    let (a, b, w) = (
        pa.display().to_string(),
        pb.display().to_string(),
        rw.display().to_string(),
    );
    // Pack A is bound writable: only the confinement keeps the worker from
    // planting files in its own code.
    let mut flags = vec!["--rw", &a, "--ro", &b, "--rw", &w];
    if c.root {
        flags.extend(["--uid-range", "3"]);
    }
    let r = c.inside(
        &flags,
        &["zygote", &a, &b, &w, if c.root { "1" } else { "0" }],
    );
    let _ = std::fs::remove_dir_all(&base);
    let kv: std::collections::HashMap<&str, &str> = r
        .out
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .collect();
    let is = |k: &str, v: &str| kv.get(k) == Some(&v);
    let ctl_ok = r.ok()
        && [
            "ctl-read-b",
            "ctl-write-tmp",
            "ctl-signal-zygote",
            "ctl-zygote-mem",
        ]
        .iter()
        .all(|k| is(k, "ok"));
    let ctl = Res {
        code: if ctl_ok { 0 } else { 1 },
        out: format!(
            "ok unconfined: {}",
            r.out.split(" uid=").next().unwrap_or("").trim()
        ),
        ..r.clone()
    };
    let attempt = Res {
        out: r
            .out
            .split_once(" uid=")
            .map(|(_, t)| format!("uid={t}"))
            .unwrap_or(r.out.clone()),
        ..r
    };
    judge(&ctl, &attempt, move |_| {
        is("read-a", "ok")
            && is("write-rw", "ok")
            && is("uid", if c.root { "+1" } else { "+0" })
            && is("landlock-scoped", "true")
            && is("read-b", "EACCES")
            && is("write-a", "EACCES")
            && is("write-tmp", "EACCES")
            && is("signal-zygote", "EPERM")
            && is("signal-sibling", "EPERM")
            && !is("zygote-mem", "ok")
            && !is("sibling-mem", "ok")
    })
}

/// A pty slave kept into the sandbox: terminal requests outside the
/// allow-list are refused, the allowed ones work; outside, the refused
/// ones reach the kernel.
fn tty_case(c: &Ctx) -> Outcome {
    // SAFETY: plain calls on the fds we open here.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 || libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Outcome::fail("-", "no pty on this host");
        }
        let name = libc::ptsname(m);
        let s = if name.is_null() {
            -1
        } else {
            libc::open(name, libc::O_RDWR | libc::O_NOCTTY)
        };
        (m, s)
    };
    if slave < 0 {
        return Outcome::fail("-", "cannot open the pty slave");
    }
    let fd = slave.to_string();
    let ctl = c.outside(&["tty", &fd]);
    let a = c.inside(&["--keep-fd", &fd], &["tty", &fd]);
    // SAFETY: closing the fds opened above.
    unsafe {
        libc::close(slave);
        libc::close(master);
    }
    // The control must show the refused requests reaching the kernel.
    let reached = ctl.out.contains("TIOCSWINSZ=ok") || ctl.out.contains("TIOCSETD=ok");
    judge(
        &Res {
            code: if reached { 0 } else { 1 },
            ..ctl
        },
        &a,
        denied_with(&["EPERM"]),
    )
}

/// Root launchers drop every supplementary group; a rootless launcher
/// cannot, so required mode refuses to run and best-effort says so.
fn groups_case(c: &Ctx) -> Outcome {
    if !c.root {
        return Outcome::skip("the rootless half runs without supplementary groups; the root half checks a rootless launcher that has one");
    }
    let (uid, gid) = match ensure_user() {
        Ok(x) => x,
        Err(e) => return Outcome::fail("-", e.to_string()),
    };
    // Runs `argv` with the extra group OTHER_UID, as root or as the test user.
    let with_group = |argv: Vec<String>, as_user: bool| {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let extra = [OTHER_UID as libc::gid_t];
        // SAFETY: async-signal-safe calls only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(1, extra.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if as_user && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0) {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c.exec(&mut cmd)
    };
    let probe = |op: &str| {
        vec![
            c.probe.display().to_string(),
            "sandbox-test".into(),
            "--probe".into(),
            op.into(),
        ]
    };
    let run = |flags: &[&str], tail: Vec<String>| {
        let mut v = vec![c.nodecell.display().to_string()];
        v.extend(c.run_args(flags));
        v.push("--".into());
        v.extend(tail);
        v
    };
    // Control: a process with the extra group shows it.
    let ctl = with_group(probe("groups"), false);
    // A root launcher that has the group: its worker has none.
    let a = with_group(run(&[], probe("groups")), false);
    // A rootless launcher with the group cannot drop it: required refuses.
    let echo = vec!["/bin/echo".to_string(), "ran".into()];
    let req = with_group(run(&["--mode", "required"], echo.clone()), true);
    let best = with_group(run(&["--mode", "best-effort"], echo), true);
    let named = req.err.contains("groups:") && req.err.contains(&OTHER_UID.to_string());
    let ok = probe_denied(&a)
        && req.code == 125
        && named
        && best.ok()
        && best.out.contains("ran")
        && best.err.contains("groups (");
    judge(
        &ctl,
        &Res {
            code: 1,
            out: format!(
                "{}; rootless with group {OTHER_UID}: required exit {} ({}), best-effort exit {}",
                a.line(),
                req.code,
                req.err.trim().chars().take(50).collect::<String>(),
                best.code
            ),
            err: String::new(),
            secs: 0.0,
        },
        |_| ok,
    )
}

fn launcher_death(c: &Ctx) -> Outcome {
    let marker = format!("nodecell-suite-pdeath-{}-{}", c.label, std::process::id());
    let script = format!("{} wait", bg(&marker, "sleep 600"));
    let mut child = match Command::new(&c.nodecell)
        .args(c.run_args(&[]))
        .args(["--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(ch) => ch,
        Err(e) => return Outcome::fail("-", e.to_string()),
    };
    let started = wait_until(3.0, || !pids_with(&marker).is_empty());
    let ctl = Res {
        code: if started { 0 } else { 1 },
        out: format!("ok sandboxed sleeper running while the launcher lives: {started}"),
        err: String::new(),
        secs: 0.0,
    };
    let _ = child.kill();
    let _ = child.wait();
    let gone = wait_until(3.0, || pids_with(&marker).is_empty());
    kill_groups(&pids_with(&marker));
    judge(
        &ctl,
        &Res {
            code: 1,
            out: format!(
                "launcher SIGKILLed: sandbox {}",
                if gone { "gone" } else { "SURVIVED" }
            ),
            err: String::new(),
            secs: 0.0,
        },
        |_| gone,
    )
}

/// `--mode required` with a wall this user cannot have: a memory limit
/// from a cgroup that is not delegated. Root runs it as the test user;
/// the rootless half first enters the non-delegated cgroup.
fn fail_closed(c: &Ctx) -> Outcome {
    let nodeleg: Vec<PathBuf> = ["memory", "pids", "cpu"]
        .iter()
        .filter_map(|ctl| find_suite_cgroup(ctl, "nodeleg"))
        .collect();
    let mk = |mode: &str| {
        let mut cmd = Command::new(&c.nodecell);
        cmd.args(c.run_args(&["--mode", mode, "--memory", "64M"]))
            .args(["--", "/bin/echo", "ran"]);
        if c.root {
            let (uid, gid) = match ensure_user() {
                Ok(ids) => ids,
                Err(e) => {
                    return Res {
                        code: -1,
                        out: String::new(),
                        err: e.to_string(),
                        secs: 0.0,
                    }
                }
            };
            // SAFETY: async-signal-safe calls only.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        } else {
            let procs: Vec<CString> = nodeleg
                .iter()
                .map(|d| {
                    CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()).unwrap()
                })
                .collect();
            // SAFETY: async-signal-safe calls only, on prepared strings.
            unsafe {
                cmd.pre_exec(move || {
                    for p in &procs {
                        let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                        if fd >= 0 {
                            libc::write(fd, b"0".as_ptr().cast(), 1);
                            libc::close(fd);
                        }
                    }
                    Ok(())
                });
            }
        }
        c.exec(&mut cmd)
    };
    if !c.root && nodeleg.is_empty() {
        return Outcome::skip("no non-delegated cgroup prepared by the root half");
    }
    let best = mk("best-effort");
    let ctl = Res {
        code: if best.ok() && best.out.contains("ran") && best.err.contains("memory-limit") {
            0
        } else {
            1
        },
        out: format!(
            "ok best-effort ran and said: {}",
            best.err
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect::<String>()
        ),
        ..best.clone()
    };
    let req = mk("required");
    let named = req.err.contains("memory-limit");
    judge(
        &ctl,
        &Res {
            out: format!("required: exit {}; {}", req.code, req.err.trim()),
            ..req.clone()
        },
        |_| req.code == 125 && named && !req.out.contains("ran"),
    )
}

fn find_suite_cgroup(controller: &str, name: &str) -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
        ctl.split(',')
            .any(|x| x == controller)
            .then(|| path.to_string())
    })?;
    // The rootless half sits in <root's cgroup>/nodecell-suite-deleg-<pid>.
    let own_dir = PathBuf::from(format!(
        "/sys/fs/cgroup/{controller}{}",
        rel.trim_end_matches('/')
    ));
    let parent = own_dir.parent()?;
    let suffix = own_dir
        .file_name()?
        .to_str()?
        .rsplit('-')
        .next()?
        .to_string();
    let d = parent.join(format!("nodecell-suite-{name}-{suffix}"));
    d.exists().then_some(d)
}

fn abstract_listener(name: &str) -> std::os::unix::net::UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// Kills the process groups of `pids` (the control daemons and the
/// children they started).
fn kill_groups(pids: &[u32]) {
    for p in pids {
        let pgrp = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(2)?
                    .parse::<i32>()
                    .ok()
            });
        // SAFETY: kill with plain integers; only groups of processes this
        // suite started (found by their unique marker).
        unsafe {
            if let Some(g) = pgrp.filter(|&g| g > 1) {
                libc::kill(-g, libc::SIGKILL);
            }
            libc::kill(*p as i32, libc::SIGKILL);
        }
    }
}

/// A shell snippet that starts `body` in the background in a shell whose
/// command line carries `marker`, without the marker appearing literally in
/// the snippet itself (so only the background shell matches).
fn bg(marker: &str, body: &str) -> String {
    let (a, b) = marker.split_at(marker.len() / 2);
    format!("sh -c '{body}; : {a}''{b}' &")
}

fn pids_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&p| p != me)
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(marker))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

// ------------------------------------------------------------------ probes

mod probe {
    //! The actions, run inside and outside the sandbox. Each prints one
    //! line, `ok ...` (exit 0) or `err ERRNO ...` (exit 1).

    use super::*;

    fn errno_name(e: i32) -> String {
        let n = match e {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::ESRCH => "ESRCH",
            libc::EIO => "EIO",
            libc::EBADF => "EBADF",
            libc::EAGAIN => "EAGAIN",
            libc::ENOMEM => "ENOMEM",
            libc::EACCES => "EACCES",
            libc::EFAULT => "EFAULT",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EXDEV => "EXDEV",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::ENOSPC => "ENOSPC",
            libc::EROFS => "EROFS",
            libc::ENOTTY => "ENOTTY",
            libc::ENOSYS => "ENOSYS",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EAFNOSUPPORT => "EAFNOSUPPORT",
            libc::ECONNREFUSED => "ECONNREFUSED",
            libc::ENETUNREACH => "ENETUNREACH",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::EOVERFLOW => "EOVERFLOW",
            libc::ENOEXEC => "ENOEXEC",
            libc::E2BIG => "E2BIG",
            libc::ENOKEY => "ENOKEY",
            libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
            libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
            _ => return format!("E{e}"),
        };
        n.to_string()
    }

    fn last_errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn io(r: std::io::Result<String>) -> i32 {
        match r {
            Ok(s) => {
                println!("ok {s}");
                0
            }
            Err(e) => {
                println!("err {} {e}", errno_name(e.raw_os_error().unwrap_or(0)));
                1
            }
        }
    }

    fn sys(ret: libc::c_long, what: &str) -> i32 {
        if ret < 0 {
            println!("err {} {what}", errno_name(last_errno()));
            1
        } else {
            println!("ok {what} = {ret}");
            0
        }
    }

    fn cstr(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    /// Calls each syscall of a family with harmless, invalid arguments and
    /// prints `name=ERRNO` (or `name=ok`).
    fn family(name: &str) -> i32 {
        type Call = (&'static str, fn() -> libc::c_long);
        macro_rules! call {
            ($nr:expr $(, $a:expr)*) => {{
                // SAFETY: every call passes NULL pointers, invalid fds or
                // invalid values that the kernel rejects before acting.
                unsafe { libc::syscall($nr $(, $a)*) }
            }};
        }
        let calls: Vec<Call> = match name {
            "mount" => vec![
                ("mount", || {
                    call!(libc::SYS_mount, 0usize, 0usize, 0usize, 0usize, 0usize)
                }),
                ("umount2", || call!(libc::SYS_umount2, 0usize, 0)),
                ("pivot_root", || call!(libc::SYS_pivot_root, 0usize, 0usize)),
                ("chroot", || call!(libc::SYS_chroot, 0usize)),
                ("fsopen", || call!(libc::SYS_fsopen, 0usize, 0)),
                ("fsmount", || call!(libc::SYS_fsmount, -1, 0, 0)),
                ("fspick", || call!(libc::SYS_fspick, -1, 0usize, 0)),
                ("move_mount", || {
                    call!(libc::SYS_move_mount, -1, 0usize, -1, 0usize, 0)
                }),
                ("open_tree", || call!(libc::SYS_open_tree, -1, 0usize, 0)),
                ("mount_setattr", || {
                    call!(libc::SYS_mount_setattr, -1, 0usize, 0, 0usize, 0)
                }),
            ],
            "pivot_root" => vec![("pivot_root", || call!(libc::SYS_pivot_root, 0usize, 0usize))],
            "ptrace" => vec![
                ("ptrace", || {
                    call!(
                        libc::SYS_ptrace,
                        libc::PTRACE_PEEKDATA,
                        0x7fff_fff0,
                        0usize,
                        0usize
                    )
                }),
                ("process_vm_readv", || {
                    call!(
                        libc::SYS_process_vm_readv,
                        0x7fff_fff0,
                        0usize,
                        1,
                        0usize,
                        1,
                        0
                    )
                }),
                ("process_vm_writev", || {
                    call!(
                        libc::SYS_process_vm_writev,
                        0x7fff_fff0,
                        0usize,
                        1,
                        0usize,
                        1,
                        0
                    )
                }),
                ("pidfd_getfd", || call!(libc::SYS_pidfd_getfd, -1, 0, 0)),
                ("kcmp", || {
                    call!(libc::SYS_kcmp, 0x7fff_fff0, 0x7fff_fff0, 0, 0, 0)
                }),
            ],
            "bpf" => vec![
                ("bpf", || call!(libc::SYS_bpf, -1, 0usize, 0)),
                ("perf_event_open", || {
                    call!(libc::SYS_perf_event_open, 0usize, 0, -1, -1, 0)
                }),
            ],
            "keys" => vec![
                ("keyctl", || call!(libc::SYS_keyctl, -1, 0, 0, 0, 0)),
                ("add_key", || {
                    call!(libc::SYS_add_key, 0usize, 0usize, 0usize, 0, 0)
                }),
                ("request_key", || {
                    call!(libc::SYS_request_key, 0usize, 0usize, 0usize, 0)
                }),
            ],
            "modules" => vec![
                ("kexec_load", || {
                    call!(libc::SYS_kexec_load, 0, 0, 0usize, 0xdead_0000u64)
                }),
                #[cfg(target_arch = "x86_64")]
                ("kexec_file_load", || {
                    call!(libc::SYS_kexec_file_load, -1, -1, 0, 0usize, 0xdead_0000u64)
                }),
                ("init_module", || {
                    call!(libc::SYS_init_module, 0usize, 0, 0usize)
                }),
                ("finit_module", || {
                    call!(libc::SYS_finit_module, -1, 0usize, 0)
                }),
                ("delete_module", || {
                    call!(libc::SYS_delete_module, 0usize, 0)
                }),
            ],
            "handles" => vec![
                ("open_by_handle_at", || {
                    call!(libc::SYS_open_by_handle_at, -1, 0usize, 0)
                }),
                ("name_to_handle_at", || {
                    call!(libc::SYS_name_to_handle_at, -1, 0usize, 0usize, 0usize, 0)
                }),
            ],
            "userfaultfd" => vec![("userfaultfd", || {
                let fd = call!(
                    libc::SYS_userfaultfd,
                    1 /* UFFD_USER_MODE_ONLY */ | libc::O_CLOEXEC
                );
                if fd >= 0 {
                    // SAFETY: closing the fd just created.
                    unsafe { libc::close(fd as i32) };
                }
                fd
            })],
            "io_uring" => vec![
                ("io_uring_setup", || {
                    call!(libc::SYS_io_uring_setup, 0, 0usize)
                }),
                ("io_uring_enter", || {
                    call!(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0usize, 0)
                }),
                ("io_uring_register", || {
                    call!(libc::SYS_io_uring_register, -1, 0, 0usize, 0)
                }),
            ],
            "namespaces" => vec![
                ("unshare", || {
                    call!(
                        libc::SYS_unshare,
                        0x1_0000_0000u64 /* invalid flag bit */
                    )
                }),
                ("setns", || call!(libc::SYS_setns, -1, 0)),
                ("clone(NEWUSER)", || {
                    let r = call!(
                        libc::SYS_clone,
                        (libc::CLONE_NEWUSER | libc::SIGCHLD) as usize,
                        0usize,
                        0usize,
                        0usize,
                        0usize
                    );
                    if r == 0 {
                        // SAFETY: the child leaves at once.
                        unsafe { libc::_exit(0) };
                    }
                    if r > 0 {
                        let mut st = 0;
                        // SAFETY: reaping our own child.
                        unsafe { libc::waitpid(r as i32, &mut st, 0) };
                    }
                    r
                }),
            ],
            "system" => vec![
                ("reboot", || call!(libc::SYS_reboot, 0, 0, 0, 0usize)),
                ("swapon", || call!(libc::SYS_swapon, 0usize, 0)),
                ("syslog", || call!(libc::SYS_syslog, -1, 0usize, 0)),
                ("clock_settime", || {
                    call!(libc::SYS_clock_settime, -1, 0usize)
                }),
                ("sethostname", || {
                    call!(libc::SYS_sethostname, 0usize, 100_000)
                }),
                #[cfg(target_arch = "x86_64")]
                ("iopl", || call!(libc::SYS_iopl, 99)),
            ],
            "clone3" => vec![("clone3", || call!(libc::SYS_clone3, 0usize, 0))],
            "pagecache" => vec![("cachestat", || call!(451, -1, 0usize, 0usize, 0))],
            "prctl" => vec![
                ("PR_GET_TSC", || {
                    let mut v = 0i32;
                    call!(libc::SYS_prctl, 25, &mut v as *mut i32, 0, 0, 0)
                }),
                ("PR_MCE_KILL_GET", || call!(libc::SYS_prctl, 34, 0, 0, 0, 0)),
                ("PR_GET_IO_FLUSHER", || {
                    call!(libc::SYS_prctl, 58, 0, 0, 0, 0)
                }),
                ("PR_GET_MEMORY_MERGE", || {
                    call!(libc::SYS_prctl, 68, 0, 0, 0, 0)
                }),
                ("PR_SET_PTRACER", || {
                    call!(libc::SYS_prctl, 0x5961_6d61, 0, 0, 0, 0)
                }),
                ("PR_SET_MM", || {
                    call!(libc::SYS_prctl, libc::PR_SET_MM, 999, 0, 0, 0)
                }),
            ],
            "tty" => vec![
                ("TIOCSTI", || {
                    let (r, w) = super::pipe();
                    let c = b'x';
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
                    let ret = call!(libc::SYS_ioctl, fd, libc::TIOCSTI, &c as *const u8);
                    drop((r, w));
                    ret
                }),
                ("TIOCLINUX", || {
                    let (r, w) = super::pipe();
                    let c = 0u8;
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
                    let ret = call!(libc::SYS_ioctl, fd, libc::TIOCLINUX, &c as *const u8);
                    drop((r, w));
                    ret
                }),
            ],
            "x32" => vec![
                ("x32 getpid", || call!(0x4000_0000 | libc::SYS_getpid)),
                ("x32 mount", || {
                    call!(
                        0x4000_0000 | libc::SYS_mount,
                        0usize,
                        0usize,
                        0usize,
                        0usize,
                        0usize
                    )
                }),
            ],
            _ => {
                println!("err EINVAL unknown family {name}");
                return 2;
            }
        };
        let mut parts = Vec::new();
        for (n, f) in calls {
            let r = f();
            let e = if r < 0 {
                errno_name(last_errno())
            } else {
                "ok".into()
            };
            parts.push(format!("{}={e}", n.replace(' ', "_")));
        }
        let all = parts.iter().all(|p| p.ends_with("=EPERM"));
        println!("{} {}", if all { "err" } else { "ok" }, parts.join(" "));
        if all {
            1
        } else {
            0
        }
    }

    /// The inode number of this process's namespace of `kind` (`mnt`, `pid`).
    pub fn ns_id(kind: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/ns/{kind}"))
            .map(|m| m.ino())
            .unwrap_or(0)
    }

    /// Whether a destructive action may run here. `guard=MNT-PID` holds the
    /// host's namespace inode numbers (digits only). `kind` is the
    /// namespace that must differ from the host's. For pid-namespace
    /// actions (`kill(-1)`, fork bombs) pid 1 must also be nodecell's init.
    pub fn guard_allows(guard: &str, kind: &str) -> Result<(), String> {
        let ids = guard.strip_prefix("guard=").ok_or("no guard")?;
        let (mnt, pid) = ids.split_once('-').ok_or("malformed guard")?;
        let mnt: u64 = mnt.parse().map_err(|_| "malformed guard")?;
        let pid: u64 = pid.parse().map_err(|_| "malformed guard")?;
        let host = match kind {
            "mnt" => mnt,
            "pid" => pid,
            _ => return Err("unknown namespace kind".into()),
        };
        let here = ns_id(kind);
        if host == 0 || here == 0 || here == host {
            return Err(format!("this is the host's {kind} namespace ({here})"));
        }
        if kind == "pid" {
            let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
            // SAFETY: getpid cannot fail.
            let me = unsafe { libc::getpid() };
            if init.trim() != "nodecell-init" || me > 1000 {
                return Err(format!("pid 1 is {:?}, not nodecell's init", init.trim()));
            }
        }
        Ok(())
    }

    /// Refuses destructive actions outside a sandbox.
    fn guarded(guard: &str, kind: &str) -> Result<(), i32> {
        guard_allows(guard, kind).map_err(|why| {
            println!("err EDEADLK refusing a destructive probe: {why}");
            2
        })
    }

    pub fn run(args: &[String]) -> i32 {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        match a.as_slice() {
            ["mount-tmpfs", _, g] | ["fill", _, g] => {
                if let Err(code) = guarded(g, "mnt") {
                    return code;
                }
                run_unguarded(&a[..a.len() - 1])
            }
            ["kill-all", g] | ["fork", _, g] => {
                if let Err(code) = guarded(g, "pid") {
                    return code;
                }
                run_unguarded(&a[..a.len() - 1])
            }
            ["guard-check", g, kind] => match guard_allows(g, kind) {
                Ok(()) => {
                    println!("ok allowed");
                    0
                }
                Err(why) => {
                    println!("err EDEADLK {why}");
                    1
                }
            },
            ["mount-tmpfs", ..] | ["fill", ..] | ["kill-all", ..] | ["fork", ..] => {
                println!("err EINVAL destructive probe without a guard");
                2
            }
            _ => run_unguarded(&a),
        }
    }

    fn run_unguarded(a: &[&str]) -> i32 {
        match a {
            ["in-mountns", rest @ ..] => {
                // SAFETY: unshare and mount take plain arguments.
                let ok = unsafe {
                    libc::unshare(libc::CLONE_NEWNS) == 0
                        && libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) == 0
                };
                if !ok {
                    println!("err {} private mount namespace", errno_name(last_errno()));
                    return 1;
                }
                let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                run(&rest)
            }
            ["in-userns", rest @ ..] => {
                // SAFETY: getuid/getgid cannot fail.
                let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                // SAFETY: unshare takes plain flags.
                if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
                    println!("err {} unshare", errno_name(last_errno()));
                    return 1;
                }
                let _ = std::fs::write("/proc/self/setgroups", "deny");
                let _ = std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"));
                let _ = std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"));
                // SAFETY: plain arguments.
                unsafe {
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    )
                };
                let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                run(&rest)
            }
            ["read", p] => io(std::fs::read(p).map(|b| format!("read {} bytes", b.len()))),
            ["read-n", p, n] => io(std::fs::File::open(p).and_then(|f| {
                let mut b = Vec::new();
                f.take(n.parse().unwrap_or(0)).read_to_end(&mut b)?;
                Ok(format!("read {} bytes", b.len()))
            })),
            ["exists", p] => io(std::fs::symlink_metadata(p).map(|_| format!("{p} exists"))),
            ["list", p] => io(std::fs::read_dir(p).map(|d| format!("{} entries", d.count()))),
            ["write", p] => io(std::fs::write(p, "x").map(|_| format!("wrote {p}"))),
            ["write-bytes", p, n] => io(std::fs::write(p, vec![0u8; n.parse().unwrap_or(0)])
                .map(|_| format!("wrote {n} bytes"))),
            ["rewrite", p] => io(std::fs::read(p)
                .and_then(|b| std::fs::write(p, b))
                .map(|_| format!("rewrote {p}"))),
            ["truncate", p] => io(std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .and_then(|f| f.set_len(0))
                .map(|_| "truncated".into())),
            ["open", p] => io(std::fs::File::open(p).map(|_| format!("opened {p}"))),
            ["link", from, to] => io(std::fs::hard_link(from, to).map(|_| "linked".into())),
            ["symlink-read", target, link] => {
                let _ = std::fs::remove_file(link);
                io(std::os::unix::fs::symlink(target, link)
                    .and_then(|_| std::fs::read(link))
                    .map(|b| format!("read {} bytes through the link", b.len())))
            }
            ["fill", p] => {
                let mut f = match std::fs::File::create(p) {
                    Ok(f) => f,
                    Err(e) => return io(Err(e)),
                };
                let chunk = vec![1u8; 1 << 16];
                let mut n: u64 = 0;
                loop {
                    match f.write(&chunk) {
                        Ok(0) => break,
                        Ok(k) => n += k as u64,
                        Err(e) => {
                            println!(
                                "err {} {n} bytes written before {e}",
                                errno_name(e.raw_os_error().unwrap_or(0))
                            );
                            return 1;
                        }
                    }
                    if n > 1 << 30 {
                        break;
                    }
                }
                println!("ok {n} bytes written without an error");
                0
            }
            ["exec", p, rest @ ..] => {
                let err = Command::new(p).args(rest).exec();
                io(Err(err))
            }
            ["copy-exec", from, to] => {
                if let Err(e) = std::fs::copy(from, to).and_then(|_| {
                    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
                }) {
                    return io(Err(e));
                }
                match Command::new(to).status() {
                    Ok(s) if s.success() => io(Ok(format!("ran {to}"))),
                    Ok(s) => {
                        println!("err E{} exit {s}", s.code().unwrap_or(-1));
                        1
                    }
                    Err(e) => io(Err(e)),
                }
            }
            ["proc-peek", pid, file] => proc_peek(pid, file),
            ["proc-peek-child", file] => with_child(|pid| proc_peek(&pid.to_string(), file)),
            ["mem-read", pid] => mem_read(pid),
            ["mem-read-child"] => with_child(|pid| mem_read(&pid.to_string())),
            ["forge-report"] => forge_report(),
            ["memfd-exec"] => memfd_exec(),
            ["cgroup-paths"] => {
                let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                let mut paths: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.splitn(3, ':').nth(2))
                    .collect();
                paths.sort_unstable();
                paths.dedup();
                if paths.iter().all(|p| *p == "/") {
                    println!(
                        "err ENOENT only / in /proc/self/cgroup ({} lines)",
                        text.lines().count()
                    );
                    1
                } else {
                    println!("ok cgroup paths shown: {}", paths.join(" "));
                    0
                }
            }
            ["setid", dir] => setid(dir),
            ["write-private", p] => io((|| {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(p)?;
                f.write_all(b"private")?;
                let back = std::fs::read_to_string(p)?;
                Ok(format!(
                    "wrote {p} (0600) and read back {} bytes",
                    back.len()
                ))
            })()),
            ["tty", fd] => tty(fd.parse().unwrap_or(-1)),
            ["groups"] => {
                // SAFETY: a zero size with a NULL list only returns the count.
                let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
                let mut v = vec![0 as libc::gid_t; n.max(0) as usize];
                // SAFETY: `v` has room for `n` gids.
                let m = unsafe { libc::getgroups(n, v.as_mut_ptr()) };
                v.truncate(m.max(0) as usize);
                if v.is_empty() {
                    println!("err ENOENT no supplementary groups");
                    1
                } else {
                    println!("ok supplementary groups {v:?}");
                    0
                }
            }
            ["whoami"] => {
                // SAFETY: these calls cannot fail.
                let (u, e) = unsafe { (libc::getuid(), libc::geteuid()) };
                println!("ok uid={u} euid={e}");
                0
            }
            ["as-test-user", prog, rest @ ..] => {
                let (uid, gid) = match ensure_user() {
                    Ok(x) => x,
                    Err(e) => {
                        println!("err EINVAL {e}");
                        return 1;
                    }
                };
                let mut cmd = Command::new(prog);
                cmd.args(rest);
                // SAFETY: async-signal-safe calls only.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setgroups(0, std::ptr::null()) != 0
                            || libc::setgid(gid) != 0
                            || libc::setuid(uid) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                io(Err(cmd.exec()))
            }
            ["tcp", host, port] => {
                let addr: std::net::SocketAddr = format!("{host}:{port}").parse().unwrap();
                io(
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                        .map(|_| format!("connected to {host}:{port}")),
                )
            }
            ["tcp-self"] => io((|| {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                std::net::TcpStream::connect(l.local_addr()?)?;
                Ok("loopback connect works".to_string())
            })()),
            ["udp", host, port, msg] => io(std::net::UdpSocket::bind("0.0.0.0:0")
                .and_then(|s| s.send_to(msg.as_bytes(), format!("{host}:{port}")))
                .map(|n| format!("sent {n} bytes"))),
            ["socket", kind] => {
                let (d, t, p) = match *kind {
                    "raw" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
                    "packet" => (libc::AF_PACKET, libc::SOCK_RAW, 0),
                    "udp" => (libc::AF_INET, libc::SOCK_DGRAM, 0),
                    "unix" => (libc::AF_UNIX, libc::SOCK_STREAM, 0),
                    "netlink" => (libc::AF_NETLINK, libc::SOCK_RAW, 0),
                    "vsock" => (libc::AF_VSOCK, libc::SOCK_STREAM, 0),
                    "key" => (libc::AF_KEY, libc::SOCK_RAW, 2),
                    "alg" => (libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
                    "bluetooth" => (libc::AF_BLUETOOTH, libc::SOCK_RAW, 0),
                    "netlink-uevent" => (
                        libc::AF_NETLINK,
                        libc::SOCK_RAW,
                        libc::NETLINK_KOBJECT_UEVENT,
                    ),
                    "netlink-generic" => (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_GENERIC),
                    "netlink-diag" => (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG),
                    _ => (-1, 0, 0),
                };
                // SAFETY: socket takes plain integers.
                let fd = unsafe { libc::socket(d, t | libc::SOCK_CLOEXEC, p) };
                sys(fd as libc::c_long, &format!("socket {kind}"))
            }
            ["abstract", name] => {
                use std::os::linux::net::SocketAddrExt;
                let addr =
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
                io(std::os::unix::net::UnixStream::connect_addr(&addr)
                    .map(|_| format!("connected to @{name}")))
            }
            ["ifaces"] => {
                // SAFETY: if_nameindex returns an array we free below.
                let list = unsafe { libc::if_nameindex() };
                if list.is_null() {
                    println!("err {} if_nameindex", errno_name(last_errno()));
                    return 1;
                }
                let mut names = Vec::new();
                let mut i = 0;
                loop {
                    // SAFETY: the array ends with a zero entry.
                    let e = unsafe { &*list.add(i) };
                    if e.if_index == 0 {
                        break;
                    }
                    // SAFETY: if_name is a valid C string.
                    names.push(
                        unsafe { std::ffi::CStr::from_ptr(e.if_name) }
                            .to_string_lossy()
                            .into_owned(),
                    );
                    i += 1;
                }
                // SAFETY: freeing what if_nameindex returned.
                unsafe { libc::if_freenameindex(list) };
                println!("ok {}", names.join(" "));
                0
            }
            ["unshare-user"] => {
                // SAFETY: fork; the child only calls unshare and _exit.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: plain flags; _exit never returns.
                    unsafe {
                        libc::_exit(if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                            0
                        } else {
                            last_errno()
                        })
                    };
                }
                let mut st = 0;
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
                let code = libc::WEXITSTATUS(st);
                if code == 0 {
                    println!("ok unshare(CLONE_NEWUSER)");
                    0
                } else {
                    println!("err {} unshare(CLONE_NEWUSER)", errno_name(code));
                    1
                }
            }
            ["mount-tmpfs", target] => {
                let (s, t) = (cstr("tmpfs"), cstr(target));
                // SAFETY: valid strings.
                sys(
                    unsafe { libc::mount(s.as_ptr(), t.as_ptr(), s.as_ptr(), 0, std::ptr::null()) }
                        as libc::c_long,
                    "mount tmpfs",
                )
            }
            ["chroot", p] => {
                let c = cstr(p);
                // SAFETY: valid string.
                sys(
                    unsafe { libc::chroot(c.as_ptr()) } as libc::c_long,
                    "chroot",
                )
            }
            ["syscalls", fam] => family(fam),
            ["ptrace", pid] => {
                let pid: i32 = pid.parse().unwrap_or(0);
                // SAFETY: attach/detach of a pid.
                let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) };
                if r == 0 {
                    let mut st = 0;
                    // SAFETY: waiting for the stop, then detaching.
                    unsafe {
                        libc::waitpid(pid, &mut st, libc::__WALL);
                        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                    }
                }
                sys(r, "ptrace attach")
            }
            ["ptrace-child"] | ["vmread-child"] => {
                static TARGET: u64 = 0x6e6f_6465_6365_6c6c;
                // SAFETY: the child only sleeps.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: sleep then _exit.
                    unsafe {
                        libc::sleep(10);
                        libc::_exit(0);
                    }
                }
                let r = if a[0] == "ptrace-child" {
                    // SAFETY: attach to our own child.
                    let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) };
                    if r == 0 {
                        let mut st = 0;
                        // SAFETY: wait for the stop, detach.
                        unsafe {
                            libc::waitpid(pid, &mut st, 0);
                            libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                        }
                    }
                    sys(r, "ptrace own child")
                } else {
                    let mut buf = 0u64;
                    let local = libc::iovec {
                        iov_base: (&mut buf as *mut u64).cast(),
                        iov_len: 8,
                    };
                    let remote = libc::iovec {
                        iov_base: (&TARGET as *const u64 as *mut u64).cast(),
                        iov_len: 8,
                    };
                    // SAFETY: both iovecs describe valid 8-byte buffers.
                    let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
                    sys(
                        r as libc::c_long,
                        &format!("process_vm_readv own child read {buf:#x}"),
                    )
                };
                // SAFETY: kill and reap our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                r
            }
            ["vmread", pid] => {
                let pid: i32 = pid.parse().unwrap_or(0);
                let mut buf = 0u64;
                let local = libc::iovec {
                    iov_base: (&mut buf as *mut u64).cast(),
                    iov_len: 8,
                };
                let remote = libc::iovec {
                    iov_base: 0x1000 as *mut libc::c_void,
                    iov_len: 8,
                };
                // SAFETY: the local iovec is valid; the remote one is only read by the kernel.
                let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
                if r < 0 && last_errno() == libc::EFAULT {
                    println!("ok process_vm_readv reached the process (EFAULT at 0x1000)");
                    return 0;
                }
                sys(r as libc::c_long, "process_vm_readv")
            }
            ["see-pid", pid] => {
                io(std::fs::metadata(format!("/proc/{pid}"))
                    .map(|_| format!("/proc/{pid} visible")))
            }
            ["count-pids"] => {
                let n = std::fs::read_dir("/proc")
                    .map(|d| {
                        d.flatten()
                            .filter(|e| {
                                e.file_name()
                                    .to_str()
                                    .is_some_and(|s| s.parse::<u32>().is_ok())
                            })
                            .count()
                    })
                    .unwrap_or(0);
                println!("ok {n} processes visible");
                0
            }
            ["kill0", pid] => {
                // SAFETY: signal 0 only checks.
                sys(
                    unsafe { libc::kill(pid.parse().unwrap_or(0), 0) } as libc::c_long,
                    "kill(pid, 0)",
                )
            }
            ["kill-all"] => {
                // SAFETY: kill(-1) reaches every process we may signal; we
                // ignore the signal ourselves first.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                // SAFETY: as above.
                sys(
                    unsafe { libc::kill(-1, libc::SIGTERM) } as libc::c_long,
                    "kill(-1, SIGTERM)",
                )
            }
            ["setns", p] => match std::fs::File::open(p) {
                Ok(f) => {
                    // SAFETY: setns on an fd we own.
                    sys(
                        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), 0) }
                            as libc::c_long,
                        "setns",
                    )
                }
                Err(e) => io(Err(e)),
            },
            ["caps"] => {
                let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let v: Vec<String> = s
                    .lines()
                    .filter(|l| {
                        [
                            "CapInh",
                            "CapPrm",
                            "CapEff",
                            "CapBnd",
                            "CapAmb",
                            "NoNewPrivs",
                            "Seccomp:",
                        ]
                        .iter()
                        .any(|k| l.starts_with(k))
                    })
                    .map(|l| l.replace(":\t", "=").replace(": ", "="))
                    .collect();
                println!("ok {}", v.join(" "));
                0
            }
            ["env"] => {
                for (k, v) in std::env::vars() {
                    println!("{k}={v}");
                }
                0
            }
            ["fds", keep, stray] => {
                let keep: i32 = keep.parse().unwrap_or(-1);
                let stray: i32 = stray.parse().unwrap_or(-1);
                let open: Vec<String> = std::fs::read_dir("/proc/self/fd")
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let mut f = std::mem::ManuallyDrop::new(unsafe_file(keep));
                let _ = f.write_all(b"through-kept-fd");
                // SAFETY: F_GETFD only queries.
                let stray_open = unsafe { libc::fcntl(stray, libc::F_GETFD) } != -1;
                if stray_open {
                    println!("ok fd {stray} OPEN inside (fds: {})", open.join(","));
                    0
                } else {
                    println!("err EBADF fd {stray} closed; open fds: {}", open.join(","));
                    1
                }
            }
            ["fork", n] => {
                let n: u32 = n.parse().unwrap_or(1);
                let mut made = 0;
                for _ in 0..n {
                    // SAFETY: the children only sleep and exit.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        // SAFETY: sleep then _exit.
                        unsafe {
                            libc::sleep(30);
                            libc::_exit(0);
                        }
                    }
                    if pid < 0 {
                        println!("err {} after {made} forks", errno_name(last_errno()));
                        return 1;
                    }
                    made += 1;
                }
                println!("ok {made} forks");
                0
            }
            ["alloc", mb] => {
                let n: usize = mb.parse::<usize>().unwrap_or(0) << 20;
                let mut v = vec![0u8; n];
                for i in (0..n).step_by(4096) {
                    v[i] = 1;
                }
                std::hint::black_box(&v);
                println!("ok touched {mb} MiB");
                0
            }
            ["spin", secs] => {
                let end = Instant::now() + Duration::from_secs_f64(secs.parse().unwrap_or(1.0));
                let mut x = 0u64;
                while Instant::now() < end {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                // SAFETY: getrusage fills the struct.
                let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
                // SAFETY: valid out-pointer.
                unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
                let cpu = ru.ru_utime.tv_sec as f64
                    + ru.ru_utime.tv_usec as f64 / 1e6
                    + ru.ru_stime.tv_sec as f64
                    + ru.ru_stime.tv_usec as f64 / 1e6;
                println!("ok {cpu:.3} s of CPU in {secs} s");
                0
            }
            ["zygote", pa, pb, rw, own] => zygote(pa, pb, rw, *own == "1"),
            _ => {
                println!("err EINVAL unknown probe {a:?}");
                2
            }
        }
    }

    /// A zygote (this process, the sandbox's command) forks a sibling worker
    /// confined to pack B, then a worker that tries the attempts once
    /// unconfined (the controls) and once confined to pack A. With `own`,
    /// each worker gets its own uid of the cell's `--uid-range` block.
    /// Prints `ok key=value ...` (exit 0) or `err ...`.
    fn zygote(pa: &str, pb: &str, rw: &str, own: bool) -> i32 {
        use nodecell_sandbox::confine::{confine_forked_worker, ConfineSpec};
        // SAFETY: getuid/getpid have no arguments and cannot fail.
        let (base, zygote) = unsafe { (libc::getuid(), libc::getpid()) };
        let spec = |pack: &str, rw: Option<&str>, k: u32| ConfineSpec {
            uid: own.then_some(base + k),
            gid: own.then_some(base + k),
            ro_paths: vec![pack.into()],
            rw_paths: rw.map(|r| vec![r.into()]).unwrap_or_default(),
            system: true,
        };
        let err = |r: std::io::Result<()>| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        };
        let kill0 = |pid: i32| {
            // SAFETY: signal 0 only checks permission.
            err(if unsafe { libc::kill(pid, 0) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            })
        };
        let (mut fds, mut wfds, mut done) = ([0; 2], [0; 2], [0; 2]);
        // SAFETY: valid arrays of two ints.
        unsafe {
            libc::pipe(fds.as_mut_ptr());
            libc::pipe(wfds.as_mut_ptr());
            libc::pipe(done.as_mut_ptr())
        };
        let sb = spec(pb, None, 2);
        // SAFETY: this probe is single-threaded; the child confines itself,
        // reports and sleeps until killed.
        let sibling = unsafe { libc::fork() };
        if sibling == 0 {
            // SAFETY: closes this child's unused copies of our pipe ends: the worker's report pipe
            // (it kept the zygote's read from EOF) and `done`'s write end (so the wait below ends).
            unsafe {
                libc::close(wfds[0]);
                libc::close(wfds[1]);
                libc::close(done[1]);
            }
            let msg = match confine_forked_worker(&sb) {
                Ok(_) => "ready".to_string(),
                Err(e) => e.to_string(),
            };
            // SAFETY: valid buffers; then wait for the zygote to close `done` (it cannot signal
            // this sibling once it runs as another uid: sleeping until killed took 30 s); _exit.
            unsafe {
                libc::write(fds[1], msg.as_ptr().cast(), msg.len());
                libc::close(fds[1]);
                let mut b = 0u8;
                while libc::read(done[0], (&mut b as *mut u8).cast(), 1) > 0 {}
                libc::_exit(0);
            }
        }
        // SAFETY: our ends of the pipes.
        unsafe {
            libc::close(fds[1]);
            libc::close(done[0]);
        }
        let ready = read_fd(fds[0]);
        if ready != "ready" {
            println!("err sibling: {ready}");
            return 1;
        }
        let sa = spec(pa, Some(rw), 1);
        let (pa, pb, rw) = (pa.to_string(), pb.to_string(), rw.to_string());
        // SAFETY: as above; the worker reports through the pipe and _exits.
        let worker = unsafe { libc::fork() };
        if worker == 0 {
            let mem = |pid: i32| err(std::fs::File::open(format!("/proc/{pid}/mem")).map(drop));
            let rd = |p: String| err(std::fs::read(p).map(drop));
            let wr = |p: String| err(std::fs::write(p, "x"));
            let mut out = vec![
                format!("ctl-read-b={}", rd(format!("{pb}/secret.txt"))),
                format!("ctl-write-tmp={}", wr("/tmp/zygote-ctl".into())),
                format!("ctl-signal-zygote={}", kill0(zygote)),
                format!("ctl-zygote-mem={}", mem(zygote)),
            ];
            match confine_forked_worker(&sa) {
                Ok(r) => out.push(format!(
                    "uid=+{} landlock-scoped={}",
                    r.uid.wrapping_sub(base),
                    r.landlock.scoped
                )),
                Err(e) => out.push(format!(
                    "confine=FAILED:{}",
                    e.to_string().replace(' ', "_")
                )),
            }
            out.extend([
                format!("read-a={}", rd(format!("{pa}/code.py"))),
                format!("write-rw={}", wr(format!("{rw}/by-worker"))),
                format!("read-b={}", rd(format!("{pb}/secret.txt"))),
                format!("write-a={}", wr(format!("{pa}/planted"))),
                format!("write-tmp={}", wr("/tmp/zygote-n".into())),
                format!("signal-zygote={}", kill0(zygote)),
                format!("signal-sibling={}", kill0(sibling)),
                format!("zygote-mem={}", mem(zygote)),
                format!("sibling-mem={}", mem(sibling)),
            ]);
            let msg = out.join(" ");
            // SAFETY: valid buffer; then _exit.
            unsafe {
                libc::write(wfds[1], msg.as_ptr().cast(), msg.len());
                libc::_exit(0);
            }
        }
        // SAFETY: our end of the pipe.
        unsafe { libc::close(wfds[1]) };
        let report = read_fd(wfds[0]);
        // SAFETY: our children; closing `done` ends the sibling's wait (the worker, which
        // inherited it, has exited).
        unsafe {
            libc::waitpid(worker, std::ptr::null_mut(), 0);
            libc::close(done[1]);
            libc::kill(sibling, libc::SIGKILL);
            libc::waitpid(sibling, std::ptr::null_mut(), 0);
        }
        println!("ok {report}");
        0
    }

    fn read_fd(fd: i32) -> String {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let mut s = String::new();
        // SAFETY: `fd` is a pipe end we own.
        let _ = unsafe { std::fs::File::from_raw_fd(fd) }.read_to_string(&mut s);
        s
    }

    /// Runs `f` with the pid of a child of ours that sleeps (dumpable, same
    /// uid: the positive control for the pid-1 cases).
    fn with_child(f: impl FnOnce(i32) -> i32) -> i32 {
        // SAFETY: the child only sleeps and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: sleep then _exit.
            unsafe {
                libc::sleep(10);
                libc::_exit(0);
            }
        }
        let r = f(pid);
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        r
    }

    /// Reads up to 4 KiB of `/proc/PID/FILE`.
    fn proc_peek(pid: &str, file: &str) -> i32 {
        let p = format!("/proc/{pid}/{file}");
        io(std::fs::File::open(&p).and_then(|f| {
            let mut b = Vec::new();
            f.take(4096).read_to_end(&mut b)?;
            let shown: String = String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .chars()
                .take(60)
                .collect();
            Ok(format!("read {} bytes of {p}: {}", b.len(), shown.trim()))
        }))
    }

    /// Reads 8 bytes of `/proc/PID/mem` at the first mapped address.
    fn mem_read(pid: &str) -> i32 {
        io((|| {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
            let addr = maps
                .lines()
                .next()
                .and_then(|l| l.split('-').next())
                .and_then(|a| u64::from_str_radix(a, 16).ok())
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
            let f = std::fs::File::open(format!("/proc/{pid}/mem"))?;
            let mut b = [0u8; 8];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, addr)?;
            Ok(format!("read 8 bytes of /proc/{pid}/mem at {addr:#x}"))
        })())
    }

    /// Tries to write a forged report line into pid 1's fds, then exits 3:
    /// the launcher must exit 3 whatever was written. The control inside:
    /// the same write into a pipe of our own child through /proc works.
    fn forge_report() -> i32 {
        let forged = b"{\"t\":\"setup\",\"wall\":\"exec\",\"why\":\"forged by the worker\",\"code\":0}\n{\"t\":\"exit\",\"code\":0,\"signal\":null}\n";
        let (r, w) = super::pipe();
        let wfd = std::os::fd::AsRawFd::as_raw_fd(&w);
        let ctl = with_child(|pid| {
            match std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/fd/{wfd}"))
            {
                Ok(mut f) => i32::from(f.write_all(b"x").is_err()),
                Err(_) => 1,
            }
        });
        drop((r, w));
        let mut opened = 0;
        let mut errs = std::collections::BTreeSet::new();
        for fd in 0..64 {
            match std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/1/fd/{fd}"))
            {
                Ok(mut f) => {
                    opened += 1;
                    let _ = f.write_all(forged);
                }
                Err(e) => {
                    errs.insert(errno_name(e.raw_os_error().unwrap_or(0)));
                }
            }
        }
        let errs: Vec<String> = errs.into_iter().collect();
        println!(
            "{} control={} opened={opened} errors={} (exiting 3)",
            if opened == 0 { "err" } else { "ok" },
            if ctl == 0 { "ok" } else { "FAILED" },
            errs.join(",")
        );
        let _ = std::io::stdout().flush();
        // SAFETY: leaving at once with the status under test.
        unsafe { libc::_exit(3) }
    }

    /// Writes /bin/true into memfds and tries to execute them: a plain
    /// memfd through execveat(AT_EMPTY_PATH) and through /proc/self/fd, and
    /// an MFD_EXEC one. Prints `name=ran|ERRNO` per attempt.
    fn memfd_exec() -> i32 {
        const MFD_EXEC: u32 = 0x10;
        let prog = match std::fs::read("/bin/true") {
            Ok(b) => b,
            Err(e) => return io(Err(e)),
        };
        let mut parts = Vec::new();
        let mut ran = false;
        for (name, flags, via_fd) in [
            ("plain+execveat", 0u32, true),
            ("plain+/proc/self/fd", 0, false),
            ("MFD_EXEC+execveat", MFD_EXEC, true),
        ] {
            // SAFETY: a valid name and plain flags.
            let fd = unsafe { libc::memfd_create(c"x".as_ptr(), flags) };
            if fd < 0 {
                parts.push(format!("{name}=create:{}", errno_name(last_errno())));
                continue;
            }
            let mut f = unsafe_file(fd);
            let chmod = if f.write_all(&prog).is_ok() {
                // SAFETY: fchmod on our own fd.
                unsafe { libc::fchmod(fd, 0o755) }
            } else {
                -1
            };
            let chmod = if chmod == 0 {
                String::new()
            } else {
                format!("chmod:{},", errno_name(last_errno()))
            };
            // SAFETY: the child only execs or exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let argv = [c"true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                // SAFETY: valid NULL-terminated arrays; the child leaves
                // with the errno when the exec fails.
                unsafe {
                    if via_fd {
                        libc::syscall(
                            libc::SYS_execveat,
                            fd,
                            c"".as_ptr(),
                            argv.as_ptr(),
                            envp.as_ptr(),
                            libc::AT_EMPTY_PATH,
                        );
                    } else {
                        let p = CString::new(format!("/proc/self/fd/{fd}")).unwrap();
                        libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    }
                    libc::_exit(100 + (*libc::__errno_location()).min(99));
                }
            }
            let mut st = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            let code = libc::WEXITSTATUS(st);
            if code == 0 {
                ran = true;
                parts.push(format!("{name}={chmod}ran"));
            } else {
                parts.push(format!("{name}={chmod}{}", errno_name(code - 100)));
            }
        }
        println!(
            "{} {}",
            if ran { "ok" } else { "err EACCES" },
            parts.join(" ")
        );
        i32::from(!ran)
    }

    /// Tries to leave set-uid/set-gid files in `dir`.
    fn setid(dir: &str) -> i32 {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let f = format!("{dir}/setid-f");
        let _ = std::fs::remove_file(&f);
        if let Err(e) = std::fs::write(&f, "x") {
            return io(Err(e));
        }
        let mut parts = Vec::new();
        let mut got = false;
        let mut note = |name: &str, r: std::io::Result<()>| match r {
            Ok(()) => {
                got = true;
                parts.push(format!("{name}=ok"));
            }
            Err(e) => parts.push(format!(
                "{name}={}",
                errno_name(e.raw_os_error().unwrap_or(0))
            )),
        };
        note(
            "chmod(04755)",
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)),
        );
        note(
            "chmod(02755)",
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o2755)),
        );
        let g = format!("{dir}/setid-g");
        let _ = std::fs::remove_file(&g);
        note(
            "open(O_CREAT,04755)",
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o4755)
                .open(&g)
                .map(drop),
        );
        let h = CString::new(format!("{dir}/setid-h")).unwrap();
        // SAFETY: valid path, plain mode.
        let r = unsafe { libc::mknod(h.as_ptr(), libc::S_IFREG | 0o4755, 0) };
        note(
            "mknod(S_IFREG|04755)",
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            },
        );
        // Whatever was created: does any file carry a set-id bit?
        let mut modes = Vec::new();
        for p in [&f, &g, &format!("{dir}/setid-h")] {
            if let Ok(m) = std::fs::metadata(p) {
                if m.permissions().mode() & 0o6000 != 0 {
                    got = true;
                    modes.push(format!("{p}={:o}", m.permissions().mode() & 0o7777));
                }
                let _ = std::fs::remove_file(p);
            }
        }
        println!(
            "{} {} {}",
            if got { "ok" } else { "err EPERM" },
            parts.join(" "),
            modes.join(" ")
        );
        i32::from(!got)
    }

    /// Terminal requests on an inherited tty `fd`: the refused ones, then the
    /// allowed ones.
    fn tty(fd: i32) -> i32 {
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let mut tio = [0u8; 256];
        let ldisc: libc::c_int = 0; // N_TTY
        let c = b' ';
        let errno_of = |r: libc::c_int| {
            if r < 0 {
                errno_name(last_errno())
            } else {
                "ok".into()
            }
        };
        // SAFETY: each request gets a valid buffer of its type.
        let allowed = unsafe {
            [
                (
                    "TCGETS",
                    errno_of(libc::ioctl(fd, libc::TCGETS, tio.as_mut_ptr())),
                ),
                (
                    "TIOCGWINSZ",
                    errno_of(libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws)),
                ),
            ]
        };
        // SAFETY: as above.
        let refused = unsafe {
            [
                (
                    "TIOCSETD",
                    errno_of(libc::ioctl(fd, libc::TIOCSETD, &ldisc)),
                ),
                (
                    "TIOCSWINSZ",
                    errno_of(libc::ioctl(fd, libc::TIOCSWINSZ, &ws)),
                ),
                ("TIOCEXCL", errno_of(libc::ioctl(fd, libc::TIOCEXCL))),
                ("TIOCNXCL", errno_of(libc::ioctl(fd, libc::TIOCNXCL))),
                ("TIOCSTI", errno_of(libc::ioctl(fd, libc::TIOCSTI, &c))),
            ]
        };
        let all_refused = refused.iter().all(|(_, e)| e == "EPERM");
        let all_allowed = allowed.iter().all(|(_, e)| e == "ok");
        let show = |v: &[(&str, String)]| {
            v.iter()
                .map(|(n, e)| format!("{n}={e}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{} refused: {}; allowed: {}",
            if all_refused && all_allowed {
                "err EPERM"
            } else {
                "ok"
            },
            show(&refused),
            show(&allowed)
        );
        i32::from(all_refused && all_allowed)
    }

    fn unsafe_file(fd: i32) -> std::fs::File {
        use std::os::fd::FromRawFd;
        // SAFETY: the fd was kept for this purpose; ManuallyDrop by the caller.
        unsafe { std::fs::File::from_raw_fd(fd) }
    }
}
