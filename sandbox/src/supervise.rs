//! The launcher after `clone`: it waits for the sandbox's init, forwards
//! signals, enforces `--timeout`, reads the report pipe (as untrusted input,
//! through [`ReportReader`]), writes the `--status-fd` lines, and decides how
//! the sandbox ended.
//!
//! The command's real exit status always wins: the init reports it and
//! exits with it (code, or 128 + signal), and when the launcher reaps the
//! init it checks the report against that status; a report the kernel's
//! status contradicts is overruled. A report that breaks the protocol kills
//! the sandbox and ends the run as a setup failure (125), unless the real
//! exit was already known.

use std::os::fd::RawFd;
use std::path::Path;
use std::time::Instant;

use crate::launch::Command;
use crate::policy::{show_bytes, Mode, Policy};
use nodecell_wire::status::{Record, Up};

use crate::report::{
    write_status, Exit, ExitReason, Message, ReportReader, Wall, WallReport, WallState,
};
use crate::sys;

/// What the supervisor needs to know about this launch.
pub(crate) struct Watch<'a> {
    /// Host pid of the sandbox's init.
    pub child: libc::pid_t,
    /// Read end of the report pipe.
    pub report: RawFd,
    /// The launcher's signalfd.
    pub sigfd: RawFd,
    /// When `--timeout` expires.
    pub deadline: Option<Instant>,
    pub cmd: &'a Command,
    pub policy: &'a Policy,
    /// Walls decided by the launcher (limits, GPU), merged into the report.
    pub launcher_walls: &'a [WallReport],
    /// The cell's cgroup directory, for the status line.
    pub cgroup: Option<&'a Path>,
    /// The cell's host identity, for the status line.
    pub uid: u32,
    pub gid: u32,
    pub uids: u32,
    /// Return once the init reported the command's end (see
    /// [`Command::skip_teardown_wait`]).
    pub early_return: bool,
}

/// What the supervisor learned.
#[derive(Default)]
pub(crate) struct Supervision {
    pub walls: Option<Vec<WallReport>>,
    pub setup: Option<(String, String, i32)>,
    pub exit: Option<(Option<i32>, Option<i32>)>,
    pub init_status: Option<sys::WaitStatus>,
    pub timed_out: bool,
    pub killed_by: Option<i32>,
    /// Why the report pipe broke protocol, if it did.
    pub broken: Option<String>,
    reader: ReportReader,
    report_eof: bool,
}

