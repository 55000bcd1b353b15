//! What the sandbox tells its launcher, and what the launcher tells the
//! caller: wall reports, the child-to-launcher messages, and the two JSON
//! lines written to `--status-fd`.

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::sys;

/// One wall of the sandbox, as named in reports and in `--status-fd` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Wall {
    /// The user namespace and the uid/gid maps (worker never host uid 0).
    UserNamespace,
    /// The mount namespace and the minimal read-only root.
    MountNamespace,
    /// The pid namespace (host processes invisible).
    PidNamespace,
    /// The network namespace (off with `--net`).
    NetNamespace,
    /// The IPC namespace (System V IPC, POSIX queues).
    IpcNamespace,
    /// The UTS namespace (hostname).
    UtsNamespace,
    /// Landlock filesystem rules.
    Landlock,
    /// Landlock scoping of abstract unix sockets and signals.
    LandlockScope,
    /// Every capability set cleared.
    Capabilities,
    /// `no_new_privs`.
    NoNewPrivs,
    /// The seccomp allow-list.
    Seccomp,
    /// Memory cgroup limit.
    Memory,
    /// Pids cgroup limit.
    Pids,
    /// CPU cgroup quota.
    Cpu,
    /// rlimits (core, nofile, fsize, as).
    Rlimits,
    /// GPU device nodes (not a wall: reported so callers know).
    Gpu,
    /// The launcher itself (pipes, clone, fds).
    Launcher,
    /// Running the command (exec inside the sandbox).
    Exec,
}

impl Wall {
    /// Every wall in report order.
    pub const ALL: [Wall; 18] = [
        Wall::UserNamespace,
        Wall::MountNamespace,
        Wall::PidNamespace,
        Wall::NetNamespace,
        Wall::IpcNamespace,
        Wall::UtsNamespace,
        Wall::Landlock,
        Wall::LandlockScope,
        Wall::Capabilities,
        Wall::NoNewPrivs,
        Wall::Seccomp,
        Wall::Memory,
        Wall::Pids,
        Wall::Cpu,
        Wall::Rlimits,
        Wall::Gpu,
        Wall::Launcher,
        Wall::Exec,
    ];

    /// Position of a wall name in report order (unknown names last).
    pub fn rank(name: &str) -> usize {
        Wall::ALL
            .iter()
            .position(|w| w.as_str() == name)
            .unwrap_or(Wall::ALL.len())
    }

    /// The wall's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Wall::UserNamespace => "user-namespace",
            Wall::MountNamespace => "mount-namespace",
            Wall::PidNamespace => "pid-namespace",
            Wall::NetNamespace => "net-namespace",
            Wall::IpcNamespace => "ipc-namespace",
            Wall::UtsNamespace => "uts-namespace",
            Wall::Landlock => "landlock",
            Wall::LandlockScope => "landlock-scope",
            Wall::Capabilities => "capabilities",
            Wall::NoNewPrivs => "no-new-privs",
            Wall::Seccomp => "seccomp",
            Wall::Memory => "memory-limit",
            Wall::Pids => "pids-limit",
            Wall::Cpu => "cpu-limit",
            Wall::Rlimits => "rlimits",
            Wall::Gpu => "gpu",
            Wall::Launcher => "launcher",
            Wall::Exec => "exec",
        }
    }
}

impl std::fmt::Display for Wall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a wall stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WallState {
    /// Set up and enforced.
    Active,
    /// Asked for (or part of every sandbox) but the kernel or user cannot
    /// provide it. `required` mode never runs with a missing wall.
    Missing,
    /// Not asked for (`--net`, no `--memory`, ...).
    Off,
}

/// One line of the wall report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WallReport {
    /// The wall's name ([`Wall::as_str`]).
    pub name: String,
    /// Its state.
    pub state: WallState,
    /// What was set up, or why it is missing.
    pub detail: String,
}

impl WallReport {
    /// Builds a report line.
    pub fn new(wall: Wall, state: WallState, detail: impl Into<String>) -> Self {
        WallReport {
            name: wall.as_str().to_string(),
            state,
            detail: detail.into(),
        }
    }
}

/// Messages from inside the sandbox to the launcher, one JSON line each,
/// written with a single `write` (shorter than `PIPE_BUF`, so atomic).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub(crate) enum Message {
    /// Every wall is up; the command is about to start.
    Walls { walls: Vec<WallReport> },
    /// Setting up a wall (or exec) failed; the sandbox exits with `code`.
    Setup {
        wall: String,
        why: String,
        code: i32,
    },
    /// The command ended (sent by the sandbox's init just before it exits).
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

