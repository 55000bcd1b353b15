//! The zygote control protocol: one JSON object per `SOCK_SEQPACKET` message,
//! file descriptors alongside by `SCM_RIGHTS`.
//!
//! | direction | message | fds |
//! |---|---|---|
//! | host -> zygote | [`Request::Spawn`] `{"op": "spawn", "wid", "pack"?}` | `[ring, sock]` |
//! | host -> zygote | [`Request::Kill`] `{"op": "kill", "wid"}` | |
//! | host -> zygote | [`Request::Exit`] `{"op": "exit"}` | |
//! | zygote -> host | [`Event::Ready`] `{"op": "ready", "pid", "preloaded", "errors", "versions", "modules"}` | |
//! | zygote -> host | [`Event::Spawned`] `{"op": "spawned", "wid", "pid"}` | `[pidfd]` |
//! | zygote -> host | [`Event::Exited`] `{"op": "exited", "wid", "pid", "code" \| "signal"}` | |
//!
//! Every message also carries `"v":` [`CONTROL_VERSION`]; a message of
//! another version, an unknown `op`, an unknown field or a field of the wrong
//! type is a [`WireError`] naming the field. The zygote runs inside the
//! sandbox, so the host reads its [`Event`]s as untrusted input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{from_value, object};
use crate::WireError;

/// The version of the control protocol this build speaks (the `v` field).
pub const CONTROL_VERSION: u32 = 1;

/// Longest control message either side sends or accepts, in bytes.
pub const MAX_CONTROL_BYTES: usize = 1 << 16;

const REQUEST: &str = "zygote request";
const EVENT: &str = "zygote event";

/// A message from the host to a zygote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Fork a worker that serves the channel whose ring and socket come
    /// with this message.
    Spawn(Spawn),
    /// SIGKILL the worker `wid`.
    Kill(Kill),
    /// Kill every worker and exit.
    Exit,
}

/// [`Request::Spawn`]'s fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spawn {
    /// The host's number for the worker (echoed in `spawned`/`exited`).
    pub wid: u64,
    /// In an app cell: the pack the forked worker becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackSetup>,
}

/// [`Request::Kill`]'s fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kill {
    /// The worker's number.
    pub wid: u64,
}

/// What a forked worker of an app cell does to become one pack's worker
/// (its environment, working directory and venv): applied by the zygote's
/// child before it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackSetup {
    /// Environment variables to set.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// The working directory (none: keep the zygote's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// `sys.path` entries to drop (the zygote's venv).
    #[serde(default)]
    pub drop: Vec<String>,
    /// Site directories to add (the pack venv's site-packages, `.pth` files honoured).
    #[serde(default)]
    pub site: Vec<String>,
    /// How the forked worker walls itself off from the other packs of its app cell.
    #[serde(default)]
    pub confine: Option<Confine>,
}

/// [`PackSetup::confine`]: what a forked pack worker may keep once confined
/// (`_nodecell.confine_forked_worker`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confine {
    /// The host-side uid (and gid) the worker takes, from the cell's `--uid-range` (none: keep).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Paths it may read and execute.
    #[serde(default)]
    pub ro: Vec<String>,
    /// Paths it may read and write.
    #[serde(default)]
    pub rw: Vec<String>,
    /// Its private `TMPDIR` (a folder under `/tmp`).
    #[serde(default)]
    pub tmp: Option<String>,
}

/// A message from a zygote to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Event {
    /// The zygote has imported what it preloads and waits for `spawn`.
    Ready(Ready),
    /// The worker `wid` was forked; its pidfd comes with this message.
    Spawned(Spawned),
    /// A child of the zygote ended.
    Exited(Exited),
}

/// [`Event::Ready`]'s fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// The zygote's pid (in the sandbox's pid namespace).
    pub pid: i32,
    /// The modules it imported.
    #[serde(default)]
    pub preloaded: Vec<String>,
    /// Module -> why it could not be imported.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
    /// `python`, `numpy`, `torch` -> their versions.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    /// Top-level non-stdlib module -> the file it came from (checked by
    /// the host against each pack of an app cell).
    #[serde(default)]
    pub modules: BTreeMap<String, String>,
}

/// [`Event::Spawned`]'s fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spawned {
    /// The worker's number, from `spawn`.
    pub wid: u64,
    /// The worker's pid.
    pub pid: i32,
}

/// [`Event::Exited`]'s fields: `code` or `signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exited {
    /// The worker's number (none: a child the zygote did not know).
    pub wid: Option<u64>,
    /// Its pid.
    pub pid: i32,
    /// Its exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// A message with no fields but its `op`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

