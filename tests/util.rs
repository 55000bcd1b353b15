//! Shared helpers for the integration tests: the built binary, world-readable
//! temp dirs (sandboxed workers never run as host root, so everything they
//! read must be readable by an unprivileged uid), the test user for rootless
//! runs, and small process helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `nodecell` binary under test.
pub fn nodecell_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nodecell"))
}

/// A `nodecell` command with the given arguments.
pub fn nodecell(args: &[&str]) -> Command {
    let mut c = Command::new(nodecell_bin());
    c.args(args);
    c
}

/// Debian's interpreter: readable by any uid (pyenv's under /root is not).
pub const PYTHON: &str = "/usr/bin/python3.11";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared development venv (has numpy), made by scripts/setup.sh.
pub fn dev_venv() -> PathBuf {
    let v = repo().join(".venv");
    assert!(
        v.join("bin/python").exists(),
        "{} is missing: run scripts/setup.sh first",
        v.display()
    );
    v
}

/// Output of a finished command, decoded.
#[derive(Debug)]
pub struct Ran {
    /// Exit code (128 + signal when killed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Ran {
        use std::os::unix::process::ExitStatusExt;
        let code = o
            .status
            .code()
            .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0));
        Ran {
            code,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `nodecell` with `args` and waits.
pub fn run(args: &[&str]) -> Ran {
    nodecell(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn nodecell")
        .into()
}

/// Runs `nodecell run [flags] -- sh -c script`.
pub fn sh(flags: &[&str], script: &str) -> Ran {
    let mut a: Vec<&str> = vec!["run"];
    a.extend_from_slice(flags);
    a.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    run(&a)
}

/// Runs `nodecell run [flags] -- python3.11 -c code`.
pub fn py(flags: &[&str], code: &str) -> Ran {
    let mut a: Vec<&str> = vec!["run"];
    a.extend_from_slice(flags);
    a.extend_from_slice(&["--", PYTHON, "-c", code]);
    run(&a)
}

/// A temp dir every uid can enter and read (mode 0755), removed on drop.
pub fn world_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("nodecell-it-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Makes `path` writable by everyone (for `--rw` dirs a worker uid writes).
pub fn world_writable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The default pool root launchers lease each cell's uid from.
pub const UID_POOL: std::ops::RangeInclusive<u32> = 0x7000_0000..=0x7000_0000 + 65535;

/// Whether `uid` is what a default `nodecell run` by this user gives a
/// worker: a uid of the default pool as root, the caller's own rootless.
pub fn is_worker_uid(uid: u32) -> bool {
    if is_root() {
        UID_POOL.contains(&uid)
    } else {
        // SAFETY: geteuid has no arguments and cannot fail.
        uid == unsafe { libc::geteuid() }
    }
}

/// Name of the unprivileged user the tests and the suite use.
pub const TEST_USER: &str = "nodecell-test";

/// (uid, gid) of the test user, created with `useradd` if missing (root only).
pub fn test_user() -> (u32, u32) {
    let lookup = || -> Option<(u32, u32)> {
        let uid = Command::new("id").args(["-u", TEST_USER]).output().ok()?;
        let gid = Command::new("id").args(["-g", TEST_USER]).output().ok()?;
        if !uid.status.success() {
            return None;
        }
        Some((
            String::from_utf8_lossy(&uid.stdout).trim().parse().ok()?,
            String::from_utf8_lossy(&gid.stdout).trim().parse().ok()?,
        ))
    };
    if let Some(ids) = lookup() {
        return ids;
    }
    assert!(
        is_root(),
        "the test user {TEST_USER} does not exist and only root can create it"
    );
    let st = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ])
        .status()
        .expect("useradd");
    // A concurrent test may have created it first.
    lookup().unwrap_or_else(|| panic!("useradd {TEST_USER} failed: {st}"))
}

/// A command that runs as the test user (from root), with no supplementary groups.
pub fn as_test_user(mut cmd: Command) -> Command {
    let (uid, gid) = test_user();
    // SAFETY: the closure only makes async-signal-safe system calls.
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
    cmd
}

/// Spawns `nodecell run` with a status pipe on fd 3 and returns the child
/// and a reader of the status lines.
pub fn spawn_with_status(flags: &[&str], argv: &[&str]) -> (Child, BufReader<std::fs::File>) {
    let (r, w) = pipe();
    let mut a: Vec<&str> = vec!["run", "--status-fd", "3"];
    a.extend_from_slice(flags);
    a.push("--");
    a.extend_from_slice(argv);
    let mut cmd = nodecell(&a);
    let wfd = std::os::fd::AsRawFd::as_raw_fd(&w);
    // SAFETY: dup2 is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(w);
    (child, BufReader::new(r))
}

/// Reads one status line as JSON.
pub fn status_line(r: &mut BufReader<std::fs::File>) -> serde_json::Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad status line {line:?}: {e}"))
}

/// A pipe as two files (read, write), close-on-exec.
pub fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// Host pids whose command line contains `marker`.
pub fn pids_with_marker(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != me)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// A shell snippet starting `body` in the background in a shell whose
/// command line carries `marker`; the marker does not appear literally in
/// the snippet, so only that background shell matches [`pids_with_marker`].
pub fn bg(marker: &str, body: &str) -> String {
    let (a, b) = marker.split_at(marker.len() / 2);
    format!("sh -c '{body}; : {a}''{b}' &")
}

/// Kills the process groups of `pids` (a control daemon and its children).
pub fn kill_groups(pids: &[u32]) {
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
        // SAFETY: plain kill of processes this test started (unique marker).
        unsafe {
            if let Some(g) = pgrp.filter(|&g| g > 1) {
                libc::kill(-g, libc::SIGKILL);
            }
            libc::kill(*p as i32, libc::SIGKILL);
        }
    }
}

/// Waits up to `secs` for `cond`.
pub fn wait_until(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// A unique marker for finding a test's processes.
pub fn marker(name: &str) -> String {
    format!(
        "nodecell-marker-{name}-{}-{}",
        std::process::id(),
        rand_u32()
    )
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u32::from_le_bytes(b)
}
