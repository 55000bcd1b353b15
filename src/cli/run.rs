//! `nodecell run`: run a command inside a sandbox.
//!
//! The flags map one to one onto [`nodecell_sandbox::Policy`] fields.
//! [`SandboxFlags::apply_to`] lays the flags over a base policy (the
//! default one, or later a pack's manifest for `--pack`): list flags
//! (`--ro`, `--rw`, `--env`) add to the base, every other flag given
//! replaces the base's value, flags not given leave it alone.
//!
//! Exit status: the command's own; 124 when `--timeout` killed it; 137 when
//! the memory limit killed it (with one line on stderr naming the limit);
//! 125 when the sandbox could not be set up (the message names the wall
//! and why); 126/127 when the command cannot be executed inside; 2 for a
//! bad flag.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use nodecell_sandbox::overlay::Overlay;
use nodecell_sandbox::policy::{parse_bytes, parse_env, parse_positive, MAX_UID_RANGE};
use nodecell_sandbox::uids::UidPool;
use nodecell_sandbox::{launch, Bind, Command, Error, ExitReason, Mode, Policy, PolicyError};

/// Arguments of `nodecell run`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status: the command's own; 124 after --timeout; 137 when the memory limit killed it; \
125 when the sandbox could not be set up (the message names the wall); 126/127 when the command cannot run inside."
)]
pub struct RunArgs {
    /// Run in a node pack's sandbox: its venv (built first if needed) on PATH and
    /// read-only, its folder as the working directory, its manifest's sandbox
    /// settings; the other flags override them.
    #[arg(long, value_name = "PACK_DIR")]
    pub pack: Option<PathBuf>,
    /// Sandbox settings.
    #[command(flatten)]
    pub sandbox: SandboxFlags,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// The sandbox flags of `nodecell run` (flattened into [`RunArgs`], reusable
/// by other subcommands).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SandboxFlags {
    /// Bind SRC read-only (and executable) at DST (default: the same path). Repeatable.
    #[arg(long = "ro", value_name = "SRC[:DST]", value_parser = parse_ro)]
    pub ro: Vec<Bind>,
    /// Bind SRC writable (no exec) at DST (default: the same path). Repeatable.
    #[arg(long = "rw", value_name = "SRC[:DST]", value_parser = parse_rw)]
    pub rw: Vec<Bind>,
    /// See LOWER at DST (default LOWER) through an overlay: reads come from
    /// LOWER, which is never written; writes land in STATE_DIR/upper (owned
    /// by the cell's uid, created if missing). Repeatable.
    #[arg(long = "overlay", value_name = "LOWER:STATE_DIR[:DST]", value_parser = parse_overlay)]
    pub overlay: Vec<Overlay>,
    /// Keep the host network (default: a new network namespace with only loopback).
    #[arg(long)]
    pub net: bool,
    /// Memory limit, e.g. 512M or 2G (cgroup; exit 137 when exceeded).
    #[arg(long, value_name = "BYTES", value_parser = parse_memory, allow_negative_numbers = true)]
    pub memory: Option<u64>,
    /// Maximum number of processes and threads (cgroup).
    #[arg(long, value_name = "N", value_parser = parse_pids, allow_negative_numbers = true)]
    pub pids: Option<u64>,
    /// CPU quota as a fraction of one CPU, e.g. 0.5 or 2 (cgroup).
    #[arg(long, value_name = "FRACTION", value_parser = parse_cpu, allow_negative_numbers = true)]
    pub cpu: Option<f64>,
    /// Kill the whole sandbox after this many seconds (exit 124).
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Set an environment variable inside (the rest of the environment is cleared). Repeatable.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env_flag)]
    pub env: Vec<(String, String)>,
    /// `required` (default): refuse to run when a wall is missing; `best-effort`: run and say which are missing.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Working directory inside the sandbox (default /).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Expose NVIDIA device nodes and a read-only /sys.
    #[arg(long)]
    pub gpu: bool,
    /// Size cap of the private /tmp and /dev/shm (default 256M).
    #[arg(long = "tmp-size", value_name = "BYTES", value_parser = parse_tmp_size)]
    pub tmp_size: Option<u64>,
    /// Host uid of the worker when running as root (default: a uid of its own
    /// leased from --uid-pool; never 0).
    #[arg(long = "worker-uid", value_name = "UID", value_parser = parse_uid)]
    pub worker_uid: Option<u32>,
    /// Where root launchers lease each cell's host uid (default 1879048192:65536).
    #[arg(long = "uid-pool", value_name = "FIRST:COUNT", value_parser = parse_uid_pool)]
    pub uid_pool: Option<UidPool>,
    /// Give the cell N consecutive host uids (root only): the command keeps
    /// CAP_SETUID/SETGID in its namespace so a zygote can confine each worker
    /// it forks to a uid of its own.
    #[arg(long = "uid-range", value_name = "N", value_parser = parse_uid_range)]
    pub uid_range: Option<u32>,
    /// Keep fd N open, at the same number, in the command. Repeatable.
    #[arg(long = "keep-fd", value_name = "N", value_parser = parse_fd_keep)]
    pub keep_fd: Vec<RawFd>,
    /// Write a JSON line to fd N when the sandbox is up and one when it ends.
    #[arg(long = "status-fd", value_name = "N", value_parser = parse_fd_status)]
    pub status_fd: Option<RawFd>,
}

