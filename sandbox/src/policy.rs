//! What a sandbox allows: the [`Policy`] (serde-serializable, built with
//! chained setters) and the parsers for its command-line spellings.
//!
//! Field names follow the `nodecell run` flags one to one, and every
//! [`PolicyError`] names the flag it is about (`--ro`, `--memory`, ...), so
//! the same message serves the CLI and the library.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What to do when the kernel cannot provide a wall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Refuse to run (exit 125) when any requested wall is missing.
    #[default]
    Required,
    /// Run anyway and report which walls are missing.
    BestEffort,
}

impl FromStr for Mode {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Mode, PolicyError> {
        match s {
            "required" => Ok(Mode::Required),
            "best-effort" => Ok(Mode::BestEffort),
            _ => Err(PolicyError::new(
                "--mode",
                s,
                "expected `required` or `best-effort`",
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Required => "required",
            Mode::BestEffort => "best-effort",
        })
    }
}

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Path on the host.
    pub src: PathBuf,
    /// Path inside the sandbox (absolute).
    pub dst: PathBuf,
}

impl Bind {
    /// A bind of `src` at the same path inside the sandbox.
    pub fn same(src: impl Into<PathBuf>) -> Bind {
        let src = src.into();
        Bind {
            dst: src.clone(),
            src,
        }
    }

    /// Parses the flag form `SRC[:DST]` (DST defaults to SRC). A relative SRC
    /// is taken relative to the current directory. `flag` names the flag in
    /// errors (`--ro`, `--rw`). Paths containing `:` cannot be written in
    /// this form; build a [`Bind`] directly for them.
    pub fn parse(flag: &'static str, s: &str) -> Result<Bind, PolicyError> {
        if s.is_empty() {
            return Err(PolicyError::new(flag, s, "empty path"));
        }
        let (src, dst) = match s.split_once(':') {
            Some((src, dst)) => (src, Some(dst)),
            None => (s, None),
        };
        if src.is_empty() {
            return Err(PolicyError::new(flag, s, "empty source path before `:`"));
        }
        let src = absolute(Path::new(src)).map_err(|e| PolicyError::new(flag, s, e))?;
        let dst = match dst {
            None => src.clone(),
            Some("") => {
                return Err(PolicyError::new(
                    flag,
                    s,
                    "empty destination path after `:`",
                ))
            }
            Some(d) if !d.starts_with('/') => {
                return Err(PolicyError::new(
                    flag,
                    s,
                    "the destination must be an absolute path",
                ))
            }
            Some(d) => PathBuf::from(d),
        };
        Ok(Bind { src, dst })
    }
}

/// Makes `p` absolute against the current directory without resolving links.
fn absolute(p: &Path) -> Result<PathBuf, String> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    Ok(cwd.join(p))
}

/// Resource limits that are always applied with `setrlimit`, whatever the
/// cgroup situation (the floor under the cgroup limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE` (capped at the launcher's own hard limit).
    pub open_files: u64,
    /// `RLIMIT_FSIZE` in bytes; `None` leaves it unlimited.
    pub file_size: Option<u64>,
    /// `RLIMIT_AS` in bytes; `None` leaves it unlimited. When `--memory` is
    /// set but the memory cgroup is missing (best-effort mode), the memory
    /// limit is applied here instead.
    pub address_space: Option<u64>,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            open_files: 65536,
            file_size: None,
            address_space: None,
        }
    }
}

/// Default size cap of the private `/tmp` (and `/dev/shm`): 256 MiB.
pub const DEFAULT_TMP_SIZE: u64 = 256 << 20;

/// Most uids one cell may own (`--uid-range`).
pub const MAX_UID_RANGE: u32 = 4096;

