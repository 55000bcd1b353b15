//! The launcher's status records: the JSON lines `nodecell run --status-fd N`
//! writes about one sandbox.
//!
//! * first, [`Record::Up`] once every wall is up: `{"v", "walls", "cgroup",
//!   "pid", "uid", "gid", "uids"}` (`cgroup`: the memory controller's
//!   directory, v1 or v2, where the host reads the OOM count);
//! * last, [`Record::Exit`]: `{"v", "exit": {"code", "reason", "detail"}}`,
//!   also when the sandbox could not be set up (then it is the only line).
//!
//! Each line carries `"v":` [`STATUS_VERSION`]. The launcher writes them with
//! [`encode_line`]; the host reads them with [`decode_line`].

use serde::{Deserialize, Serialize};

use crate::error::{from_value, object};
use crate::WireError;

/// The version of the status records this build speaks (the `v` field).
pub const STATUS_VERSION: u32 = 1;

const WHAT: &str = "status record";

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
#[serde(deny_unknown_fields)]
pub struct WallReport {
    /// The wall's name (`user-namespace`, `seccomp`, `memory-limit`, ...).
    pub name: String,
    /// Its state.
    pub state: WallState,
    /// What was set up, or why it is missing.
    pub detail: String,
}

impl WallReport {
    /// Builds a report line.
    pub fn new(name: impl Into<String>, state: WallState, detail: impl Into<String>) -> Self {
        WallReport {
            name: name.into(),
            state,
            detail: detail.into(),
        }
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
#[serde(deny_unknown_fields)]
pub struct Exit {
    /// The status `nodecell run` exits with.
    pub code: i32,
    /// Why.
    pub reason: ExitReason,
    /// Human-readable detail (signal name, limit, wall and error).
    pub detail: String,
}

/// The sandbox is up: its walls, cgroup and identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Up {
    /// Every wall, in report order.
    pub walls: Vec<WallReport>,
    /// The memory controller's cgroup directory (v1 or v2), if it has one.
    pub cgroup: Option<String>,
    /// The sandbox's pid 1, as the host sees it.
    pub pid: i32,
    /// Host uid of the cell (the first of `uids` with `--uid-range`).
    pub uid: u32,
    /// Host gid of the cell.
    pub gid: u32,
    /// Number of consecutive host uids (and gids) the cell owns.
    pub uids: u32,
}

/// One status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The first line: the sandbox is up.
    Up(Up),
    /// The last line: how it ended.
    Exit(Exit),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitLine {
    exit: Exit,
}

impl Record {
    /// The record as the JSON object of its line (without the version).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Record::Up(up) => serde_json::to_value(up),
            Record::Exit(exit) => serde_json::to_value(ExitLine { exit: exit.clone() }),
        }
        .unwrap_or_default()
    }
}

/// One status line: the record's JSON object with `"v"`, and a newline.
pub fn encode_line(record: &Record) -> Vec<u8> {
    let mut value = record.to_json();
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("v".into(), STATUS_VERSION.into());
    }
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Reads one status line (with or without its newline).
pub fn decode_line(bytes: &[u8]) -> Result<Record, WireError> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut map = object(WHAT, bytes)?;
    let got = map.remove("v").as_ref().and_then(serde_json::Value::as_u64);
    if got != Some(u64::from(STATUS_VERSION)) {
        return Err(WireError::Version {
            what: WHAT,
            got: got.unwrap_or(0),
            want: STATUS_VERSION,
        });
    }
    if map.contains_key("exit") {
        let line: ExitLine = from_value(WHAT, serde_json::Value::Object(map))?;
        Ok(Record::Exit(line.exit))
    } else {
        Ok(Record::Up(from_value(
            WHAT,
            serde_json::Value::Object(map),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn up() -> Up {
        Up {
            walls: vec![WallReport::new(
                "net-namespace",
                WallState::Off,
                "host network",
            )],
            cgroup: None,
            pid: 42,
            uid: 1879048200,
            gid: 1879048200,
            uids: 1,
        }
    }

    #[test]
    fn lines_have_the_documented_shape() {
        let line = encode_line(&Record::Up(up()));
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"v":1,"walls":[{"name":"net-namespace","state":"off","detail":"host network"}],"cgroup":null,"pid":42,"uid":1879048200,"gid":1879048200,"uids":1})
        );
        let exit = Exit {
            code: 124,
            reason: ExitReason::Timeout,
            detail: "after 1s".into(),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_line(&Record::Exit(exit))).unwrap();
        assert_eq!(
            v,
            json!({"v":1,"exit":{"code":124,"reason":"timeout","detail":"after 1s"}})
        );
    }

    #[test]
    fn lines_round_trip() {
        let exit = Record::Exit(Exit {
            code: 137,
            reason: ExitReason::Memory,
            detail: "memory limit 256 MiB".into(),
        });
        for r in [Record::Up(up()), exit] {
            assert_eq!(decode_line(&encode_line(&r)).unwrap(), r);
        }
    }

    #[test]
    fn bad_lines_name_the_field() {
        let e =
            decode_line(br#"{"v":1,"exit":{"code":1,"reason":"bored","detail":""}}"#).unwrap_err();
        assert!(
            matches!(&e, WireError::Field { field, .. } if field == "exit.reason"),
            "{e:?}"
        );
        let e = decode_line(br#"{"v":1,"walls":[{"name":"x","state":"on","detail":""}],"cgroup":null,"pid":1,"uid":1,"gid":1,"uids":1}"#).unwrap_err();
        assert!(
            matches!(&e, WireError::Field { field, .. } if field == "walls[0].state"),
            "{e:?}"
        );
        let e = decode_line(br#"{"v":1,"walls":[],"pid":1,"uid":1,"gid":1}"#).unwrap_err();
        assert!(e.to_string().contains("field `uids`"), "{e}");
        let e = decode_line(br#"{"exit":{"code":1,"reason":"exited","detail":""}}"#).unwrap_err();
        assert!(matches!(e, WireError::Version { got: 0, .. }));
        assert!(matches!(
            decode_line(b"nope"),
            Err(WireError::NotJson { .. })
        ));
    }
}
