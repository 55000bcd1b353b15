//! The launch sequence, top to bottom.
//!
//! The launcher (this process) decides everything it can before `clone`
//! (the cell's host identity, mount plan, seccomp program, environment,
//! cgroups), then clones one child into new user, mount, pid, ipc and uts
//! namespaces (the child has its network namespace built beside it, by a
//! helper sharing its memory, while it waits for its maps and builds the
//! filesystem: [`crate::netns`]). The child becomes the sandbox's pid 1 and runs
//! [`CHILD_STEPS`] in order (the order is data: each step says why it comes
//! where it does), reports the walls, and starts the command as its only
//! child ([`crate::init`]). The launcher stays outside as supervisor
//! ([`crate::supervise`]): it forwards signals, enforces `--timeout`, writes
//! the `--status-fd` lines, removes the cgroups and returns how the command
//! ended.

use std::ffi::{CString, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cgroup::{Controller, Limits, SandboxCgroup};
use crate::error::Error;
use crate::init::{self, ExecPlan};
use crate::landlock as landlock_wall;
use crate::memfd::MemfdPlan;
use crate::mounts::MountPlan;
use crate::namespaces::{self, Identity};
use crate::policy::{show_bytes, Mode, Policy, PolicyError};
use nodecell_wire::status::Record;

use crate::report::{write_status, Exit, ExitReason, Message, Wall, WallReport, WallState};
use crate::rlimits::RlimitPlan;
use crate::supervise::{decide_exit, Supervision, Watch};
use crate::{capabilities, cpu, env, fds, netns, pid1, seccomp, sys};

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
    /// Host uid (and gid) the cell ran as; the first of `uids`.
    pub uid: u32,
    /// Host gid the cell ran as.
    pub gid: u32,
    /// Number of host uids the cell owned (`--uid-range`).
    pub uids: u32,
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
    /// The launcher's supplementary groups (what a rootless child keeps).
    launcher_groups: &'a [u32],
    mounts: &'a MountPlan,
    memfd: &'a MemfdPlan,
    landlock_abi: Result<i32, String>,
    seccomp: &'a seccompiler::BpfProgram,
    /// Syscalls the filter allows (for the report).
    seccomp_allowed: usize,
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
        Ok(outcome) => write_status(cmd.status_fd, &Record::Exit(outcome.exit.clone())),
        Err(e) => {
            let exit = Exit {
                code: e.exit_code(),
                reason: ExitReason::Setup,
                detail: e.to_string(),
            };
            write_status(cmd.status_fd, &Record::Exit(exit));
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

/// What the launcher holds while the sandbox runs, released in one place
/// (also on every early error): pipe and signal fds, the caller's signal
/// mask, the cgroups, the caller's CPU set and time slice. The cloned child never runs this (it leaves with
/// `_exit`).
#[derive(Default)]
struct Held {
    fds: Vec<RawFd>,
    old_mask: Option<libc::sigset_t>,
    cgroup: Option<SandboxCgroup>,
    /// The caller's CPU set and time slice, given back on the way out.
    pin: Option<cpu::Pin>,
}

impl Held {
    fn close(&mut self, fd: RawFd) {
        self.fds.retain(|&f| f != fd);
        sys::close(fd);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(m) = self.old_mask.take() {
            let _ = sys::sigprocmask(libc::SIG_SETMASK, &m);
        }
        for fd in self.fds.drain(..) {
            sys::close(fd);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy();
        }
        if let Some(pin) = self.pin.take() {
            let _ = pin.restore();
        }
    }
}

fn setup_err(wall: Wall, why: impl Into<String>) -> Error {
    Error::Setup {
        wall: wall.as_str().to_string(),
        why: why.into(),
    }
}

fn launch_inner(policy: &Policy, cmd: &Command) -> Result<Outcome, Error> {
    let start = Instant::now();
    crate::trace::start();
    policy.validate()?;
    check_command(cmd)?;
    // User namespaces need a single-threaded caller.
    let threads = sys::thread_count().unwrap_or(0);
    if threads != 1 {
        return Err(Error::NotSingleThreaded { threads });
    }
    let required = policy.mode == Mode::Required;

    // Who the worker is: never host uid 0; a root launcher leases this
    // cell's own uid, held until the sandbox is gone.
    let (identity, _lease) = Identity::for_launcher(policy)
        .map_err(|e| setup_err(Wall::UserNamespace, e.to_string()))?;
    crate::trace::mark("launcher", "identity");
    let launcher_groups: Vec<u32> = sys::groups()
        .unwrap_or_default()
        .into_iter()
        .filter(|&g| g != sys::getgid())
        .collect();

    // Walls known before clone.
    let landlock_abi = landlock_wall::requested_abi();
    if let (true, Err(why)) = (required, &landlock_abi) {
        return Err(setup_err(Wall::Landlock, why.clone()));
    }
    crate::trace::mark("launcher", "landlock abi");
    let memfd = MemfdPlan::for_launcher(identity.launcher_is_root);
    let (program, seccomp_allowed) = seccomp::build_counted(&memfd.filter_options())
        .map_err(|e| setup_err(Wall::Seccomp, e.to_string()))?;
    crate::trace::mark("launcher", "seccomp built");
    let mounts = MountPlan::new(policy, identity.uid, identity.gid);
    for o in &policy.overlay {
        crate::overlay::prepare_state(o, identity.uid, identity.gid, identity.launcher_is_root)
            .map_err(|e| setup_err(Wall::Overlay, e.to_string()))?;
    }
    let env_map = env::build(policy, std::env::vars_os());
    let mut exec = ExecPlan {
        argv: cmd
            .argv
            .iter()
            .map(|a| CString::new(a.as_bytes()).expect("checked for NUL"))
            .collect(),
        env: env::to_cstrings(&env_map),
        path: env_map.get("PATH").cloned().unwrap_or_default(),
        cwd: policy.cwd.clone().unwrap_or_else(|| PathBuf::from("/")),
        keep_fds: cmd.keep_fds.clone(),
        pin: None,
    };
    crate::trace::mark("launcher", "mounts, env, exec planned");
    let mut held = Held::default();
    let (limit_walls, rlimits) = prepare_limits(policy, &mut held)?;

    crate::trace::mark("launcher", "limits");
    let fail_launcher =
        |what: &str, e: std::io::Error| setup_err(Wall::Launcher, format!("{what}: {e}"));
    let (sync_read, sync_write) = sys::pipe_cloexec().map_err(|e| fail_launcher("pipe", e))?;
    held.fds.extend([sync_read, sync_write]);
    let (report_read, report_write) = sys::pipe_cloexec().map_err(|e| fail_launcher("pipe", e))?;
    held.fds.extend([report_read, report_write]);
    let supervised = sys::sigset(&SUPERVISED);
    held.old_mask = Some(
        sys::sigprocmask(libc::SIG_BLOCK, &supervised)
            .map_err(|e| fail_launcher("sigprocmask", e))?,
    );
    let sigfd = sys::signalfd(&supervised).map_err(|e| fail_launcher("signalfd", e))?;
    held.fds.push(sigfd);

    // The init and the command's process start on this CPU, with a short
    // time slice (see `crate::cpu`); the command's process gets the caller's
    // set and slice back before its exec, the launcher its set after `clone`
    // and its slice on return.
    exec.pin = cpu::Pin::to_current_cpu();
    held.pin = exec.pin;
    let plan = ChildPlan {
        policy,
        identity: &identity,
        launcher_groups: &launcher_groups,
        mounts: &mounts,
        memfd: &memfd,
        landlock_abi,
        seccomp: &program,
        seccomp_allowed,
        rlimits: &rlimits,
        exec: &exec,
        sync_read,
        report_write,
    };

    crate::trace::mark("launcher", "pipes, signals");
    // SAFETY: the process was checked to be single-threaded just above.
    let cloned = unsafe { sys::clone_fork(namespaces::launcher_clone_flags()) };
    if let Ok(0) = cloned {
        sandbox_main(&plan);
    }
    if let Some(pin) = &exec.pin {
        let _ = pin.restore_cpus();
    }
    let child = cloned.map_err(|e| {
        setup_err(
            Wall::UserNamespace,
            namespaces::NamespaceError::clone_failed(e).to_string(),
        )
    })?;
    held.close(sync_read);
    held.close(report_write);
    crate::trace::mark("launcher", "cloned");

    // Maps, cgroups, then let the child go.
    let go = identity
        .write_maps(child)
        .map_err(|e| setup_err(Wall::UserNamespace, e.to_string()))
        .and_then(|()| match held.cgroup.as_ref() {
            Some(cg) if !cg.is_empty() => cg.add(child).map_err(|why| setup_err(Wall::Memory, why)),
            _ => Ok(()),
        })
        .and_then(|()| {
            sys::write_all(sync_write, b"g").map_err(|e| fail_launcher("starting the sandbox", e))
        });
    crate::trace::mark("launcher", "maps written, child released");
    if let Err(e) = go {
        let _ = sys::kill(child, libc::SIGKILL);
        let _ = sys::wait(child, 0);
        return Err(e);
    }

    let cgroup_path = held
        .cgroup
        .as_ref()
        .and_then(|c| c.report_path().map(|p| p.to_path_buf()));
    let watch = Watch {
        child,
        report: report_read,
        sigfd,
        deadline: policy.timeout.map(|t| start + Duration::from_secs_f64(t)),
        cmd,
        policy,
        launcher_walls: &limit_walls,
        cgroup: cgroup_path.as_deref(),
        uid: identity.uid,
        gid: identity.gid,
        uids: identity.count,
        early_return: cmd.skip_teardown_wait && held.cgroup.as_ref().is_none_or(|c| c.is_empty()),
    };
    let mut sup = Supervision::default();
    watch.run(&mut sup);
    // The init is reaped: the whole pid namespace is gone. Collect the last
    // messages, then release everything (mask, fds, cgroups).
    crate::trace::mark("launcher", "init reaped or reported");
    watch.drain(&mut sup);
    let oom_kills = held.cgroup.as_ref().map(|c| c.oom_kills()).unwrap_or(0);
    drop(held);

    let walls = sup.walls.clone().unwrap_or_default();
    if sup.exit.is_none() && sup.broken.is_none() {
        if let Some((wall, why, code)) = sup.setup.take() {
            return Err(if wall == Wall::Exec.as_str() && code != 125 {
                Error::Exec { why, code }
            } else {
                Error::Setup { wall, why }
            });
        }
    }
    let exit = decide_exit(&sup, policy, oom_kills);
    crate::trace::mark("launcher", "released");
    Ok(Outcome {
        exit,
        walls,
        cgroup: cgroup_path,
        pid: child,
        uid: identity.uid,
        gid: identity.gid,
        uids: identity.count,
    })
}

/// The cgroups (only when a limit is asked for) and their walls, and the
/// rlimits that stand in for a missing controller in best-effort mode.
fn prepare_limits(
    policy: &Policy,
    held: &mut Held,
) -> Result<(Vec<WallReport>, RlimitPlan), Error> {
    let required = policy.mode == Mode::Required;
    let limits = Limits {
        memory: policy.memory,
        pids: policy.pids,
        cpu: policy.cpu,
    };
    let results = if limits.any() {
        let (cg, results) = SandboxCgroup::create(&limits, &format!("nodecell-{}", sys::getpid()));
        held.cgroup = Some(cg);
        results
    } else {
        Vec::new()
    };
    let mut walls = Vec::new();
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
            walls.push(WallReport::new(wall, WallState::Off, "no limit asked"));
            continue;
        }
        let shown = shown.unwrap_or_default();
        let result = results
            .iter()
            .find(|(c, _)| *c == ctrl)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Err("not created".into()));
        match result {
            Ok(dir) => walls.push(WallReport::new(
                wall,
                WallState::Active,
                format!("{shown} in {}", dir.display()),
            )),
            Err(why) if required => {
                return Err(setup_err(
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
                walls.push(WallReport::new(
                    wall,
                    WallState::Missing,
                    format!("{why}{fallback}"),
                ));
            }
        }
    }
    if policy.gpu {
        let n = crate::mounts::gpu_device_count();
        let (state, detail) = if n == 0 {
            (
                WallState::Off,
                "no NVIDIA device nodes on this host".to_string(),
            )
        } else {
            (
                WallState::Active,
                format!("{n} device nodes and a read-only /sys"),
            )
        };
        walls.push(WallReport::new(Wall::Gpu, state, detail));
    }
    Ok((walls, RlimitPlan::new(policy, memory_missing, pids_missing)))
}

// ------------------------------------------------------------ the child

/// Why the child stops: a wall that could not be raised (reported, exit
/// 125), or the launcher gone (nobody to tell).
enum Stop {
    Wall(Wall, String),
    Quiet,
}

/// The child's running state: the walls so far, and whether a missing wall
/// is fatal.
struct Child {
    walls: Vec<WallReport>,
    required: bool,
    /// The network namespace being built beside us, until entered.
    netns: Option<netns::Pending>,
}

impl Child {
    fn active(&mut self, w: Wall, detail: impl Into<String>) {
        self.walls
            .push(WallReport::new(w, WallState::Active, detail));
    }
    fn off(&mut self, w: Wall, detail: impl Into<String>) {
        self.walls.push(WallReport::new(w, WallState::Off, detail));
    }
    /// A wall that could not be raised: fatal in required mode, reported in
    /// best-effort mode.
    fn wall(&mut self, w: Wall, r: Result<String, String>) -> Result<(), Stop> {
        match r {
            Ok(detail) => self.active(w, detail),
            Err(why) if self.required => return Err(Stop::Wall(w, why)),
            Err(why) => self.walls.push(WallReport::new(w, WallState::Missing, why)),
        }
        Ok(())
    }
}

/// One step of the sandbox's pid 1 before the command runs.
struct ChildStep {
    /// What it does.
    name: &'static str,
    /// Why it comes where it does.
    why: &'static str,
    run: fn(&ChildPlan, &mut Child) -> Result<(), Stop>,
}

/// The steps of the sandbox's pid 1, in order.
const CHILD_STEPS: &[ChildStep] = &[
    ChildStep {
        name: "close inherited fds",
        why: "first of all, so no host handle (status fd, signalfd, other pipe ends) survives",
        run: step_close_fds,
    },
    ChildStep {
        name: "die with the launcher",
        why: "before anything can block, even before the maps exist",
        run: |_, _| {
            let _ = sys::set_parent_death_signal(libc::SIGKILL);
            Ok(())
        },
    },
    ChildStep {
        name: "net namespace",
        why: "started before waiting for the maps: a helper sharing our memory builds it (~0.3-0.8 ms of kernel work) and brings lo up on another CPU while we go on; entered at \"network\" (built there by us if the helper has not started)",
        run: |p, c| {
            if p.policy.net {
                return Ok(());
            }
            // Never run without it, even in best-effort mode (as when
            // `clone` made it): the command would share the host network.
            let pending = netns::start(p.exec.pin.as_ref())
                .map_err(|e| Stop::Wall(Wall::NetNamespace, e.to_string()))?;
            c.netns = Some(pending);
            Ok(())
        },
    },
    ChildStep {
        name: "wait for the maps and the cgroup",
        why: "the launcher writes our uid/gid maps and moves us into the cell's cgroup",
        run: step_wait_for_launcher,
    },
    ChildStep {
        name: "hide pid 1",
        why: "before the worker exists; after the maps (a rootless launcher writes them through our /proc entries, which become host root's when not dumpable)",
        run: |_, c| c.wall(Wall::Pid1, pid1::hide().map_err(|e| e.to_string())),
    },
    ChildStep {
        name: "cgroup namespace",
        why: "now that the launcher placed us: the namespace's root is the cell's own cgroup",
        run: |_, c| {
            let r = namespaces::enter_cgroup_namespace()
                .map(|()| "host cgroup paths hidden (/proc/self/cgroup shows /)".to_string())
                .map_err(|e| e.to_string());
            c.wall(Wall::CgroupNamespace, r)
        },
    },
    ChildStep {
        name: "memfd exec",
        why: "vm.memfd_noexec needs host root's ids, which the next step drops",
        run: |p, c| c.wall(Wall::MemfdExec, p.memfd.apply()),
    },
    ChildStep {
        name: "become the worker",
        why: "a map alone leaves the launcher's host uid in place: switch every id before touching any file",
        run: step_become_worker,
    },
    ChildStep {
        name: "hostname",
        why: "cosmetic, in the UTS namespace",
        run: |_, c| {
            let uts = sys::sethostname("nodecell").map(|()| "hostname nodecell".to_string());
            c.active(
                Wall::UtsNamespace,
                uts.unwrap_or_else(|e| format!("own namespace (sethostname: {e})")),
            );
            Ok(())
        },
    },
    ChildStep {
        name: "filesystem",
        why: "a fresh read-only root, pivot, old root detached; with the worker's ids so host paths open with its permissions",
        run: step_filesystem,
    },
    ChildStep {
        name: "network",
        why: "enter the namespace the helper made (lo is up by then) before any step that could use the network",
        run: step_network,
    },
    ChildStep {
        name: "own session",
        why: "no controlling terminal to inject input into",
        run: |_, _| {
            let _ = sys::setsid();
            Ok(())
        },
    },
    ChildStep {
        name: "rlimits",
        why: "while hard limits may still be lowered freely",
        run: |p, c| c.wall(Wall::Rlimits, p.rlimits.apply().map(|()| p.rlimits.describe())),
    },
    ChildStep {
        name: "landlock",
        why: "on the new root's paths (sets no_new_privs)",
        run: step_landlock,
    },
    ChildStep {
        name: "capabilities",
        why: "every set cleared (a zygote keeps CAP_SETUID/SETGID/SETPCAP), no_new_privs on",
        run: step_capabilities,
    },
    ChildStep {
        name: "seccomp",
        why: "last: after it only the command's own syscalls remain",
        run: |p, c| {
            let r = seccomp::install(p.seccomp)
                .map(|()| {
                    format!(
                        "allow-list of {} syscalls; argument checks on clone, socket, ioctl, prctl, memfd_create, execveat, chmod/open/mknod modes (no set-id bits); clone3/openat2 ENOSYS; x32 refused",
                        p.seccomp_allowed
                    )
                })
                .map_err(|e| e.to_string());
            c.wall(Wall::Seccomp, r)
        },
    },
];

fn step_close_fds(p: &ChildPlan, _: &mut Child) -> Result<(), Stop> {
    let mut keep = p.exec.keep_fds.clone();
    keep.extend([p.sync_read, p.report_write]);
    fds::close_all_except(&keep)
        .map_err(|e| Stop::Wall(Wall::Launcher, format!("closing inherited fds: {e}")))
}

fn step_wait_for_launcher(p: &ChildPlan, _: &mut Child) -> Result<(), Stop> {
    let mut b = [0u8; 1];
    match sys::read(p.sync_read, &mut b) {
        Ok(1) => Ok(()),
        _ => Err(Stop::Quiet), // the launcher is gone or gave up
    }
}

fn step_become_worker(p: &ChildPlan, c: &mut Child) -> Result<(), Stop> {
    p.identity
        .become_worker()
        .map_err(|e| Stop::Wall(Wall::UserNamespace, e.to_string()))?;
    // Changing credentials cleared PDEATHSIG: set it again, then check the
    // launcher did not die in between (its end of the sync pipe would be
    // closed).
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    let mut pfd = [libc::pollfd {
        fd: p.sync_read,
        events: libc::POLLIN,
        revents: 0,
    }];
    if sys::poll(&mut pfd, 0).unwrap_or(0) > 0
        && pfd[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
    {
        return Err(Stop::Quiet);
    }
    sys::close(p.sync_read);
    c.active(Wall::UserNamespace, p.identity.describe());
    // The worker's own gid in the list (`initgroups` puts the primary group
    // there) grants nothing more.
    let left = sys::groups()
        .map(|g| g.into_iter().filter(|&x| x != p.identity.gid).count())
        .unwrap_or(usize::MAX);
    let groups = if left == 0 {
        Ok("no supplementary groups".to_string())
    } else if p.identity.launcher_is_root {
        Err(format!("{left} supplementary groups left after setgroups"))
    } else {
        Err(format!(
            "rootless: the caller's supplementary groups {:?} stay in effect for files inside the binds \
             (the kernel lets only a process with CAP_SETGID over the host's user namespace drop them); \
             run as root, as a user without supplementary groups, or with --mode best-effort",
            p.launcher_groups
        ))
    };
    c.wall(Wall::Groups, groups)
}

fn step_filesystem(p: &ChildPlan, c: &mut Child) -> Result<(), Stop> {
    let overlays = p.mounts.apply(c.required).map_err(|e| match e {
        crate::mounts::MountError::Overlay { .. } => Stop::Wall(Wall::Overlay, e.to_string()),
        e => Stop::Wall(Wall::MountNamespace, e.to_string()),
    })?;
    if overlays.is_empty() {
        c.off(Wall::Overlay, "no --overlay");
    } else {
        let (ok, missing): (Vec<_>, Vec<_>) = overlays.into_iter().partition(|r| r.is_ok());
        let ok: Vec<String> = ok.into_iter().filter_map(Result::ok).collect();
        let missing: Vec<String> = missing.into_iter().filter_map(Result::err).collect();
        let r = if missing.is_empty() {
            Ok(ok.join("; "))
        } else {
            Err(missing.join("; "))
        };
        c.wall(Wall::Overlay, r)?;
    }
    c.active(
        Wall::MountNamespace,
        format!(
            "read-only root, {} --ro/--rw binds, {} overlays, private /tmp and /dev/shm ({} each), new /proc, minimal /dev, nodev everywhere but the device nodes",
            p.mounts.user_binds(),
            p.mounts.overlays(),
            show_bytes(p.policy.tmp_size)
        ),
    );
    c.active(
        Wall::PidNamespace,
        "host processes invisible; pid 1 is nodecell's init",
    );
    Ok(())
}

fn step_network(p: &ChildPlan, c: &mut Child) -> Result<(), Stop> {
    if p.policy.net {
        c.off(Wall::NetNamespace, "host network kept (--net)");
    } else {
        let pending = c.netns.take().ok_or_else(|| {
            Stop::Wall(
                Wall::NetNamespace,
                "the network namespace was never started".into(),
            )
        })?;
        let lo = pending
            .enter()
            .map_err(|e| Stop::Wall(Wall::NetNamespace, e.to_string()))?;
        c.active(
            Wall::NetNamespace,
            match lo {
                Ok(()) => "no network; loopback up".to_string(),
                Err(e) => format!("no network; loopback down ({e})"),
            },
        );
    }
    c.active(Wall::IpcNamespace, "own System V IPC and POSIX queues");
    Ok(())
}

fn step_landlock(p: &ChildPlan, c: &mut Child) -> Result<(), Stop> {
    match &p.landlock_abi {
        Ok(abi) => {
            let r = landlock_wall::apply(&p.mounts.access_rules(), *abi);
            let scoped = matches!(&r, Ok(rep) if rep.scoped);
            c.wall(
                Wall::Landlock,
                r.map(|rep| format!("ABI {}, fully enforced, {} path rules", rep.abi, rep.rules))
                    .map_err(|e| e.to_string()),
            )?;
            if scoped {
                c.active(
                    Wall::LandlockScope,
                    "abstract unix sockets and signals scoped to the sandbox",
                );
            } else if p.policy.net {
                c.wall(
                    Wall::LandlockScope,
                    Err(format!("Landlock ABI {abi} has no scoping (needs 6): host abstract unix sockets are reachable with --net")),
                )?;
            } else {
                c.off(
                    Wall::LandlockScope,
                    format!("ABI {abi} has no scoping; the net and pid namespaces cover it"),
                );
            }
        }
        Err(why) => {
            c.wall(Wall::Landlock, Err(why.clone()))?;
            c.walls.push(WallReport::new(
                Wall::LandlockScope,
                WallState::Missing,
                "no Landlock",
            ));
        }
    }
    Ok(())
}

fn step_capabilities(p: &ChildPlan, c: &mut Child) -> Result<(), Stop> {
    let keep: &[caps::Capability] = if p.identity.count > 1 {
        &capabilities::ZYGOTE_CAPS
    } else {
        &[]
    };
    let caps = capabilities::drop_all_except(keep)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let s = capabilities::current().map_err(|e| e.to_string())?;
            if !s.only(capabilities::mask(keep)) {
                Err(capabilities::CapsError::Left(s).to_string())
            } else if keep.is_empty() {
                Ok("all sets empty".to_string())
            } else {
                Ok(format!(
                    "all sets empty but CAP_SETUID, CAP_SETGID, CAP_SETPCAP inside the sandbox's user namespace, kept for the zygote of {} uids (its workers drop them)",
                    p.identity.count
                ))
            }
        });
    c.wall(Wall::Capabilities, caps)?;
    let nnp = match sys::no_new_privs() {
        Ok(true) => Ok("set".into()),
        Ok(false) => Err("not set".into()),
        Err(e) => Err(e.to_string()),
    };
    c.wall(Wall::NoNewPrivs, nnp)
}

