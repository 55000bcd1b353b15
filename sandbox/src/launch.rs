//! The launch sequence, top to bottom.
//!
//! The launcher (this process) decides everything it can before `clone`
//! (mount plan, seccomp program, environment, cgroups), then clones one
//! child into new user, mount, pid, net, ipc and uts namespaces. The child
//! becomes the sandbox's pid 1: it waits for its uid/gid maps, drops to the
//! worker's credentials, builds the root, raises the remaining walls in the
//! order of [`sandbox_main`], reports them, and starts the command as its
//! only child ([`crate::init`]). The launcher stays outside as supervisor:
//! it forwards signals, enforces `--timeout`, writes the `--status-fd`
//! lines, removes the cgroups and returns how the command ended.

use std::ffi::{CString, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cgroup::{Controller, Limits, SandboxCgroup};
use crate::error::Error;
use crate::init::{self, ExecPlan};
use crate::landlock as landlock_wall;
use crate::mounts::MountPlan;
use crate::namespaces::{self, Identity};
use crate::policy::{show_bytes, Mode, Policy, PolicyError};
use crate::report::{
    write_status, Exit, ExitLine, ExitReason, Message, MessageReader, UpLine, Wall, WallReport,
    WallState,
};
use crate::rlimits::RlimitPlan;
use crate::{capabilities, env, fds, seccomp, sys};

/// The command to run and how it connects to its caller.
#[derive(Debug, Clone, Default)]
pub struct Command {
    /// Program and arguments. A program without `/` is looked up in the
    /// sandbox's `PATH`.
    pub argv: Vec<OsString>,
    /// fds that stay open, at the same number, in the command
    /// (`--keep-fd`); every other fd above 2 is closed.
    pub keep_fds: Vec<RawFd>,
    /// fd of the launcher that receives the two JSON status lines
    /// (`--status-fd`); never passed into the sandbox.
    pub status_fd: Option<RawFd>,
    /// Print one line to stderr naming the missing walls when running in
    /// best-effort mode (the CLI sets this).
    pub warn_missing: bool,
    /// Return as soon as the command has exited and the sandbox's init has
    /// reported it, without waiting for the kernel to finish tearing the
    /// namespaces down (as bwrap does). The init is exiting at that point and
    /// takes every remaining sandbox process with it; it is left as a zombie
    /// for the caller's parent to reap, so only a process about to exit (the
    /// CLI) should set this. Ignored with cgroup limits (the cgroup must be
    /// empty before it is removed) and after a timeout.
    pub skip_teardown_wait: bool,
}

impl Command {
    /// A command from its argv.
    pub fn new<I, S>(argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Command::default()
        }
    }
    /// Keeps `fd` open in the command.
    pub fn keep_fd(mut self, fd: RawFd) -> Self {
        self.keep_fds.push(fd);
        self
    }
    /// Sends the status lines to `fd`.
    pub fn status_fd(mut self, fd: RawFd) -> Self {
        self.status_fd = Some(fd);
        self
    }
    /// Prints the missing walls of a best-effort run on stderr.
    pub fn warn_missing(mut self, on: bool) -> Self {
        self.warn_missing = on;
        self
    }
    /// See [`Command::skip_teardown_wait`].
    pub fn skip_teardown_wait(mut self, on: bool) -> Self {
        self.skip_teardown_wait = on;
        self
    }
}

/// How a sandbox ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit status and reason.
    pub exit: Exit,
    /// Every wall and its state.
    pub walls: Vec<WallReport>,
    /// The cgroup directory that held the limits (removed by now).
    pub cgroup: Option<PathBuf>,
    /// Host pid of the sandbox's init.
    pub pid: i32,
}

impl Outcome {
    /// The walls reported missing (only ever non-empty in best-effort mode).
    pub fn missing(&self) -> impl Iterator<Item = &WallReport> {
        self.walls.iter().filter(|w| w.state == WallState::Missing)
    }
}