/// Everything a sandbox allows. Build it with [`Policy::new`] and the chained
/// setters, or deserialize it (unknown fields are refused).
///
/// ```
/// use nodecell_sandbox::{Mode, Policy};
/// let p = Policy::new()
///     .ro("/usr/share/zoneinfo")
///     .memory(512 << 20)
///     .timeout_secs(30.0)
///     .mode(Mode::BestEffort);
/// assert_eq!(p.memory, Some(512 << 20));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// `--mode`: what a missing wall does.
    pub mode: Mode,
    /// `--ro`: read-only binds (executable).
    pub ro: Vec<Bind>,
    /// `--rw`: writable binds (no exec, no setuid, no devices).
    pub rw: Vec<Bind>,
    /// `--overlay`: a folder seen read-write through an overlay whose writes
    /// land in a state directory (see [`crate::overlay`]).
    pub overlay: Vec<crate::overlay::Overlay>,
    /// `--net`: keep the host network (default: a fresh network namespace with only loopback).
    pub net: bool,
    /// `--memory`: memory cgroup limit in bytes.
    pub memory: Option<u64>,
    /// `--pids`: pids cgroup limit (processes and threads).
    pub pids: Option<u64>,
    /// `--cpu`: CPU quota as a fraction of one CPU (0.5 = half a CPU, 2 = two CPUs).
    pub cpu: Option<f64>,
    /// `--timeout`: wall-clock seconds before the whole tree is killed (exit 124).
    pub timeout: Option<f64>,
    /// `--env K=V`: variables added to the small default environment.
    pub env: BTreeMap<String, String>,
    /// `--cwd`: working directory inside the sandbox (default `/`).
    pub cwd: Option<PathBuf>,
    /// `--gpu`: expose NVIDIA device nodes and a read-only `/sys`.
    pub gpu: bool,
    /// `--tmp-size`: size cap of the private `/tmp` and `/dev/shm` in bytes.
    pub tmp_size: u64,
    /// `--worker-uid`: host uid of the worker when the launcher is root, as
    /// given (default: a uid leased for this cell from `uid_pool`). Never 0.
    /// Rootless launches always use the caller's uid.
    pub worker_uid: Option<u32>,
    /// `--uid-pool`: where root launchers lease each cell's host uid
    /// (default [`crate::uids::DEFAULT_POOL`]).
    pub uid_pool: Option<crate::uids::UidPool>,
    /// `--uid-range`: number of consecutive host uids the cell owns (root
    /// launchers; default 1). With more than one, the command keeps
    /// `CAP_SETUID`/`CAP_SETGID` (and `CAP_SETPCAP`) inside its user
    /// namespace so a zygote can give each forked worker its own uid
    /// ([`crate::confine`]).
    pub uid_range: u32,
    /// rlimits applied in every sandbox.
    pub rlimits: Rlimits,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Required,
            ro: Vec::new(),
            rw: Vec::new(),
            overlay: Vec::new(),
            net: false,
            memory: None,
            pids: None,
            cpu: None,
            timeout: None,
            env: BTreeMap::new(),
            cwd: None,
            gpu: false,
            tmp_size: DEFAULT_TMP_SIZE,
            worker_uid: None,
            uid_pool: None,
            uid_range: 1,
            rlimits: Rlimits::default(),
        }
    }
}