type Map = serde_json::Map<String, serde_json::Value>;

/// Encodes a request as the bytes of one control message.
pub fn encode_request(msg: &Request) -> Vec<u8> {
    encode(msg)
}

/// Encodes an event as the bytes of one control message.
pub fn encode_event(msg: &Event) -> Vec<u8> {
    encode(msg)
}

/// Reads one control message sent by the host.
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    request_from_map(versioned(REQUEST, bytes)?)
}

/// Reads one control message sent by a zygote.
pub fn decode_event(bytes: &[u8]) -> Result<Event, WireError> {
    event_from_map(versioned(EVENT, bytes)?)
}

/// Checks a request given as a JSON object without its version (as the
/// Python side builds it).
pub fn request_from_json(value: serde_json::Value) -> Result<Request, WireError> {
    request_from_map(as_object(REQUEST, value)?)
}

/// Checks an event given as a JSON object without its version (as the
/// Python side builds it).
pub fn event_from_json(value: serde_json::Value) -> Result<Event, WireError> {
    event_from_map(as_object(EVENT, value)?)
}

fn request_from_map(mut map: Map) -> Result<Request, WireError> {
    let op = take_op(REQUEST, &mut map)?;
    let rest = serde_json::Value::Object(map);
    Ok(match op.as_str() {
        "spawn" => Request::Spawn(from_value(REQUEST, rest)?),
        "kill" => Request::Kill(from_value(REQUEST, rest)?),
        "exit" => {
            from_value::<NoFields>(REQUEST, rest)?;
            Request::Exit
        }
        _ => return Err(unknown_op(REQUEST, &op, "spawn, kill, exit")),
    })
}

fn event_from_map(mut map: Map) -> Result<Event, WireError> {
    let op = take_op(EVENT, &mut map)?;
    let rest = serde_json::Value::Object(map);
    Ok(match op.as_str() {
        "ready" => Event::Ready(from_value(EVENT, rest)?),
        "spawned" => Event::Spawned(from_value(EVENT, rest)?),
        "exited" => Event::Exited(from_value(EVENT, rest)?),
        _ => return Err(unknown_op(EVENT, &op, "ready, spawned, exited")),
    })
}

fn take_op(what: &'static str, map: &mut Map) -> Result<String, WireError> {
    match map.remove("op") {
        Some(serde_json::Value::String(op)) => Ok(op),
        Some(other) => Err(WireError::Field {
            what,
            field: "op".into(),
            detail: format!("expected a string, got {other}"),
        }),
        None => Err(WireError::Field {
            what,
            field: "op".into(),
            detail: "missing field `op`".into(),
        }),
    }
}

fn unknown_op(what: &'static str, op: &str, expected: &str) -> WireError {
    WireError::Field {
        what,
        field: "op".into(),
        detail: format!("unknown op {op:?}, expected one of {expected}"),
    }
}

fn as_object(what: &'static str, value: serde_json::Value) -> Result<Map, WireError> {
    match value {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(WireError::NotJson {
            what,
            detail: format!("got {other}"),
        }),
    }
}

fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut value = serde_json::to_value(msg).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("v".into(), CONTROL_VERSION.into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The message's object, its version checked and removed.
fn versioned(what: &'static str, bytes: &[u8]) -> Result<Map, WireError> {
    if bytes.len() > MAX_CONTROL_BYTES {
        return Err(WireError::NotJson {
            what,
            detail: format!("{} bytes, more than {MAX_CONTROL_BYTES}", bytes.len()),
        });
    }
    let mut map = object(what, bytes)?;
    let got = map.remove("v").as_ref().and_then(serde_json::Value::as_u64);
    if got != Some(u64::from(CONTROL_VERSION)) {
        return Err(WireError::Version {
            what,
            got: got.unwrap_or(0),
            want: CONTROL_VERSION,
        });
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(e: WireError) -> String {
        match e {
            WireError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn requests_round_trip_with_their_version() {
        let pack = PackSetup {
            env: [("HOME".to_string(), "/h".to_string())].into(),
            unset: vec!["PYTHONPATH".into()],
            cwd: Some("/pack".into()),
            drop: vec!["/zyg/site".into()],
            site: vec!["/pack/.venv/site".into()],
            confine: Some(Confine {
                uid: Some(100_001),
                ro: vec!["/pack".into()],
                rw: vec![],
                tmp: Some("/tmp/nc-p".into()),
            }),
        };
        for msg in [
            Request::Spawn(Spawn { wid: 7, pack: None }),
            Request::Spawn(Spawn {
                wid: 8,
                pack: Some(pack),
            }),
            Request::Kill(Kill { wid: 3 }),
            Request::Exit,
        ] {
            let bytes = encode_request(&msg);
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["v"], json!(CONTROL_VERSION));
            assert_eq!(decode_request(&bytes).unwrap(), msg);
        }
        assert_eq!(
            String::from_utf8(encode_request(&Request::Exit)).unwrap(),
            r#"{"op":"exit","v":1}"#
        );
    }

    #[test]
    fn events_round_trip() {
        for msg in [
            Event::Ready(Ready {
                pid: 2,
                preloaded: vec!["torch".into()],
                errors: [("nope".to_string(), "ModuleNotFoundError: nope".to_string())].into(),
                versions: [("python".to_string(), "3.11.2".to_string())].into(),
                modules: BTreeMap::new(),
            }),
            Event::Spawned(Spawned { wid: 1, pid: 40 }),
            Event::Exited(Exited {
                wid: Some(1),
                pid: 40,
                code: None,
                signal: Some(9),
            }),
            Event::Exited(Exited {
                wid: None,
                pid: 41,
                code: Some(0),
                signal: None,
            }),
        ] {
            assert_eq!(decode_event(&encode_event(&msg)).unwrap(), msg);
        }
    }

    #[test]
    fn a_wrong_field_is_named() {
        let e = decode_request(br#"{"op":"spawn","wid":"x","v":1}"#).unwrap_err();
        assert!(e.to_string().contains("field `wid`"), "{e}");
        assert_eq!(field_of(e), "wid");
        let e = decode_request(br#"{"op":"spawn","v":1}"#).unwrap_err();
        assert_eq!(field_of(e), "wid");
        let e = decode_request(br#"{"op":"kill","wid":1,"extra":2,"v":1}"#).unwrap_err();
        assert_eq!(field_of(e), "extra");
        let e =
            decode_request(br#"{"op":"spawn","wid":1,"pack":{"env":{"A":1}},"v":1}"#).unwrap_err();
        assert_eq!(field_of(e), "pack.env.A");
        let e = decode_event(br#"{"op":"spawned","wid":1,"pid":-1.5,"v":1}"#).unwrap_err();
        assert_eq!(field_of(e), "pid");
    }

    #[test]
    fn an_unknown_op_or_direction_is_refused() {
        let e = decode_request(br#"{"op":"fork","v":1}"#).unwrap_err();
        assert!(e.to_string().contains("fork"), "{e}");
        assert_eq!(field_of(e), "op");
        // A zygote may not send requests, nor the host events.
        assert!(decode_event(&encode_request(&Request::Exit)).is_err());
        assert!(
            decode_request(&encode_event(&Event::Spawned(Spawned { wid: 1, pid: 2 }))).is_err()
        );
        let e = decode_request(br#"{"wid":1,"v":1}"#).unwrap_err();
        assert_eq!(field_of(e), "op");
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        let e = decode_request(br#"{"op":"exit"}"#).unwrap_err();
        assert!(matches!(e, WireError::Version { got: 0, .. }), "{e:?}");
        assert!(e.to_string().contains("field `v`"), "{e}");
        let e = decode_request(br#"{"op":"exit","v":2}"#).unwrap_err();
        assert!(matches!(
            e,
            WireError::Version {
                got: 2,
                want: 1,
                ..
            }
        ));
        assert!(matches!(
            decode_request(b"\xff\x00"),
            Err(WireError::NotJson { .. })
        ));
        assert!(matches!(
            decode_event(b"[1,2]"),
            Err(WireError::NotJson { .. })
        ));
        let big = vec![b' '; MAX_CONTROL_BYTES + 1];
        assert!(matches!(decode_event(&big), Err(WireError::NotJson { .. })));
    }

    #[test]
    fn json_from_python_is_checked() {
        let r = request_from_json(json!({"op": "spawn", "wid": 4, "pack": {"cwd": "/p"}})).unwrap();
        assert_eq!(
            r,
            Request::Spawn(Spawn {
                wid: 4,
                pack: Some(PackSetup {
                    cwd: Some("/p".into()),
                    ..PackSetup::default()
                })
            })
        );
        let e = event_from_json(json!({"op": "ready"})).unwrap_err();
        assert_eq!(field_of(e), "pid");
    }
}