fn parse_ro(s: &str) -> Result<Bind, String> {
    Bind::parse("--ro", s)
        .map(|b| canonical_src(b, "--ro"))
        .and_then(|r| r)
        .map_err(|e| e.reason)
}
fn parse_rw(s: &str) -> Result<Bind, String> {
    Bind::parse("--rw", s)
        .map(|b| canonical_src(b, "--rw"))
        .and_then(|r| r)
        .map_err(|e| e.reason)
}
/// Resolves links in the source so the bind shows the real directory.
fn canonical_src(mut b: Bind, flag: &'static str) -> Result<Bind, PolicyError> {
    match std::fs::canonicalize(&b.src) {
        Ok(real) => {
            b.src = real;
            Ok(b)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PolicyError::new(
            flag,
            b.src.display(),
            "no such file or directory",
        )),
        Err(e) => Err(PolicyError::new(flag, b.src.display(), e.to_string())),
    }
}
fn parse_memory(s: &str) -> Result<u64, String> {
    parse_bytes("--memory", s).map_err(|e| e.reason)
}
fn parse_tmp_size(s: &str) -> Result<u64, String> {
    parse_bytes("--tmp-size", s).map_err(|e| e.reason)
}
fn parse_pids(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) | Err(_) => Err("expected a whole number of processes, at least 1".into()),
        Ok(n) => Ok(n),
    }
}
fn parse_cpu(s: &str) -> Result<f64, String> {
    parse_positive("--cpu", s).map_err(|e| e.reason)
}
fn parse_timeout(s: &str) -> Result<f64, String> {
    parse_positive("--timeout", s).map_err(|e| e.reason)
}
fn parse_env_flag(s: &str) -> Result<(String, String), String> {
    parse_env(s).map_err(|e| e.reason)
}
fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.reason)
}
fn parse_uid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("the worker never runs as host uid 0; pick an unprivileged uid".into()),
        Ok(u) => Ok(u),
        Err(_) => Err("expected a numeric uid".into()),
    }
}
fn parse_overlay(s: &str) -> Result<Overlay, String> {
    let mut o = Overlay::parse(s).map_err(|e| e.reason)?;
    o.lower = std::fs::canonicalize(&o.lower).map_err(|e| format!("{}: {e}", o.lower.display()))?;
    Ok(o)
}
fn parse_uid_pool(s: &str) -> Result<UidPool, String> {
    s.parse::<UidPool>().map_err(|e| e.reason)
}
fn parse_uid_range(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=MAX_UID_RANGE).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of uids between 1 and {MAX_UID_RANGE}"
        )),
    }
}
fn parse_fd(s: &str) -> Result<RawFd, String> {
    s.parse::<RawFd>()
        .ok()
        .filter(|&fd| fd >= 0)
        .ok_or_else(|| "expected a file descriptor number".to_string())
}
fn parse_fd_keep(s: &str) -> Result<RawFd, String> {
    parse_fd(s)
}
fn parse_fd_status(s: &str) -> Result<RawFd, String> {
    parse_fd(s)
}