/// Everything the sandbox's pid 1 needs, prepared before `clone` (the child
/// works on its copy of this memory).
struct ChildPlan<'a> {
    policy: &'a Policy,
    identity: &'a Identity,
    mounts: &'a MountPlan,
    landlock_abi: Result<i32, String>,
    seccomp: &'a seccompiler::BpfProgram,
    rlimits: &'a RlimitPlan,
    exec: &'a ExecPlan,
    sync_read: RawFd,
    report_write: RawFd,
}

/// Signals the launcher handles (forwarding) plus SIGCHLD, read from a
/// signalfd while blocked.
const SUPERVISED: [libc::c_int; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Runs `cmd` inside a sandbox built from `policy` and waits for it.
///
/// Must be called from a single-threaded process (user namespaces require
/// it); [`Error::NotSingleThreaded`] otherwise. Setup failures (a wall
/// missing in required mode, a bad path, the kernel refusing a step) are
/// [`Error::Setup`] naming the wall; a command that cannot be executed
/// inside is [`Error::Exec`]. In every case the status fd receives its exit
/// line.
pub fn launch(policy: &Policy, cmd: &Command) -> Result<Outcome, Error> {
    let result = launch_inner(policy, cmd);
    match &result {
        Ok(outcome) => write_status(
            cmd.status_fd,
            &ExitLine {
                exit: &outcome.exit,
            },
        ),
        Err(e) => {
            let exit = Exit {
                code: e.exit_code(),
                reason: ExitReason::Setup,
                detail: e.to_string(),
            };
            write_status(cmd.status_fd, &ExitLine { exit: &exit });
        }
    }
    result
}

fn check_command(cmd: &Command) -> Result<(), PolicyError> {
    if cmd.argv.is_empty() {
        return Err(PolicyError::new(
            "COMMAND",
            "",
            "no command given (put it after `--`)",
        ));
    }
    for a in &cmd.argv {
        if a.as_bytes().contains(&0) {
            return Err(PolicyError::new(
                "COMMAND",
                a.to_string_lossy(),
                "arguments cannot contain NUL bytes",
            ));
        }
    }
    for &fd in &cmd.keep_fds {
        if fd < 0 || !sys::fd_is_open(fd) {
            return Err(PolicyError::new(
                "--keep-fd",
                fd,
                "not an open file descriptor of the launcher",
            ));
        }
    }
    if let Some(fd) = cmd.status_fd {
        if fd < 0 || !sys::fd_is_open(fd) {
            return Err(PolicyError::new(
                "--status-fd",
                fd,
                "not an open file descriptor of the launcher",
            ));
        }
        if cmd.keep_fds.contains(&fd) {
            return Err(PolicyError::new(
                "--status-fd",
                fd,
                "is also given to --keep-fd; the status fd never enters the sandbox",
            ));
        }
    }
    Ok(())
}

fn launch_inner(policy: &Policy, cmd: &Command) -> Result<Outcome, Error> {
    let start = Instant::now();
    policy.validate()?;
    check_command(cmd)?;
    let required = policy.mode == Mode::Required;
    let setup = |wall: Wall, why: String| Error::Setup {
        wall: wall.as_str().to_string(),
        why,
    };

    // Who the worker is: never host uid 0.
    let identity = Identity::for_launcher(policy.worker_uid)
        .map_err(|e| setup(Wall::UserNamespace, e.to_string()))?;

    // Walls known before clone.
    let landlock_abi = landlock_wall::requested_abi();
    if let (true, Err(why)) = (required, &landlock_abi) {
        return Err(setup(Wall::Landlock, why.clone()));
    }
    let program = seccomp::build().map_err(|e| setup(Wall::Seccomp, e.to_string()))?;
    let mounts = MountPlan::new(policy, identity.uid, identity.gid);
    let env_map = env::build(policy, std::env::vars_os());
    let exec = ExecPlan {
        argv: cmd
            .argv
            .iter()
            .map(|a| CString::new(a.as_bytes()).expect("checked for NUL"))
            .collect(),
        env: env::to_cstrings(&env_map),
        path: env_map.get("PATH").cloned().unwrap_or_default(),
        cwd: policy.cwd.clone().unwrap_or_else(|| PathBuf::from("/")),
        keep_fds: cmd.keep_fds.clone(),
    };

    // cgroups, only when a limit is asked for.
    let limits = Limits {
        memory: policy.memory,
        pids: policy.pids,
        cpu: policy.cpu,
    };
    let (cgroup, results) = if limits.any() {
        SandboxCgroup::create(&limits, &format!("nodecell-{}", sys::getpid()))
    } else {
        (SandboxCgroup::default(), Vec::new())
    };
    let mut cgroup = Some(cgroup);
    let cleanup = |cg: &mut Option<SandboxCgroup>| {
        if let Some(cg) = cg.take() {
            let _ = cg.destroy();
        }
    };
    let mut limit_walls = Vec::new();
    let (mut memory_missing, mut pids_missing) = (false, false);
    for (wall, ctrl, asked, shown) in [
        (
            Wall::Memory,
            Controller::Memory,
            policy.memory.is_some(),
            policy.memory.map(show_bytes),
        ),
        (
            Wall::Pids,
            Controller::Pids,
            policy.pids.is_some(),
            policy.pids.map(|p| p.to_string()),
        ),
        (
            Wall::Cpu,
            Controller::Cpu,
            policy.cpu.is_some(),
            policy.cpu.map(|c| format!("{c} CPU")),
        ),
    ] {
        if !asked {
            limit_walls.push(WallReport::new(wall, WallState::Off, "no limit asked"));
            continue;
        }
        let shown = shown.unwrap_or_default();
        let result = results
            .iter()
            .find(|(c, _)| *c == ctrl)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Err("not created".into()));
        match result {
            Ok(dir) => limit_walls.push(WallReport::new(
                wall,
                WallState::Active,
                format!("{shown} in {}", dir.display()),
            )),
            Err(why) if required => {
                cleanup(&mut cgroup);
                return Err(setup(
                    wall,
                    format!("cannot limit {} to {shown}: {why}", ctrl.name()),
                ));
            }
            Err(why) => {
                let fallback = match ctrl {
                    Controller::Memory => {
                        memory_missing = true;
                        format!("; RLIMIT_AS={shown} applied instead")
                    }
                    Controller::Pids => {
                        pids_missing = true;
                        format!("; RLIMIT_NPROC={shown} applied instead (counts all processes of the worker's uid)")
                    }
                    Controller::Cpu => String::new(),
                };
                limit_walls.push(WallReport::new(
                    wall,
                    WallState::Missing,
                    format!("{why}{fallback}"),
                ));
            }
        }
    }
    let rlimits = RlimitPlan::new(policy, memory_missing, pids_missing);
    if policy.gpu {
        let n = crate::mounts::gpu_device_count();
        let detail = if n == 0 {
            "no NVIDIA device nodes on this host".to_string()
        } else {
            format!("{n} device nodes and a read-only /sys")
        };
        limit_walls.push(WallReport::new(
            Wall::Gpu,
            if n == 0 {
                WallState::Off
            } else {
                WallState::Active
            },
            detail,
        ));
    }

    // User namespaces need a single-threaded caller.
    let threads = sys::thread_count().unwrap_or(0);
    if threads != 1 {
        cleanup(&mut cgroup);
        return Err(Error::NotSingleThreaded { threads });
    }

    let fail_launcher =
        |what: &str, e: std::io::Error| setup(Wall::Launcher, format!("{what}: {e}"));
    let (sync_read, sync_write) = match sys::pipe_cloexec() {
        Ok(p) => p,
        Err(e) => {
            cleanup(&mut cgroup);
            return Err(fail_launcher("pipe", e));
        }
    };
    let (report_read, report_write) = match sys::pipe_cloexec() {
        Ok(p) => p,
        Err(e) => {
            sys::close(sync_read);
            sys::close(sync_write);
            cleanup(&mut cgroup);
            return Err(fail_launcher("pipe", e));
        }
    };
    let supervised = sys::sigset(&SUPERVISED);
    let old_mask = match sys::sigprocmask(libc::SIG_BLOCK, &supervised) {
        Ok(m) => m,
        Err(e) => {
            for fd in [sync_read, sync_write, report_read, report_write] {
                sys::close(fd);
            }
            cleanup(&mut cgroup);
            return Err(fail_launcher("sigprocmask", e));
        }
    };
    let sigfd = match sys::signalfd(&supervised) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = sys::sigprocmask(libc::SIG_SETMASK, &old_mask);
            for fd in [sync_read, sync_write, report_read, report_write] {
                sys::close(fd);
            }
            cleanup(&mut cgroup);
            return Err(fail_launcher("signalfd", e));
        }
    };
    let close_all = |fds: &[RawFd]| fds.iter().for_each(|&fd| sys::close(fd));

    let plan = ChildPlan {
        policy,
        identity: &identity,
        mounts: &mounts,
        landlock_abi,
        seccomp: &program,
        rlimits: &rlimits,
        exec: &exec,
        sync_read,
        report_write,
    };

    // SAFETY: the process was checked to be single-threaded just above.
    let child = match unsafe { sys::clone_fork(namespaces::clone_flags(policy.net)) } {
        Ok(0) => sandbox_main(&plan),
        Ok(pid) => pid,
        Err(e) => {
            let _ = sys::sigprocmask(libc::SIG_SETMASK, &old_mask);
            close_all(&[sync_read, sync_write, report_read, report_write, sigfd]);
            cleanup(&mut cgroup);
            return Err(setup(
                Wall::UserNamespace,
                namespaces::NamespaceError::clone_failed(e).to_string(),
            ));
        }
    };
    close_all(&[sync_read, report_write]);

    // Maps, cgroups, then let the child go.
    let go = identity
        .write_maps(child)
        .map_err(|e| setup(Wall::UserNamespace, e.to_string()))
        .and_then(|()| match cgroup.as_ref() {
            Some(cg) if !cg.is_empty() => cg.add(child).map_err(|why| setup(Wall::Memory, why)),
            _ => Ok(()),
        })
        .and_then(|()| {
            sys::write_all(sync_write, b"g").map_err(|e| fail_launcher("starting the sandbox", e))
        });
    if let Err(e) = go {
        let _ = sys::kill(child, libc::SIGKILL);
        let _ = sys::wait(child, 0);
        let _ = sys::sigprocmask(libc::SIG_SETMASK, &old_mask);
        close_all(&[sync_write, report_read, sigfd]);
        cleanup(&mut cgroup);
        return Err(e);
    }

    let deadline = policy.timeout.map(|t| start + Duration::from_secs_f64(t));
    let cgroup_path = cgroup
        .as_ref()
        .and_then(|c| c.report_path().map(|p| p.to_path_buf()));
    let mut sup = Supervision::default();
    let early_return = cmd.skip_teardown_wait && cgroup.as_ref().is_none_or(|c| c.is_empty());
    supervise(
        child,
        report_read,
        sigfd,
        deadline,
        cmd,
        policy,
        &limit_walls,
        cgroup_path.as_deref(),
        early_return,
        &mut sup,
    );

    // The init is reaped: the whole pid namespace is gone. Collect the
    // last messages, restore the caller's signal mask, remove the cgroups.
    drain(
        report_read,
        &mut sup,
        cmd,
        policy,
        &limit_walls,
        cgroup_path.as_deref(),
        child,
    );
    let _ = sys::sigprocmask(libc::SIG_SETMASK, &old_mask);
    close_all(&[sync_write, report_read, sigfd]);
    let oom_kills = cgroup.as_ref().map(|c| c.oom_kills()).unwrap_or(0);
    cleanup(&mut cgroup);

    let walls = sup.walls.clone().unwrap_or_default();
    if let Some((wall, why, code)) = sup.setup {
        return Err(if wall == Wall::Exec.as_str() && code != 125 {
            Error::Exec { why, code }
        } else {
            Error::Setup { wall, why }
        });
    }
    let exit = decide_exit(&sup, policy, oom_kills);
    Ok(Outcome {
        exit,
        walls,
        cgroup: cgroup_path,
        pid: child,
    })
}