impl Policy {
    /// The default policy: every wall, no network, no binds beyond the
    /// minimal system root, no cgroup limits.
    pub fn new() -> Policy {
        Policy::default()
    }
    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
    /// Adds a read-only bind at the same path.
    pub fn ro(mut self, path: impl Into<PathBuf>) -> Self {
        self.ro.push(Bind::same(path));
        self
    }
    /// Adds a read-only bind of `src` at `dst`.
    pub fn ro_at(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Self {
        self.ro.push(Bind {
            src: src.into(),
            dst: dst.into(),
        });
        self
    }
    /// Adds a writable bind at the same path.
    pub fn rw(mut self, path: impl Into<PathBuf>) -> Self {
        self.rw.push(Bind::same(path));
        self
    }
    /// Adds a writable bind of `src` at `dst`.
    pub fn rw_at(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Self {
        self.rw.push(Bind {
            src: src.into(),
            dst: dst.into(),
        });
        self
    }
    /// Adds an overlay of `lower` at `dst` whose writes go to `state`.
    pub fn overlay(
        mut self,
        lower: impl Into<PathBuf>,
        state: impl Into<PathBuf>,
        dst: impl Into<PathBuf>,
    ) -> Self {
        self.overlay.push(crate::overlay::Overlay {
            lower: lower.into(),
            state: state.into(),
            dst: dst.into(),
        });
        self
    }
    /// Keeps (true) or cuts (false) the host network.
    pub fn net(mut self, on: bool) -> Self {
        self.net = on;
        self
    }
    /// Sets the memory limit in bytes.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self
    }
    /// Sets the process/thread limit.
    pub fn pids(mut self, n: u64) -> Self {
        self.pids = Some(n);
        self
    }
    /// Sets the CPU quota (fraction of one CPU).
    pub fn cpu(mut self, fraction: f64) -> Self {
        self.cpu = Some(fraction);
        self
    }
    /// Sets the wall-clock timeout in seconds.
    pub fn timeout_secs(mut self, secs: f64) -> Self {
        self.timeout = Some(secs);
        self
    }
    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    /// Sets the working directory inside the sandbox.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    /// Exposes (true) or hides (false) GPU device nodes.
    pub fn gpu(mut self, on: bool) -> Self {
        self.gpu = on;
        self
    }
    /// Sets the size cap of the private `/tmp` and `/dev/shm`.
    pub fn tmp_size(mut self, bytes: u64) -> Self {
        self.tmp_size = bytes;
        self
    }
    /// Sets the worker's host uid (root launches only; never 0).
    pub fn worker_uid(mut self, uid: u32) -> Self {
        self.worker_uid = Some(uid);
        self
    }
    /// Sets the pool cells' uids are leased from (root launches only).
    pub fn uid_pool(mut self, pool: crate::uids::UidPool) -> Self {
        self.uid_pool = Some(pool);
        self
    }
    /// Sets the number of host uids the cell owns (root launches only).
    pub fn uid_range(mut self, n: u32) -> Self {
        self.uid_range = n;
        self
    }

    /// Checks every field; the error names the flag and the value.
    /// Bind sources must exist; destinations must be absolute, normalised,
    /// and outside `/proc` and `/dev` (which the sandbox builds itself).
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (flag, binds) in [("--ro", &self.ro), ("--rw", &self.rw)] {
            for b in binds {
                let shown = show_bind(b);
                if let Err(e) = std::fs::metadata(&b.src) {
                    return Err(PolicyError::new(flag, &shown, io_reason(&e)));
                }
                check_dst(&b.dst).map_err(|why| PolicyError::new(flag, &shown, why))?;
            }
        }
        for o in &self.overlay {
            o.validate()?;
            check_dst(&o.dst).map_err(|why| PolicyError::new("--overlay", o.dst.display(), why))?;
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_absolute() {
                return Err(PolicyError::new(
                    "--cwd",
                    cwd.display(),
                    "must be an absolute path inside the sandbox",
                ));
            }
        }
        if let Some(m) = self.memory {
            if m < (1 << 20) {
                return Err(PolicyError::new("--memory", m, "must be at least 1M"));
            }
        }
        if self.pids == Some(0) {
            return Err(PolicyError::new("--pids", 0, "must be at least 1"));
        }
        if let Some(c) = self.cpu {
            if !c.is_finite() || !(0.01..=4096.0).contains(&c) {
                return Err(PolicyError::new(
                    "--cpu",
                    c,
                    "must be a fraction of one CPU between 0.01 and 4096",
                ));
            }
        }
        if let Some(t) = self.timeout {
            if !t.is_finite() || t <= 0.0 || t > 1e9 {
                return Err(PolicyError::new(
                    "--timeout",
                    t,
                    "must be a positive number of seconds",
                ));
            }
        }
        for (k, v) in &self.env {
            check_env(k, v).map_err(|why| PolicyError::new("--env", format!("{k}={v}"), why))?;
        }
        if self.tmp_size < 4096 {
            return Err(PolicyError::new(
                "--tmp-size",
                self.tmp_size,
                "must be at least 4K",
            ));
        }
        if self.worker_uid == Some(0) {
            return Err(PolicyError::new(
                "--worker-uid",
                0,
                "the worker never runs as host uid 0; pick an unprivileged uid",
            ));
        }
        if self.uid_range == 0 || self.uid_range > MAX_UID_RANGE {
            return Err(PolicyError::new(
                "--uid-range",
                self.uid_range,
                format!("must be between 1 and {MAX_UID_RANGE}"),
            ));
        }
        if let Some(pool) = &self.uid_pool {
            pool.validate()?;
            if pool.count < self.uid_range {
                return Err(PolicyError::new(
                    "--uid-range",
                    self.uid_range,
                    format!("larger than the pool ({pool})"),
                ));
            }
        }
        if self.rlimits.open_files < 16 {
            return Err(PolicyError::new(
                "rlimits.open_files",
                self.rlimits.open_files,
                "must be at least 16",
            ));
        }
        Ok(())
    }
}

