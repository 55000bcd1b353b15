//! What the sandbox tells its launcher, and what the launcher tells the
//! caller: wall reports, the child-to-launcher messages, and the two JSON
//! lines written to `--status-fd` (records defined in `nodecell_wire::status`).
//!
//! The report pipe is written by the sandbox's init alone (the command's
//! process never holds it, and pid 1 is not dumpable, so the worker has no
//! path to it). The launcher still reads it as untrusted input:
//! [`ReportReader`] accepts one exact sequence (`walls` then `exit`, or a
//! `setup` failure before or right after `walls`), bounds every line and the
//! message count, and calls anything else a broken protocol.

use std::os::fd::RawFd;

use nodecell_wire::status::{encode_line, Record};
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
    /// The cgroup namespace (the host's cgroup paths hidden).
    CgroupNamespace,
    /// The sandbox's pid 1 unreadable by the worker, its argv and
    /// environment scrubbed.
    Pid1,
    /// Supplementary groups dropped.
    Groups,
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
    /// No execution of memfds (`vm.memfd_noexec`, seccomp).
    MemfdExec,
    /// Overlay mounts for `--overlay` (a pack's own folder, writes kept
    /// in its state directory).
    Overlay,
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
    pub const ALL: [Wall; 23] = [
        Wall::UserNamespace,
        Wall::MountNamespace,
        Wall::PidNamespace,
        Wall::NetNamespace,
        Wall::IpcNamespace,
        Wall::UtsNamespace,
        Wall::CgroupNamespace,
        Wall::Pid1,
        Wall::Groups,
        Wall::Overlay,
        Wall::Landlock,
        Wall::LandlockScope,
        Wall::Capabilities,
        Wall::NoNewPrivs,
        Wall::Seccomp,
        Wall::MemfdExec,
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
            Wall::CgroupNamespace => "cgroup-namespace",
            Wall::Pid1 => "pid1",
            Wall::Groups => "groups",
            Wall::Overlay => "overlay",
            Wall::MemfdExec => "memfd-exec",
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

pub use nodecell_wire::status::{Exit, ExitReason, WallReport, WallState};

impl From<Wall> for String {
    fn from(wall: Wall) -> String {
        wall.as_str().to_string()
    }
}

/// Messages from inside the sandbox to the launcher, one JSON line each,
/// written with a single `write` (shorter than `PIPE_BUF`, so atomic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase", deny_unknown_fields)]
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

/// Writes one status record (`nodecell_wire::status`) to the status fd,
/// ignoring errors (a caller that closed its end does not stop the sandbox).
pub(crate) fn write_status(fd: Option<RawFd>, record: &Record) {
    if let Some(fd) = fd {
        let _ = sys::write_all(fd, &encode_line(record));
    }
}

/// Longest line the launcher accepts on the report pipe (the walls
/// message is a few kilobytes).
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Where the report protocol stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    /// Nothing yet: `walls` or `setup` may come.
    #[default]
    Start,
    /// `walls` came: `exit`, or a `setup` failure of the exec, may come.
    Up,
    /// The last message came: nothing more may.
    Done,
}

/// Reads the report pipe: splits it into lines, parses each, and accepts
/// only the protocol's sequence. After a violation it accepts nothing more
/// and [`ReportReader::broken`] says what happened.
#[derive(Default)]
pub(crate) struct ReportReader {
    buf: Vec<u8>,
    stage: Stage,
    broken: Option<String>,
}

