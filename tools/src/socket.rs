//! Where a host process publishes its tools socket, and talking to it.
//!
//! Every Python process that runs cells (an `ExtensionManager`) listens on
//! `<dir>/<pid>.sock`, a unix stream socket of mode 0600 in a directory of
//! mode 0700 owned by the same user, where `<dir>` is the first of:
//!
//! 1. `$NODECELL_TOOLS_DIR`,
//! 2. `$XDG_RUNTIME_DIR/nodecell` (when that runtime dir is ours),
//! 3. `/run/user/<uid>/nodecell` (when that dir is ours),
//! 4. `/tmp/nodecell-<uid>`.
//!
//! `NODECELL_TOOLS=0` (or `off`, `false`, `no`) in the host's environment
//! turns the socket off. Requests and answers are JSON objects, one per line;
//! a host answers `{"op": "stats"}` with a [`crate::stats::HostStats`] and
//! turns a connection into a session for `{"op": "debug"}` and
//! `{"op": "profile"}`. An answer `{"error": "..."}` is a refusal.

use std::fs;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The environment variable that turns a host's tools socket off (`0`, `off`, `false`, `no`).
pub const ENV_SWITCH: &str = "NODECELL_TOOLS";
/// The environment variable naming the directory of tools sockets.
pub const ENV_DIR: &str = "NODECELL_TOOLS_DIR";
/// The longest line either side accepts (a stats snapshot of many cells fits).
pub const MAX_LINE: usize = 16 << 20;

/// What can go wrong finding or talking to a host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolsError {
    /// The socket directory is not private to this user.
    #[error("{path}: {why}; refusing to use it for tools sockets")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// No host process has a socket in the directory.
    #[error("no nodecell host process found in {dir} (is one running as this user, with {ENV_SWITCH} not 0?)")]
    NoHost {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The asked-for host has no socket.
    #[error("process {pid} has no nodecell tools socket at {path}")]
    NoSuchHost {
        /// The pid asked for.
        pid: u32,
        /// Where its socket would be.
        path: PathBuf,
    },
    /// Reading or writing a socket or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The host sent something that is not a JSON object line.
    #[error("{path}: the host sent a malformed line: {detail}")]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// Why it did not parse.
        detail: String,
    },
    /// The host refused the request.
    #[error("{path}: the host refused: {message}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The host's reason.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ToolsError + '_ {
    move |source| ToolsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether the switch in `value` (the value of [`ENV_SWITCH`]) leaves the socket on.
pub fn switch_on(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "off" | "false" | "no")
    )
}

/// Whether this process's environment leaves the tools socket on.
pub fn enabled() -> bool {
    switch_on(std::env::var(ENV_SWITCH).ok().as_deref())
}

fn owned_dir(p: &Path, uid: u32) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == uid)
}

/// The directory tools sockets live in for this user (see the module docs); not created.
pub fn socket_dir() -> PathBuf {
    let uid = nix::unistd::geteuid().as_raw();
    if let Some(d) = std::env::var_os(ENV_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if x.is_absolute() && owned_dir(&x, uid) {
            return x.join("nodecell");
        }
    }
    let run = PathBuf::from(format!("/run/user/{uid}"));
    if owned_dir(&run, uid) {
        return run.join("nodecell");
    }
    PathBuf::from(format!("/tmp/nodecell-{uid}"))
}