impl SandboxFlags {
    /// Lays these flags over `base` (a default policy, or a pack's): list
    /// flags add, other flags given replace, flags not given keep the
    /// base's value. The result is validated; the error names the flag.
    pub fn apply_to(&self, base: Policy) -> Result<Policy, PolicyError> {
        let mut p = base;
        p.ro.extend(self.ro.iter().cloned());
        p.rw.extend(self.rw.iter().cloned());
        p.overlay.extend(self.overlay.iter().cloned());
        if self.net {
            p.net = true;
        }
        if self.gpu {
            p.gpu = true;
        }
        if let Some(v) = self.memory {
            p.memory = Some(v);
        }
        if let Some(v) = self.pids {
            p.pids = Some(v);
        }
        if let Some(v) = self.cpu {
            p.cpu = Some(v);
        }
        if let Some(v) = self.timeout {
            p.timeout = Some(v);
        }
        for (k, v) in &self.env {
            p.env.insert(k.clone(), v.clone());
        }
        if let Some(m) = self.mode {
            p.mode = m;
        }
        if let Some(d) = &self.cwd {
            p.cwd = Some(d.clone());
        }
        if let Some(t) = self.tmp_size {
            p.tmp_size = t;
        }
        if let Some(u) = self.worker_uid {
            p.worker_uid = Some(u);
        }
        if let Some(pool) = self.uid_pool {
            p.uid_pool = Some(pool);
        }
        if let Some(n) = self.uid_range {
            p.uid_range = n;
        }
        p.validate()?;
        Ok(p)
    }

    /// The command with this run's fds.
    pub fn command(&self, argv: Vec<OsString>) -> Command {
        Command {
            argv,
            keep_fds: self.keep_fd.clone(),
            status_fd: self.status_fd,
            warn_missing: true,
            // The CLI exits right after: let the kernel finish the teardown.
            skip_teardown_wait: true,
        }
    }
}

/// Runs `nodecell run`; returns the exit status.
pub fn main(args: RunArgs) -> i32 {
    let mut command = args.command;
    let base = match &args.pack {
        None => Policy::new(),
        Some(dir) => match pack_policy(dir, &mut command) {
            Ok(p) => p,
            Err(code) => return code,
        },
    };
    let policy = match args.sandbox.apply_to(base) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nodecell run: {e}");
            return 2;
        }
    };
    run_policy(&policy, args.sandbox.command(command))
}

/// The base policy for `--pack DIR`: provisions (or finds) the pack's venv and
/// turns its launch settings into a policy; resolves a bare command name
/// (`python`) against the venv's `bin`. Errors print and give the exit status
/// (2: not a pack / bad manifest; 125: provisioning failed).
fn pack_policy(dir: &std::path::Path, command: &mut [OsString]) -> Result<Policy, i32> {
    use nodecell_provision::Error as ProvisionError;
    let ls = match super::provision::launch_settings_for_run(dir) {
        Ok(ls) => ls,
        Err(e @ ProvisionError::Manifest(_)) => {
            eprintln!("nodecell run: --pack {}: {e}", dir.display());
            return Err(2);
        }
        Err(e) => {
            eprintln!(
                "nodecell: sandbox setup failed: provision: --pack {}: {e}",
                dir.display()
            );
            return Err(125);
        }
    };
    let mut p = Policy::new();
    p.ro.extend(ls.readonly_paths.iter().map(Bind::same));
    p.rw.extend(ls.writable_paths.iter().map(Bind::same));
    p.net = ls.network;
    p.memory = ls.max_memory;
    p.pids = ls.max_pids;
    p.cpu = ls.max_cpu_percent.map(|pct| pct / 100.0);
    p.timeout = ls.timeout.map(|d| d.as_secs_f64());
    p.gpu = ls.gpu;
    p.cwd = Some(ls.cwd.clone());
    for (k, v) in &ls.env {
        p.env.insert(k.clone(), v.clone());
    }
    if let Some(first) = command.first_mut() {
        let name = first.to_string_lossy().into_owned();
        if !name.contains('/') {
            if let Some(found) = ls.resolve_program(&name) {
                *first = found.into_os_string();
            }
        }
    }
    Ok(p)
}

/// Launches `cmd` under `policy` and turns the outcome into an exit status,
/// printing the one-line messages the contract promises.
pub fn run_policy(policy: &Policy, cmd: Command) -> i32 {
    match launch(policy, &cmd) {
        Ok(outcome) => {
            match outcome.exit.reason {
                ExitReason::Memory | ExitReason::Timeout => {
                    eprintln!("nodecell: {}", outcome.exit.detail)
                }
                _ => {}
            }
            outcome.exit.code
        }
        Err(Error::Policy(e)) => {
            eprintln!("nodecell run: {e}");
            2
        }
        Err(e @ Error::Exec { .. }) => {
            eprintln!("nodecell: {e}");
            e.exit_code()
        }
        Err(e) => {
            eprintln!("nodecell: sandbox setup failed: {e}");
            e.exit_code()
        }
    }
}
