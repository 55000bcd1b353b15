//! The sandbox's pid 1: a tiny init that starts the command once every wall
//! is up, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to it,
//! reaps orphans (Python zygotes fork workers), and exits with the command's
//! status. When it exits the kernel kills everything left in the pid
//! namespace, so background children never outlive the sandbox.
//!
//! Also here: the last steps of the command's own process before `execve`
//! (signal mask, fds, working directory, `PATH` search). That process never
//! holds the report pipe: when a step fails it leaves the step and the
//! errno in memory it shares with the init (`CLONE_VM`) and exits, and the
//! init, the pipe's only writer, reports it.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use crate::fds;
use crate::report::{Message, Wall};
use crate::sys::{self, WaitStatus};

/// Signals the init passes on to the command.
pub const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Pid of the command (0 until it is started).
static COMMAND_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = COMMAND_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // kill(2) is async-signal-safe; the error (the command is gone) needs
        // no handling.
        let _ = sys::kill(pid, sig);
    }
}

/// What the command's process needs to start.
#[derive(Debug)]
pub struct ExecPlan {
    /// argv; `argv[0]` is searched in `PATH` when it has no `/`.
    pub argv: Vec<CString>,
    /// `KEY=VALUE` entries.
    pub env: Vec<CString>,
    /// `PATH` value used for the search.
    pub path: String,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// fds that stay open at the same number.
    pub keep_fds: Vec<RawFd>,
    /// The launch runs pinned to one CPU with a short time slice until the
    /// command starts ([`crate::cpu`]): the caller's CPU set and slice, given
    /// back to the command's process before `execve`, and the set to the init
    /// once the command runs.
    pub pin: Option<crate::cpu::Pin>,
}

/// Everything the command's process does before `execve`, computed by the
/// init before it starts the process, so the process itself never
/// allocates (it shares the init's memory until it execs).
struct Prepared<'a> {
    plan: &'a ExecPlan,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// Full paths to try, in order (`argv[0]` itself when it has a `/`).
    candidates: Vec<CString>,
    cwd: CString,
    close: Vec<(u32, u32)>,
    /// Set by the command's process when a step before exec fails
    /// ([`Step`] as u8; 0 = none), with the errno and whether `EACCES` was
    /// met on the way (for the message).
    failed_step: AtomicU8,
    failed_errno: AtomicI32,
    saw_eacces: AtomicU8,
}

/// The command's steps before exec, as recorded on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Cwd = 1,
    CloseFds = 2,
    KeepFds = 3,
    Exec = 4,
}