fn show_bind(b: &Bind) -> String {
    if b.src == b.dst {
        b.src.display().to_string()
    } else {
        format!("{}:{}", b.src.display(), b.dst.display())
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Checks a bind destination: absolute, no `.`/`..`, not `/`, not under
/// `/proc` or `/dev`.
fn check_dst(dst: &Path) -> Result<(), String> {
    if !dst.is_absolute() {
        return Err("the destination must be an absolute path".into());
    }
    let mut depth = 0;
    for c in dst.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(_) => depth += 1,
            _ => return Err("the destination must not contain `.` or `..`".into()),
        }
    }
    if depth == 0 {
        return Err("cannot bind over the sandbox's root `/`".into());
    }
    for reserved in ["/proc", "/dev"] {
        if dst.starts_with(reserved) {
            return Err(format!(
                "{reserved} is built by the sandbox and cannot be bound over"
            ));
        }
    }
    if dst.as_os_str().len() > 4000 {
        return Err("path too long".into());
    }
    Ok(())
}

fn check_env(k: &str, v: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("empty variable name".into());
    }
    if k.contains('=') || k.contains('\0') || v.contains('\0') {
        return Err("names cannot contain `=` and values cannot contain NUL".into());
    }
    Ok(())
}

/// A policy field with a bad value. `flag` is the `nodecell run` flag
/// (`--memory`), `value` what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value}: {reason}")]
pub struct PolicyError {
    /// The flag (or policy field) at fault.
    pub flag: String,
    /// The value as given.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl PolicyError {
    /// Builds an error for `flag` with `value`.
    pub fn new(
        flag: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        PolicyError {
            flag: flag.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Parses a byte count by nodecell's one size table
/// ([`nodecell_units::parse_size`]: `512M`, `2G`, `1GiB` are powers of 1024,
/// `8GB` of 1000, as in manifests). `flag` names the flag in errors.
pub fn parse_bytes(flag: &'static str, s: &str) -> Result<u64, PolicyError> {
    nodecell_units::parse_size(s).map_err(|e| PolicyError::new(flag, s, e.to_string()))
}

/// Parses a positive decimal number (`--cpu 0.5`, `--timeout 30`).
pub fn parse_positive(flag: &'static str, s: &str) -> Result<f64, PolicyError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| PolicyError::new(flag, s, "expected a number"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(PolicyError::new(flag, s, "must be greater than 0"));
    }
    Ok(v)
}

/// Parses `K=V`.
pub fn parse_env(s: &str) -> Result<(String, String), PolicyError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| PolicyError::new("--env", s, "expected NAME=VALUE"))?;
    check_env(k, v).map_err(|why| PolicyError::new("--env", s, why))?;
    Ok((k.to_string(), v.to_string()))
}