impl ReportReader {
    /// Adds bytes; returns the messages they complete, in order, as long as
    /// the protocol holds.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        if self.broken.is_some() {
            return out;
        }
        self.buf.extend_from_slice(bytes);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            match self.accept(&line[..line.len() - 1]) {
                Ok(m) => out.push(m),
                Err(why) => {
                    self.broken = Some(why);
                    self.buf.clear();
                    return out;
                }
            }
        }
        if self.buf.len() > MAX_LINE {
            self.broken = Some(format!("a line longer than {MAX_LINE} bytes"));
            self.buf.clear();
        }
        out
    }

    fn accept(&mut self, line: &[u8]) -> Result<Message, String> {
        if line.len() > MAX_LINE {
            return Err(format!("a line longer than {MAX_LINE} bytes"));
        }
        let m: Message =
            serde_json::from_slice(line).map_err(|e| format!("an unreadable line ({e})"))?;
        let next = match (&self.stage, &m) {
            (Stage::Start, Message::Walls { .. }) => Stage::Up,
            (Stage::Start, Message::Setup { .. }) => Stage::Done,
            (Stage::Up, Message::Exit { .. }) => Stage::Done,
            (Stage::Up, Message::Setup { wall, .. }) if wall == Wall::Exec.as_str() => Stage::Done,
            (stage, m) => {
                let what = match m {
                    Message::Walls { .. } => "walls",
                    Message::Setup { .. } => "setup",
                    Message::Exit { .. } => "exit",
                };
                let when = match stage {
                    Stage::Start => "before the walls",
                    Stage::Up => "after the walls",
                    Stage::Done => "after the last message",
                };
                return Err(format!("an unexpected `{what}` message {when}"));
            }
        };
        self.stage = next;
        Ok(m)
    }

    /// Why the protocol broke, if it did.
    pub(crate) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(m: &Message) -> Vec<u8> {
        let mut l = serde_json::to_vec(m).unwrap();
        l.push(b'\n');
        l
    }

    fn walls() -> Message {
        Message::Walls {
            walls: vec![WallReport::new(Wall::Seccomp, WallState::Active, "x")],
        }
    }

    fn exit(code: i32) -> Message {
        Message::Exit {
            code: Some(code),
            signal: None,
        }
    }

    fn setup(wall: &str) -> Message {
        Message::Setup {
            wall: wall.into(),
            why: "y".into(),
            code: 125,
        }
    }

    #[test]
    fn messages_round_trip_through_a_pipe_in_pieces() {
        let (r, w) = sys::pipe_cloexec().unwrap();
        walls().send(w);
        Message::Setup {
            wall: "exec".into(),
            why: "y".repeat(10_000),
            code: 127,
        }
        .send(w);
        sys::close(w);
        let mut rd = ReportReader::default();
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
        assert_eq!(all.len(), 2, "{:?}", rd.broken());
        assert!(matches!(&all[0], Message::Walls { walls } if walls[0].name == "seccomp"));
        assert!(matches!(&all[1], Message::Setup { why, code: 127, .. } if why.len() == 1000));
        assert!(rd.broken().is_none());
    }

    #[test]
    fn the_protocol_accepts_its_three_shapes() {
        for seq in [
            vec![walls(), exit(3)],
            vec![setup("mount-namespace")],
            vec![walls(), setup("exec")],
        ] {
            let mut rd = ReportReader::default();
            let bytes: Vec<u8> = seq.iter().flat_map(line).collect();
            assert_eq!(rd.push(&bytes), seq);
            assert!(rd.broken().is_none());
        }
    }

    #[test]
    fn anything_else_breaks_the_protocol() {
        let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
            // The forgery of issue 11: a setup record after the walls, then exit.
            (
                vec![
                    line(&walls()),
                    line(&setup("mount-namespace")),
                    line(&exit(0)),
                ],
                "unexpected `setup` message after the walls",
            ),
            (
                vec![line(&exit(0))],
                "unexpected `exit` message before the walls",
            ),
            (
                vec![line(&walls()), line(&walls())],
                "unexpected `walls` message after the walls",
            ),
            (
                vec![line(&walls()), line(&exit(3)), line(&exit(0))],
                "after the last message",
            ),
            (
                vec![b"{\"t\":\"exit\",\"code\":0,\"signal\":null,\"x\":1}\n".to_vec()],
                "unreadable",
            ),
            (vec![b"garbage\n".to_vec()], "unreadable"),
            (vec![vec![b'a'; MAX_LINE + 10]], "longer than"),
        ];
        for (chunks, want) in cases {
            let mut rd = ReportReader::default();
            let mut got = Vec::new();
            for c in &chunks {
                got.extend(rd.push(c));
            }
            let why = rd.broken().unwrap_or_else(|| panic!("accepted {got:?}"));
            assert!(why.contains(want), "{why} (wanted {want})");
            // Nothing is accepted after a violation.
            assert!(rd.push(&line(&exit(0))).is_empty());
            assert!(
                !got.iter()
                    .any(|m| matches!(m, Message::Exit { code: Some(0), .. }))
                    || want.contains("after the last")
            );
        }
    }

    #[test]
    fn status_lines_have_the_documented_shape() {
        let walls = vec![WallReport::new(
            Wall::NetNamespace,
            WallState::Off,
            "host network",
        )];
        let up = nodecell_wire::status::Up {
            walls,
            cgroup: None,
            pid: 42,
            uid: 1879048200,
            gid: 1879048200,
            uids: 1,
        };
        let line = encode_line(&Record::Up(up));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&line).unwrap(),
            serde_json::json!({"v":1,"walls":[{"name":"net-namespace","state":"off","detail":"host network"}],"cgroup":null,"pid":42,"uid":1879048200,"gid":1879048200,"uids":1})
        );
        let exit = Exit {
            code: 124,
            reason: ExitReason::Timeout,
            detail: "after 1s".into(),
        };
        let line = encode_line(&Record::Exit(exit));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&line).unwrap(),
            serde_json::json!({"v":1,"exit":{"code":124,"reason":"timeout","detail":"after 1s"}})
        );
    }

    #[test]
    fn every_wall_has_a_distinct_name_in_report_order() {
        let names: std::collections::HashSet<&str> = Wall::ALL.iter().map(|w| w.as_str()).collect();
        assert_eq!(names.len(), Wall::ALL.len());
        for (i, w) in Wall::ALL.iter().enumerate() {
            assert_eq!(Wall::rank(w.as_str()), i);
        }
    }
}