impl<'a> Prepared<'a> {
    fn new(plan: &'a ExecPlan, report: RawFd) -> Result<Prepared<'a>, String> {
        // The report pipe is the init's alone: the command's process closes
        // it with every other fd that is not kept.
        let prog = plan.argv[0].as_bytes();
        let candidates = if prog.contains(&b'/') {
            vec![plan.argv[0].clone()]
        } else {
            plan.path
                .split(':')
                .filter_map(|dir| {
                    let dir = if dir.is_empty() { "." } else { dir };
                    let mut full = Vec::with_capacity(dir.len() + 1 + prog.len());
                    full.extend_from_slice(dir.as_bytes());
                    full.push(b'/');
                    full.extend_from_slice(prog);
                    CString::new(full).ok()
                })
                .collect()
        };
        let cwd =
            sys::cpath(&plan.cwd).map_err(|e| format!("--cwd {}: {e}", plan.cwd.display()))?;
        let keep: Vec<RawFd> = plan
            .keep_fds
            .iter()
            .copied()
            .filter(|&fd| fd != report)
            .collect();
        Ok(Prepared {
            plan,
            argv: plan
                .argv
                .iter()
                .map(|a| a.as_ptr())
                .chain([std::ptr::null()])
                .collect(),
            envp: plan
                .env
                .iter()
                .map(|a| a.as_ptr())
                .chain([std::ptr::null()])
                .collect(),
            candidates,
            cwd,
            close: fds::close_ranges(&keep),
            failed_step: AtomicU8::new(0),
            failed_errno: AtomicI32::new(0),
            saw_eacces: AtomicU8::new(0),
        })
    }
}

/// Stack of the command's process between `clone` and `execve`.
const SPAWN_STACK: usize = 256 * 1024;

/// Runs as pid 1: starts the command, then reaps until it exits. Returns
/// the exit code for the init (the command's, or 128 + its signal).
pub fn run(plan: &ExecPlan, report: RawFd) -> i32 {
    for &sig in &FORWARDED {
        let _ = sys::set_signal_handler(sig, forward);
    }
    let fail = |why: String| {
        Message::Setup {
            wall: Wall::Exec.as_str().into(),
            why,
            code: 125,
        }
        .send(report);
        125
    };
    let prepared = match Prepared::new(plan, report) {
        Ok(p) => p,
        Err(why) => return fail(why),
    };
    let mut stack = vec![0u8; SPAWN_STACK];
    // The launcher blocked the forwarded signals before clone: they stay
    // blocked until COMMAND_PID is known, so none is lost in between.
    // The command's process shares our memory (CLONE_VM) and we are
    // suspended (CLONE_VFORK) until it execs or exits: no page tables are
    // copied, which is most of what fork costs here.
    // SAFETY: `command_main` only reads `prepared` (alive: we are suspended until clone
    // returns), runs on its own stack and ends in execve or _exit.
    let pid = match unsafe {
        sys::spawn_vfork(
            command_main,
            &mut stack,
            (&prepared as *const Prepared).cast_mut().cast(),
        )
    } {
        Ok(pid) => pid,
        Err(e) => return fail(format!("starting the command: {e}")),
    };
    // The command runs: our CPU set no longer matters to the launch.
    if let Some(pin) = &plan.pin {
        let _ = pin.restore_cpus();
    }
    drop(stack);
    crate::trace::mark("init", "command exec'd");
    // CLONE_VFORK: the command has exec'd or exited by now. A failure it
    // recorded is reported by us; its exit status is only the code.
    if let Some((why, code)) = prepared.failure() {
        let _ = sys::wait(pid, 0);
        Message::Setup {
            wall: Wall::Exec.as_str().into(),
            why,
            code,
        }
        .send(report);
        return code;
    }
    COMMAND_PID.store(pid, Ordering::Relaxed);
    // The command holds the kept fds now; the init lets go of them so the
    // caller sees EOF as soon as the command is gone.
    for &fd in &plan.keep_fds {
        sys::close(fd);
    }
    let _ = sys::sigprocmask(libc::SIG_SETMASK, &sys::sigset(&[]));

    loop {
        match sys::wait(-1, 0) {
            Ok(Some((p, status))) if p == pid => {
                crate::trace::mark("init", "command exited");
                let msg = match status {
                    WaitStatus::Exited(c) => Message::Exit {
                        code: Some(c),
                        signal: None,
                    },
                    WaitStatus::Signaled(s) => Message::Exit {
                        code: None,
                        signal: Some(s),
                    },
                };
                msg.send(report);
                // The exit record is the last one: closing the pipe now
                // (rather than when the kernel closes it, after unmapping
                // this process's memory on the way out) lets the launcher
                // return as soon as it has read it.
                sys::close(report);
                return status.code();
            }
            Ok(_) => continue, // an orphan reparented to us
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return 125,
            Err(_) => continue,
        }
    }
}

extern "C" fn command_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Prepared` the init passed to spawn_vfork; the
    // init is suspended and keeps it alive until we exec or exit.
    let p = unsafe { &*(arg as *const Prepared) };
    exec_command(p)
}

/// In the command's process: restore signals, keep only the wanted fds,
/// enter the working directory and exec. Never returns. Allocates nothing
/// and writes nothing but the failure record in `p`.
fn exec_command(p: &Prepared) -> ! {
    for &sig in &FORWARDED {
        let _ = sys::set_signal_default(sig);
    }
    // Rust ignores SIGPIPE in the launcher; the command gets the default.
    let _ = sys::set_signal_default(libc::SIGPIPE);
    let _ = sys::sigprocmask(libc::SIG_SETMASK, &sys::sigset(&[]));

    let fail = |step: Step, e: std::io::Error| -> ! {
        p.failed_errno
            .store(e.raw_os_error().unwrap_or(0), Ordering::Relaxed);
        p.failed_step.store(step as u8, Ordering::Release);
        sys::exit(if step == Step::Exec { 127 } else { 125 })
    };
    if let Err(e) = sys::chdir_c(&p.cwd) {
        fail(Step::Cwd, e);
    }
    for &(first, last) in &p.close {
        if let Err(e) = sys::close_range(first, last) {
            fail(Step::CloseFds, e);
        }
    }
    if let Err(e) = fds::make_inheritable(&p.plan.keep_fds) {
        fail(Step::KeepFds, e);
    }
    // The command never runs pinned nor with the launch's short slice (see
    // `crate::cpu`; an error leaves it so: slower, nothing worse).
    if let Some(pin) = &p.plan.pin {
        let _ = pin.restore();
    }

    let mut err = std::io::Error::from_raw_os_error(libc::ENOENT);
    for c in &p.candidates {
        let e = sys::execve(c, &p.argv, &p.envp);
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => p.saw_eacces.store(1, Ordering::Relaxed),
            _ => {
                err = e;
                break;
            }
        }
        err = e;
    }
    fail(Step::Exec, err)
}

impl Prepared<'_> {
    /// The failure the command's process recorded, as a message and an exit
    /// code (125 setup, 126 not executable, 127 not found), or `None`.
    fn failure(&self) -> Option<(String, i32)> {
        let step = self.failed_step.load(Ordering::Acquire);
        if step == 0 {
            return None;
        }
        let mut errno = self.failed_errno.load(Ordering::Relaxed);
        let e = std::io::Error::from_raw_os_error(errno);
        let name = self.plan.argv[0].to_string_lossy();
        Some(match step {
            s if s == Step::Cwd as u8 => (format!("--cwd {}: {e}", self.plan.cwd.display()), 125),
            s if s == Step::CloseFds as u8 => (format!("closing inherited fds: {e}"), 125),
            s if s == Step::KeepFds as u8 => (format!("keeping fds: {e}"), 125),
            _ => {
                if self.saw_eacces.load(Ordering::Relaxed) == 1
                    && matches!(errno, libc::ENOENT | libc::ENOTDIR)
                {
                    errno = libc::EACCES;
                }
                let code = if errno == libc::ENOENT { 127 } else { 126 };
                let why = match errno {
                    libc::ENOENT if !name.contains('/') => format!(
                        "{name}: not found in PATH ({}) inside the sandbox",
                        self.plan.path
                    ),
                    libc::ENOENT => format!(
                        "{name}: no such file inside the sandbox (is it under a --ro path?)"
                    ),
                    libc::EACCES => format!(
                        "{name}: permission denied (not executable by the worker, or under a writable/noexec path)"
                    ),
                    _ => format!("{name}: {}", std::io::Error::from_raw_os_error(errno)),
                };
                (why, code)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_signals_are_the_polite_ones() {
        assert!(FORWARDED.contains(&libc::SIGTERM));
        assert!(FORWARDED.contains(&libc::SIGINT));
        assert!(!FORWARDED.contains(&libc::SIGKILL));
        assert!(!FORWARDED.contains(&libc::SIGCHLD));
    }
}