impl Message {
    /// Writes the message to `fd` in one `write`. Errors are ignored: the
    /// launcher gone means there is nobody left to tell.
    pub(crate) fn send(&self, fd: RawFd) {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        if line.len() > 4000 {
            // Keep the write atomic: shorten the free-text parts.
            if let Message::Setup { wall, why, code } = self {
                let why: String = why.chars().take(1000).collect();
                line = serde_json::to_vec(&Message::Setup {
                    wall: wall.clone(),
                    why,
                    code: *code,
                })
                .unwrap_or_default();
            }
        }
        line.push(b'\n');
        let _ = sys::write_all(fd, &line);
    }
}

/// Why a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitReason {
    /// The command exited on its own.
    Exited,
    /// The command was killed by a signal (code = 128 + signal).
    Signal,
    /// `--timeout` expired; the whole tree was killed (code 124).
    Timeout,
    /// The memory limit killed it (code 137).
    Memory,
    /// The sandbox could not be set up (125), or the command could not be
    /// executed inside it (126 not executable, 127 not found).
    Setup,
}

/// How a sandbox ended: the launcher's exit status and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The status `nodecell run` exits with.
    pub code: i32,
    /// Why.
    pub reason: ExitReason,
    /// Human-readable detail (signal name, limit, wall and error).
    pub detail: String,
}

/// The first `--status-fd` line.
#[derive(Serialize)]
pub(crate) struct UpLine<'a> {
    pub walls: &'a [WallReport],
    pub cgroup: Option<String>,
    pub pid: i32,
}

/// The last `--status-fd` line.
#[derive(Serialize)]
pub(crate) struct ExitLine<'a> {
    pub exit: &'a Exit,
}

/// Writes one JSON line to the status fd, ignoring errors (a caller that
/// closed its end does not stop the sandbox).
pub(crate) fn write_status<T: Serialize>(fd: Option<RawFd>, value: &T) {
    if let Some(fd) = fd {
        let mut line = serde_json::to_vec(value).unwrap_or_default();
        line.push(b'\n');
        let _ = sys::write_all(fd, &line);
    }
}

/// Splits a stream of bytes into complete JSON messages.
#[derive(Default)]
pub(crate) struct MessageReader {
    buf: Vec<u8>,
}

impl MessageReader {
    /// Adds bytes; returns the messages completed by them. Lines that do not
    /// parse are dropped (only our own code writes to this pipe).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if let Ok(m) = serde_json::from_slice::<Message>(&line[..line.len() - 1]) {
                out.push(m);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_line_by_line() {
        let (r, w) = sys::pipe_cloexec().unwrap();
        Message::Walls {
            walls: vec![WallReport::new(Wall::Seccomp, WallState::Active, "x")],
        }
        .send(w);
        Message::Setup {
            wall: "mount-namespace".into(),
            why: "y".repeat(10_000),
            code: 125,
        }
        .send(w);
        Message::Exit {
            code: Some(3),
            signal: None,
        }
        .send(w);
        sys::close(w);
        let mut rd = MessageReader::default();
        let mut all = Vec::new();
        let mut buf = [0u8; 333];
        loop {
            let n = sys::read(r, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend(rd.push(&buf[..n]));
        }
        sys::close(r);
        assert_eq!(all.len(), 3);
        assert!(matches!(&all[0], Message::Walls { walls } if walls[0].name == "seccomp"));
        assert!(matches!(&all[1], Message::Setup { why, .. } if why.len() == 1000));
        assert!(matches!(
            &all[2],
            Message::Exit {
                code: Some(3),
                signal: None
            }
        ));
    }

    #[test]
    fn status_lines_have_the_documented_shape() {
        let walls = vec![WallReport::new(
            Wall::NetNamespace,
            WallState::Off,
            "host network",
        )];
        let up = serde_json::to_value(UpLine {
            walls: &walls,
            cgroup: None,
            pid: 42,
        })
        .unwrap();
        assert_eq!(
            up,
            serde_json::json!({"walls":[{"name":"net-namespace","state":"off","detail":"host network"}],"cgroup":null,"pid":42})
        );
        let exit = Exit {
            code: 124,
            reason: ExitReason::Timeout,
            detail: "after 1s".into(),
        };
        let line = serde_json::to_value(ExitLine { exit: &exit }).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"exit":{"code":124,"reason":"timeout","detail":"after 1s"}})
        );
    }
}