/// Human form of a byte count (`64M`, `1.5G`), for messages.
pub fn show_bytes(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift {
            let v = n as f64 / (1u64 << shift) as f64;
            return if v.fract() == 0.0 {
                format!("{v:.0}{unit}")
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_with_units() {
        assert_eq!(parse_bytes("--memory", "512").unwrap(), 512);
        assert_eq!(parse_bytes("--memory", "64K").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("--memory", "512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("--memory", "2g").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("--memory", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("--memory", "3T").unwrap(), 3 << 40);
        assert_eq!(parse_bytes("--memory", "1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("--memory", "8GB").unwrap(), 8_000_000_000);
    }

    #[test]
    fn bad_bytes_name_the_flag() {
        for bad in ["", "M", "12Q", "-5M", "0", "99999999999999999999"] {
            let e = parse_bytes("--memory", bad).unwrap_err();
            assert_eq!(e.flag, "--memory", "{bad}");
            assert!(e.to_string().starts_with("--memory "), "{e}");
        }
        assert!(parse_bytes("--tmp-size", "20000000T")
            .unwrap_err()
            .reason
            .contains("too large"));
    }

    #[test]
    fn binds_parse_src_and_dst() {
        let b = Bind::parse("--ro", "/usr/share").unwrap();
        assert_eq!(b.src, PathBuf::from("/usr/share"));
        assert_eq!(b.dst, PathBuf::from("/usr/share"));
        let b = Bind::parse("--rw", "/srv/data:/data").unwrap();
        assert_eq!(b.src, PathBuf::from("/srv/data"));
        assert_eq!(b.dst, PathBuf::from("/data"));
        let b = Bind::parse("--ro", "rel/dir").unwrap();
        assert!(b.src.is_absolute() && b.src.ends_with("rel/dir"));
        assert_eq!(b.src, b.dst);
    }

    #[test]
    fn bad_binds_are_refused() {
        assert!(Bind::parse("--ro", "").is_err());
        assert!(Bind::parse("--ro", ":/x").is_err());
        assert!(Bind::parse("--ro", "/x:").is_err());
        let e = Bind::parse("--rw", "/x:relative").unwrap_err();
        assert_eq!(e.flag, "--rw");
        assert!(e.reason.contains("absolute"));
    }

    #[test]
    fn validate_checks_binds() {
        let e = Policy::new()
            .ro("/nonexistent/nodecell-test")
            .validate()
            .unwrap_err();
        assert_eq!(e.flag, "--ro");
        assert!(e.reason.contains("no such file"), "{e}");
        for dst in ["/", "/proc/x", "/dev", "/a/../b"] {
            let e = Policy::new().ro_at("/usr", dst).validate().unwrap_err();
            assert_eq!(e.flag, "--ro", "{dst}");
        }
        assert!(Policy::new()
            .ro("/usr")
            .rw_at("/tmp", "/data")
            .validate()
            .is_ok());
    }

    #[test]
    fn validate_checks_numbers() {
        assert_eq!(
            Policy::new().memory(10).validate().unwrap_err().flag,
            "--memory"
        );
        assert_eq!(Policy::new().pids(0).validate().unwrap_err().flag, "--pids");
        assert_eq!(Policy::new().cpu(0.0).validate().unwrap_err().flag, "--cpu");
        assert_eq!(
            Policy::new().cpu(f64::NAN).validate().unwrap_err().flag,
            "--cpu"
        );
        assert_eq!(
            Policy::new()
                .timeout_secs(-1.0)
                .validate()
                .unwrap_err()
                .flag,
            "--timeout"
        );
        assert_eq!(
            Policy::new().tmp_size(1).validate().unwrap_err().flag,
            "--tmp-size"
        );
        assert_eq!(
            Policy::new().cwd("rel").validate().unwrap_err().flag,
            "--cwd"
        );
        let e = Policy::new().worker_uid(0).validate().unwrap_err();
        assert_eq!(e.flag, "--worker-uid");
        assert!(e.reason.contains("uid 0"));
        assert!(Policy::new()
            .memory(64 << 20)
            .pids(10)
            .cpu(0.5)
            .timeout_secs(1.0)
            .validate()
            .is_ok());
    }

    #[test]
    fn env_parsing() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), "".into()));
        assert_eq!(parse_env("novalue").unwrap_err().flag, "--env");
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn mode_parsing() {
        assert_eq!("required".parse::<Mode>().unwrap(), Mode::Required);
        assert_eq!("best-effort".parse::<Mode>().unwrap(), Mode::BestEffort);
        assert_eq!("strict".parse::<Mode>().unwrap_err().flag, "--mode");
    }

    #[test]
    fn positive_numbers() {
        assert_eq!(parse_positive("--cpu", "0.5").unwrap(), 0.5);
        assert!(parse_positive("--cpu", "0").is_err());
        assert!(parse_positive("--timeout", "abc").is_err());
        assert!(parse_positive("--timeout", "inf").is_err());
    }

    #[test]
    fn policy_round_trips_through_json() {
        let p = Policy::new()
            .ro("/usr/share")
            .rw_at("/srv", "/data")
            .memory(64 << 20)
            .env("A", "1")
            .mode(Mode::BestEffort);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"best-effort\""));
        let back: Policy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        // Missing fields take defaults; unknown fields are refused.
        let d: Policy = serde_json::from_str("{}").unwrap();
        assert_eq!(d, Policy::default());
        assert!(serde_json::from_str::<Policy>("{\"netwrok\": true}").is_err());
    }

    #[test]
    fn bytes_are_shown_short() {
        assert_eq!(show_bytes(64 << 20), "64M");
        assert_eq!(show_bytes(3 << 29), "1.5G");
        assert_eq!(show_bytes(100), "100B");
    }
}