/// What the supervisor learned.
#[derive(Default)]
struct Supervision {
    walls: Option<Vec<WallReport>>,
    setup: Option<(String, String, i32)>,
    exit: Option<(Option<i32>, Option<i32>)>,
    init_status: Option<sys::WaitStatus>,
    timed_out: bool,
    killed_by: Option<i32>,
    reader: MessageReader,
    report_eof: bool,
}

#[allow(clippy::too_many_arguments)]
fn handle_bytes(
    bytes: &[u8],
    sup: &mut Supervision,
    cmd: &Command,
    policy: &Policy,
    launcher_walls: &[WallReport],
    cgroup: Option<&std::path::Path>,
    child: libc::pid_t,
) {
    for m in sup.reader.push(bytes) {
        match m {
            Message::Walls { mut walls } => {
                walls.extend(launcher_walls.iter().cloned());
                walls.sort_by_key(|w| Wall::rank(&w.name));
                write_status(
                    cmd.status_fd,
                    &UpLine {
                        walls: &walls,
                        cgroup: cgroup.map(|p| p.display().to_string()),
                        pid: child,
                    },
                );
                if cmd.warn_missing && policy.mode == Mode::BestEffort {
                    let missing: Vec<String> = walls
                        .iter()
                        .filter(|w| w.state == WallState::Missing)
                        .map(|w| format!("{} ({})", w.name, w.detail))
                        .collect();
                    if !missing.is_empty() {
                        eprintln!(
                            "nodecell: best-effort: running without {}",
                            missing.join("; ")
                        );
                    }
                }
                sup.walls = Some(walls);
            }
            Message::Setup { wall, why, code } => {
                if sup.setup.is_none() {
                    sup.setup = Some((wall, why, code));
                }
            }
            Message::Exit { code, signal } => sup.exit = Some((code, signal)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn supervise(
    child: libc::pid_t,
    report: RawFd,
    sigfd: RawFd,
    deadline: Option<Instant>,
    cmd: &Command,
    policy: &Policy,
    launcher_walls: &[WallReport],
    cgroup: Option<&std::path::Path>,
    early_return: bool,
    sup: &mut Supervision,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while sup.init_status.is_none() {
        // The init reported the command's end and closed its end of the
        // pipe: it is exiting, and the kernel kills what is left.
        if early_return
            && sup.exit.is_some()
            && sup.report_eof
            && !sup.timed_out
            && sup.killed_by.is_none()
        {
            if let Ok(Some((_, status))) = sys::wait(child, libc::WNOHANG) {
                sup.init_status = Some(status);
            }
            return;
        }
        let timeout_ms = match (deadline, sup.timed_out) {
            (Some(d), false) => {
                let left = d.saturating_duration_since(Instant::now());
                (left.as_millis() as i64 + 1).min(i32::MAX as i64) as i32
            }
            _ => -1,
        };
        let mut fds = [
            libc::pollfd {
                fd: sigfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if sup.report_eof { -1 } else { report },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let _ = sys::poll(&mut fds, timeout_ms);
        if let (Some(d), false) = (deadline, sup.timed_out) {
            if Instant::now() >= d {
                // Killing pid 1 takes the whole pid namespace with it.
                let _ = sys::kill(child, libc::SIGKILL);
                sup.timed_out = true;
            }
        }
        if fds[1].revents != 0 {
            match sys::read(report, &mut buf) {
                Ok(0) | Err(_) => sup.report_eof = true,
                Ok(n) => handle_bytes(&buf[..n], sup, cmd, policy, launcher_walls, cgroup, child),
            }
        }
        if fds[0].revents != 0 {
            while let Ok(Some(sig)) = sys::read_signalfd(sigfd) {
                let sig = sig as libc::c_int;
                if sig == libc::SIGCHLD {
                    continue;
                }
                if sup.walls.is_none() {
                    // Still setting up: the init has no handlers yet and
                    // would drop the signal. Abort the sandbox instead.
                    let _ = sys::kill(child, libc::SIGKILL);
                    sup.killed_by = Some(sig);
                } else {
                    let _ = sys::kill(child, sig);
                }
            }
        }
        if let Ok(Some((_, status))) = sys::wait(child, libc::WNOHANG) {
            sup.init_status = Some(status);
        }
    }
}

fn drain(
    report: RawFd,
    sup: &mut Supervision,
    cmd: &Command,
    policy: &Policy,
    launcher_walls: &[WallReport],
    cgroup: Option<&std::path::Path>,
    child: libc::pid_t,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while !sup.report_eof {
        let mut fds = [libc::pollfd {
            fd: report,
            events: libc::POLLIN,
            revents: 0,
        }];
        // Every writer is gone once the pid namespace is; never block long.
        if sys::poll(&mut fds, 1000).unwrap_or(0) == 0 {
            break;
        }
        match sys::read(report, &mut buf) {
            Ok(0) | Err(_) => sup.report_eof = true,
            Ok(n) => handle_bytes(&buf[..n], sup, cmd, policy, launcher_walls, cgroup, child),
        }
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

fn decide_exit(sup: &Supervision, policy: &Policy, oom_kills: u64) -> Exit {
    if sup.timed_out {
        let t = policy.timeout.unwrap_or(0.0);
        return Exit {
            code: 124,
            reason: ExitReason::Timeout,
            detail: format!("killed after {t}s (--timeout); the whole process tree was killed"),
        };
    }
    let memory_kill = |detail_sig: i32| Exit {
        code: 137,
        reason: ExitReason::Memory,
        detail: format!(
            "killed by the memory limit (--memory {}, {} bytes) with {}",
            policy.memory.map(show_bytes).unwrap_or_default(),
            policy.memory.unwrap_or(0),
            signal_name(detail_sig)
        ),
    };
    if let Some(sig) = sup.killed_by {
        return Exit {
            code: 128 + sig,
            reason: ExitReason::Signal,
            detail: format!("the launcher received {} during setup", signal_name(sig)),
        };
    }
    match sup.exit {
        Some((_, Some(sig))) if sig == libc::SIGKILL && oom_kills > 0 => memory_kill(sig),
        Some((_, Some(sig))) => Exit {
            code: 128 + sig,
            reason: ExitReason::Signal,
            detail: format!("killed by {}", signal_name(sig)),
        },
        Some((Some(code), _)) => Exit {
            code,
            reason: ExitReason::Exited,
            detail: format!("exited with status {code}"),
        },
        _ => match sup.init_status {
            Some(sys::WaitStatus::Signaled(sig)) if oom_kills > 0 => memory_kill(sig),
            Some(sys::WaitStatus::Signaled(sig)) => Exit {
                code: 128 + sig,
                reason: ExitReason::Signal,
                detail: format!("the sandbox's init was killed by {}", signal_name(sig)),
            },
            Some(sys::WaitStatus::Exited(code)) => Exit {
                code,
                reason: ExitReason::Exited,
                detail: format!("the sandbox's init exited with status {code} without a report"),
            },
            None => Exit {
                code: 125,
                reason: ExitReason::Setup,
                detail: "the sandbox vanished".into(),
            },
        },
    }
}

/// The sandbox's pid 1, from the moment `clone` returns until the command
/// runs. Each step says why it comes where it does. Never returns.
fn sandbox_main(plan: &ChildPlan) -> ! {
    let report = plan.report_write;
    let policy = plan.policy;
    let required = policy.mode == Mode::Required;
    let fail = |wall: Wall, why: String| -> ! {
        Message::Setup {
            wall: wall.as_str().to_string(),
            why,
            code: 125,
        }
        .send(report);
        sys::exit(125)
    };
    let mut walls: Vec<WallReport> = Vec::new();
    // A wall that could not be raised: fatal in required mode, reported in
    // best-effort mode.
    let wall = |w: Wall, r: Result<String, String>, walls: &mut Vec<WallReport>| match r {
        Ok(detail) => walls.push(WallReport::new(w, WallState::Active, detail)),
        Err(why) if required => fail(w, why),
        Err(why) => walls.push(WallReport::new(w, WallState::Missing, why)),
    };

    // 1. Let go of every launcher fd we do not need (status fd, signalfd,
    //    the other pipe ends, anything else inherited), first of all, so no
    //    host handle survives into the sandbox.
    let mut keep = plan.exec.keep_fds.clone();
    keep.extend([plan.sync_read, report]);
    if let Err(e) = fds::close_all_except(&keep) {
        fail(Wall::Launcher, format!("closing inherited fds: {e}"));
    }
    // 2. Die with the launcher, even before the maps exist.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    // 3. Wait until the launcher wrote our uid/gid maps and cgroups.
    let mut b = [0u8; 1];
    match sys::read(plan.sync_read, &mut b) {
        Ok(1) => {}
        _ => sys::exit(125), // the launcher is gone or gave up
    }
    // 4. Become the worker: a map alone leaves the launcher's host uid in
    //    place, so switch every id now, before touching any file.
    if let Err(e) = plan.identity.become_worker() {
        fail(Wall::UserNamespace, e.to_string());
    }
    // 5. Changing credentials cleared PDEATHSIG: set it again, then check
    //    the launcher did not die in between (its end of the sync pipe
    //    would be closed).
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    let mut pfd = [libc::pollfd {
        fd: plan.sync_read,
        events: libc::POLLIN,
        revents: 0,
    }];
    if sys::poll(&mut pfd, 0).unwrap_or(0) > 0
        && pfd[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
    {
        sys::exit(125);
    }
    sys::close(plan.sync_read);
    walls.push(WallReport::new(
        Wall::UserNamespace,
        WallState::Active,
        format!(
            "worker runs as host uid {} gid {}{}",
            plan.identity.uid,
            plan.identity.gid,
            if plan.identity.launcher_is_root {
                ""
            } else {
                " (the caller's own ids)"
            }
        ),
    ));

    // 6. Hostname of the UTS namespace.
    let uts = sys::sethostname("nodecell").map(|()| "hostname nodecell".to_string());
    walls.push(WallReport::new(
        Wall::UtsNamespace,
        WallState::Active,
        uts.unwrap_or_else(|e| format!("own namespace (sethostname: {e})")),
    ));
    // 7. The filesystem: a fresh read-only root, pivot, old root detached.
    if let Err(e) = plan.mounts.apply() {
        fail(Wall::MountNamespace, e.to_string());
    }
    walls.push(WallReport::new(
        Wall::MountNamespace,
        WallState::Active,
        format!(
            "read-only root, {} --ro/--rw binds, private /tmp and /dev/shm ({} each), new /proc, minimal /dev",
            plan.mounts.user_binds(),
            show_bytes(policy.tmp_size)
        ),
    ));
    walls.push(WallReport::new(
        Wall::PidNamespace,
        WallState::Active,
        "host processes invisible; pid 1 is nodecell's init",
    ));
    // 8. Network: a fresh namespace with loopback up, or the host's.
    if policy.net {
        walls.push(WallReport::new(
            Wall::NetNamespace,
            WallState::Off,
            "host network kept (--net)",
        ));
    } else {
        let lo = sys::interface_up("lo")
            .map(|()| "no network; loopback up".to_string())
            .unwrap_or_else(|e| format!("no network; loopback down ({e})"));
        walls.push(WallReport::new(Wall::NetNamespace, WallState::Active, lo));
    }
    walls.push(WallReport::new(
        Wall::IpcNamespace,
        WallState::Active,
        "own System V IPC and POSIX queues",
    ));
    // 9. Own session: no controlling terminal to inject input into.
    let _ = sys::setsid();
    // 10. rlimits, while we may still lower hard limits freely.
    wall(
        Wall::Rlimits,
        plan.rlimits.apply().map(|()| plan.rlimits.describe()),
        &mut walls,
    );
    // 11. Landlock on the new root's paths (sets no_new_privs).
    match &plan.landlock_abi {
        Ok(abi) => {
            let r = landlock_wall::apply(&plan.mounts.access_rules(), *abi);
            let scoped = matches!(&r, Ok(rep) if rep.scoped);
            wall(
                Wall::Landlock,
                r.map(|rep| format!("ABI {}, fully enforced, {} path rules", rep.abi, rep.rules))
                    .map_err(|e| e.to_string()),
                &mut walls,
            );
            if scoped {
                walls.push(WallReport::new(
                    Wall::LandlockScope,
                    WallState::Active,
                    "abstract unix sockets and signals scoped to the sandbox",
                ));
            } else if policy.net {
                wall(Wall::LandlockScope, Err(format!("Landlock ABI {abi} has no scoping (needs 6): host abstract unix sockets are reachable with --net")), &mut walls);
            } else {
                walls.push(WallReport::new(
                    Wall::LandlockScope,
                    WallState::Off,
                    format!("ABI {abi} has no scoping; the net and pid namespaces cover it"),
                ));
            }
        }
        Err(why) => {
            wall(Wall::Landlock, Err(why.clone()), &mut walls);
            walls.push(WallReport::new(
                Wall::LandlockScope,
                WallState::Missing,
                "no Landlock",
            ));
        }
    }
    // 12. Capabilities: every set cleared, no_new_privs on.
    let caps = capabilities::drop_all()
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let s = capabilities::current().map_err(|e| e.to_string())?;
            if s.all_clear() {
                Ok("all sets empty".to_string())
            } else {
                Err(capabilities::CapsError::Left(s).to_string())
            }
        });
    wall(Wall::Capabilities, caps, &mut walls);
    wall(
        Wall::NoNewPrivs,
        match sys::no_new_privs() {
            Ok(true) => Ok("set".into()),
            Ok(false) => Err("not set".into()),
            Err(e) => Err(e.to_string()),
        },
        &mut walls,
    );
    // 13. seccomp last: after it, only the command's own syscalls remain.
    wall(
        Wall::Seccomp,
        seccomp::install(plan.seccomp)
            .map(|()| {
                format!(
                    "allow-list of {} syscalls; clone3 ENOSYS; x32 refused",
                    seccomp::allowed_count()
                )
            })
            .map_err(|e| e.to_string()),
        &mut walls,
    );
    // 14. Tell the launcher, then become the init of the command.
    Message::Walls { walls }.send(report);
    let code = init::run(plan.exec, report);
    sys::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup_with(exit: Option<(Option<i32>, Option<i32>)>) -> Supervision {
        Supervision {
            exit,
            ..Supervision::default()
        }
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        let p = Policy::new().memory(64 << 20).timeout_secs(1.0);
        let e = decide_exit(&sup_with(Some((Some(3), None))), &p, 0);
        assert_eq!((e.code, e.reason), (3, ExitReason::Exited));
        let e = decide_exit(&sup_with(Some((None, Some(libc::SIGKILL)))), &p, 1);
        assert_eq!((e.code, e.reason), (137, ExitReason::Memory));
        assert!(e.detail.contains("--memory 64M"), "{}", e.detail);
        let e = decide_exit(&sup_with(Some((None, Some(libc::SIGKILL)))), &p, 0);
        assert_eq!((e.code, e.reason), (137, ExitReason::Signal));
        let e = decide_exit(&sup_with(Some((None, Some(libc::SIGTERM)))), &p, 0);
        assert_eq!((e.code, e.reason), (143, ExitReason::Signal));
        let mut s = sup_with(None);
        s.timed_out = true;
        let e = decide_exit(&s, &p, 0);
        assert_eq!((e.code, e.reason), (124, ExitReason::Timeout));
    }

    #[test]
    fn commands_are_checked() {
        assert_eq!(
            check_command(&Command::default()).unwrap_err().flag,
            "COMMAND"
        );
        assert_eq!(
            check_command(&Command::new(["true"]).keep_fd(987654))
                .unwrap_err()
                .flag,
            "--keep-fd"
        );
        assert_eq!(
            check_command(&Command::new(["true"]).status_fd(987654))
                .unwrap_err()
                .flag,
            "--status-fd"
        );
        assert_eq!(
            check_command(&Command::new(["true"]).status_fd(2).keep_fd(2))
                .unwrap_err()
                .flag,
            "--status-fd"
        );
        assert!(check_command(&Command::new(["true"]).keep_fd(2)).is_ok());
    }

    #[test]
    fn multi_threaded_callers_are_refused() {
        // The test harness runs tests on threads: this process has several.
        let helper = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
        let err = launch(&Policy::new(), &Command::new(["/bin/true"])).unwrap_err();
        assert!(matches!(err, Error::NotSingleThreaded { .. }), "{err}");
        assert_eq!(err.exit_code(), 125);
        helper.join().unwrap();
    }
}