impl Watch<'_> {
    fn handle(&self, bytes: &[u8], sup: &mut Supervision) {
        for m in sup.reader.push(bytes) {
            match m {
                Message::Walls { mut walls } => {
                    crate::trace::mark("launcher", "walls report read");
                    walls.extend(self.launcher_walls.iter().cloned());
                    walls.sort_by_key(|w| Wall::rank(&w.name));
                    write_status(
                        self.cmd.status_fd,
                        &Record::Up(Up {
                            walls: walls.clone(),
                            cgroup: self.cgroup.map(|p| p.display().to_string()),
                            pid: self.child,
                            uid: self.uid,
                            gid: self.gid,
                            uids: self.uids,
                        }),
                    );
                    if self.cmd.warn_missing && self.policy.mode == Mode::BestEffort {
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
                Message::Setup { wall, why, code } => sup.setup = Some((wall, why, code)),
                Message::Exit { code, signal } => {
                    crate::trace::mark("launcher", "exit report read");
                    sup.exit = Some((code, signal));
                }
            }
        }
        if let (Some(why), None) = (sup.reader.broken(), &sup.broken) {
            sup.broken = Some(why.to_string());
            // Nothing the sandbox says can be trusted any more: end it.
            let _ = sys::kill(self.child, libc::SIGKILL);
            sup.report_eof = true;
        }
    }

    /// Supervises until the init is reaped (or, with `early_return`, until
    /// it reported the command's end and closed the pipe).
    pub(crate) fn run(&self, sup: &mut Supervision) {
        let mut buf = vec![0u8; 16 * 1024];
        while sup.init_status.is_none() {
            // The init reported the command's end and closed its end of the
            // pipe: it is exiting, and the kernel kills what is left.
            if self.early_return
                && sup.exit.is_some()
                && sup.report_eof
                && sup.broken.is_none()
                && !sup.timed_out
                && sup.killed_by.is_none()
            {
                if let Ok(Some((_, status))) = sys::wait(self.child, libc::WNOHANG) {
                    sup.init_status = Some(status);
                }
                return;
            }
            let timeout_ms = match (self.deadline, sup.timed_out) {
                (Some(d), false) => {
                    let left = d.saturating_duration_since(Instant::now());
                    (left.as_millis() as i64 + 1).min(i32::MAX as i64) as i32
                }
                _ => -1,
            };
            let mut fds = [
                libc::pollfd {
                    fd: self.sigfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if sup.report_eof { -1 } else { self.report },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let _ = sys::poll(&mut fds, timeout_ms);
            if let (Some(d), false) = (self.deadline, sup.timed_out) {
                if Instant::now() >= d {
                    // Killing pid 1 takes the whole pid namespace with it.
                    let _ = sys::kill(self.child, libc::SIGKILL);
                    sup.timed_out = true;
                }
            }
            if fds[1].revents != 0 {
                match sys::read(self.report, &mut buf) {
                    Ok(0) | Err(_) => sup.report_eof = true,
                    Ok(n) => self.handle(&buf[..n], sup),
                }
            }
            if fds[0].revents != 0 {
                while let Ok(Some(sig)) = sys::read_signalfd(self.sigfd) {
                    let sig = sig as libc::c_int;
                    if sig == libc::SIGCHLD {
                        continue;
                    }
                    if sup.walls.is_none() {
                        // Still setting up: the init has no handlers yet and
                        // would drop the signal. Abort the sandbox instead.
                        let _ = sys::kill(self.child, libc::SIGKILL);
                        sup.killed_by = Some(sig);
                    } else {
                        let _ = sys::kill(self.child, sig);
                    }
                }
            }
            if let Ok(Some((_, status))) = sys::wait(self.child, libc::WNOHANG) {
                sup.init_status = Some(status);
            }
        }
    }

    /// After the init is gone: reads what is left in the pipe (every writer
    /// is gone with the pid namespace, so this never blocks long).
    pub(crate) fn drain(&self, sup: &mut Supervision) {
        let mut buf = vec![0u8; 16 * 1024];
        while !sup.report_eof {
            let mut fds = [libc::pollfd {
                fd: self.report,
                events: libc::POLLIN,
                revents: 0,
            }];
            if sys::poll(&mut fds, 1000).unwrap_or(0) == 0 {
                break;
            }
            match sys::read(self.report, &mut buf) {
                Ok(0) | Err(_) => sup.report_eof = true,
                Ok(n) => self.handle(&buf[..n], sup),
            }
        }
    }
}

/// The name of a signal, for messages.
pub(crate) fn signal_name(sig: i32) -> String {
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

/// The reported end of the command, checked against the init's real exit
/// status when the launcher reaped it: the init exits with the command's
/// code, or 128 + its signal. A report the kernel contradicts is replaced
/// by what the kernel says.
fn reconciled(sup: &Supervision) -> Option<(Option<i32>, Option<i32>)> {
    let reported = sup.exit?;
    let Some(sys::WaitStatus::Exited(init_code)) = sup.init_status else {
        // Not reaped (early return) or killed: the report stands.
        return Some(reported);
    };
    let reported_code = match reported {
        (_, Some(sig)) => 128 + sig,
        (Some(c), None) => c,
        (None, None) => -1,
    };
    if reported_code == init_code {
        Some(reported)
    } else {
        Some((Some(init_code), None))
    }
}

/// How the sandbox ended, from everything the supervisor saw.
pub(crate) fn decide_exit(sup: &Supervision, policy: &Policy, oom_kills: u64) -> Exit {
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
    let exit = reconciled(sup);
    if let (Some(why), None) = (&sup.broken, exit) {
        return Exit {
            code: 125,
            reason: ExitReason::Setup,
            detail: format!(
                "the sandbox's report pipe broke protocol ({why}); the sandbox was killed"
            ),
        };
    }
    match exit {
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
    fn the_kernels_exit_status_overrules_the_report() {
        let p = Policy::new();
        // The report says 0, the init (which exits with the command's
        // status) exited 3: 3 wins.
        let mut s = sup_with(Some((Some(0), None)));
        s.init_status = Some(sys::WaitStatus::Exited(3));
        let e = decide_exit(&s, &p, 0);
        assert_eq!((e.code, e.reason), (3, ExitReason::Exited));
        // Agreeing signal report: kept as a signal.
        let mut s = sup_with(Some((None, Some(libc::SIGSEGV))));
        s.init_status = Some(sys::WaitStatus::Exited(128 + libc::SIGSEGV));
        assert_eq!(decide_exit(&s, &p, 0).reason, ExitReason::Signal);
    }

    #[test]
    fn a_broken_report_is_a_setup_failure_unless_the_exit_was_known() {
        let p = Policy::new();
        let mut s = sup_with(None);
        s.broken = Some("an unexpected `setup` message after the walls".into());
        s.init_status = Some(sys::WaitStatus::Signaled(libc::SIGKILL));
        let e = decide_exit(&s, &p, 0);
        assert_eq!((e.code, e.reason), (125, ExitReason::Setup));
        assert!(e.detail.contains("broke protocol"), "{}", e.detail);
        let mut s = sup_with(Some((Some(3), None)));
        s.broken = Some("trailing bytes".into());
        assert_eq!(decide_exit(&s, &p, 0).code, 3);
    }
}