/// The sandbox's pid 1, from the moment `clone` returns until the command
/// runs: [`CHILD_STEPS`] in order, then the walls report, then the init.
/// Never returns.
fn sandbox_main(plan: &ChildPlan) -> ! {
    let report = plan.report_write;
    let mut child = Child {
        walls: Vec::new(),
        required: plan.policy.mode == Mode::Required,
        netns: None,
    };
    for step in CHILD_STEPS {
        let _ = (step.name, step.why);
        let r = (step.run)(plan, &mut child);
        crate::trace::mark("init", step.name);
        match r {
            Ok(()) => {}
            Err(Stop::Quiet) => sys::exit(125),
            Err(Stop::Wall(wall, why)) => {
                Message::Setup {
                    wall: wall.as_str().to_string(),
                    why,
                    code: 125,
                }
                .send(report);
                sys::exit(125)
            }
        }
    }
    Message::Walls { walls: child.walls }.send(report);
    let code = init::run(plan.exec, report);
    sys::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn child_steps_are_in_the_documented_order() {
        let names: Vec<&str> = CHILD_STEPS.iter().map(|s| s.name).collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert_eq!(names[0], "close inherited fds");
        assert!(pos("net namespace") < pos("wait for the maps and the cgroup"));
        assert!(pos("net namespace") < pos("network"));
        assert!(pos("wait for the maps and the cgroup") < pos("hide pid 1"));
        assert!(pos("cgroup namespace") < pos("become the worker"));
        assert!(pos("memfd exec") < pos("become the worker"));
        assert!(pos("become the worker") < pos("filesystem"));
        assert_eq!(*names.last().unwrap(), "seccomp");
        assert!(CHILD_STEPS.iter().all(|s| !s.why.is_empty()));
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