/// Check that `dir` is a real directory owned by this user that no one else
/// can write to or list (creating it with mode 0700 when `create` and missing).
pub fn check_dir(dir: &Path, create: bool) -> Result<(), ToolsError> {
    let uid = nix::unistd::geteuid().as_raw();
    let meta = match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
            fs::symlink_metadata(dir).map_err(io_err(dir))?
        }
        r => r.map_err(io_err(dir))?,
    };
    let unsafe_dir = |why: String| ToolsError::UnsafeDir {
        path: dir.to_path_buf(),
        why,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory (or a symlink)".into()));
    }
    if meta.uid() != uid {
        return Err(unsafe_dir(format!(
            "owned by uid {}, not by this user (uid {uid})",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "mode {:o}: group or others have access",
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

/// The socket path of host process `pid` in `dir`.
pub fn socket_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.sock"))
}

/// One host process with a tools socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSocket {
    /// The host's pid.
    pub pid: u32,
    /// Its socket.
    pub path: PathBuf,
}

/// The host processes with a socket in `dir`, by pid. Sockets of processes
/// that are gone (no `/proc/<pid>`, or nobody listening) are removed.
pub fn hosts(dir: &Path) -> Result<Vec<HostSocket>, ToolsError> {
    check_dir(dir, false)?;
    let mut out = Vec::new();
    for ent in fs::read_dir(dir).map_err(io_err(dir))? {
        let ent = ent.map_err(io_err(dir))?;
        let name = ent.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = ent.path();
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && match UnixStream::connect(&path) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::ConnectionRefused,
            };
        if alive {
            out.push(HostSocket { pid, path });
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    out.sort_by_key(|h| h.pid);
    Ok(out)
}

/// The host to talk to: `pid` when given, else the only one running (an
/// error lists them when there are several).
pub fn pick_host(dir: &Path, pid: Option<u32>) -> Result<HostSocket, ToolsError> {
    if let Some(pid) = pid {
        check_dir(dir, false)?;
        let path = socket_path(dir, pid);
        if !path.exists() {
            return Err(ToolsError::NoSuchHost { pid, path });
        }
        return Ok(HostSocket { pid, path });
    }
    let mut all = hosts(dir)?;
    match all.len() {
        0 => Err(ToolsError::NoHost {
            dir: dir.to_path_buf(),
        }),
        1 => Ok(all.remove(0)),
        _ => Err(ToolsError::Refused {
            path: dir.to_path_buf(),
            message: format!(
                "several host processes run ({}); pick one with --pid",
                all.iter()
                    .map(|h| h.pid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// A connection to one host's tools socket: JSON objects, one per line.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connect to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ToolsError> {
        let s = UnixStream::connect(path).map_err(io_err(path))?;
        let writer = s.try_clone().map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(s),
            writer,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Give up waiting for a line after `t` (None: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ToolsError> {
        self.writer.set_read_timeout(t).map_err(io_err(&self.path))
    }

    /// Send one object.
    pub fn send(&mut self, msg: &Value) -> Result<(), ToolsError> {
        let mut line = serde_json::to_vec(msg).expect("a JSON value serializes");
        line.push(b'\n');
        self.writer.write_all(&line).map_err(io_err(&self.path))
    }

    /// Receive one object; `None` when the host closed the connection.
    pub fn recv(&mut self) -> Result<Option<Value>, ToolsError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io_err(&self.path))?;
        if n == 0 {
            return Ok(None);
        }
        if line.len() > MAX_LINE {
            return Err(self.bad(format!("a line longer than {MAX_LINE} bytes")));
        }
        let v: Value = serde_json::from_slice(&line).map_err(|e| self.bad(e.to_string()))?;
        if !v.is_object() {
            return Err(self.bad("not a JSON object".into()));
        }
        if let Some(msg) = v.get("error").and_then(Value::as_str) {
            return Err(ToolsError::Refused {
                path: self.path.clone(),
                message: msg.to_string(),
            });
        }
        Ok(Some(v))
    }

    /// Send `msg` and return the answer.
    pub fn request(&mut self, msg: &Value) -> Result<Value, ToolsError> {
        self.send(msg)?;
        self.recv()?
            .ok_or_else(|| self.bad("closed the connection without answering".into()))
    }

    /// A second handle on the same connection for writing from another thread.
    pub fn writer(&self) -> Result<UnixStream, ToolsError> {
        self.writer.try_clone().map_err(io_err(&self.path))
    }

    fn bad(&self, detail: String) -> ToolsError {
        ToolsError::BadReply {
            path: self.path.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_values() {
        assert!(switch_on(None));
        assert!(switch_on(Some("1")));
        assert!(switch_on(Some("")));
        for off in ["0", "off", "OFF", "false", "no", " no "] {
            assert!(!switch_on(Some(off)), "{off}");
        }
    }

    #[test]
    fn dir_checks_refuse_shared_directories() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("socks");
        check_dir(&d, true).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_dir(&d, false).unwrap_err().to_string();
        assert!(e.contains("mode 755"), "{e}");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = check_dir(&link, false).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn stale_sockets_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("socks");
        check_dir(&d, true).unwrap();
        // A socket file nobody listens on, named after a live pid (ours).
        let me = std::process::id();
        let path = socket_path(&d, me);
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(hosts(&d).unwrap().is_empty());
        assert!(!path.exists());
        // A listening one is found.
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(hosts(&d).unwrap(), vec![HostSocket { pid: me, path }]);
        assert!(matches!(
            pick_host(&d, Some(1)),
            Err(ToolsError::NoSuchHost { pid: 1, .. })
        ));
    }
}
