//! Progress events: what provisioning is doing, for a terminal spinner or a
//! host UI.
//!
//! Each [`Event`] serializes to one JSON object (one line with
//! [`Event::to_json_line`]):
//!
//! ```json
//! {"pack":"p","key":"3f…","elapsed_ms":0,"event":"resolving","requirements":2}
//! {"pack":"p","key":"3f…","elapsed_ms":340,"event":"downloading","packages":5,"resolve_ms":340}
//! {"pack":"p","key":"3f…","elapsed_ms":352,"event":"download","package":"numpy","size":"17.4MiB"}
//! {"pack":"p","key":"3f…","elapsed_ms":510,"event":"installing","packages":5,"download_ms":170}
//! {"pack":"p","key":"3f…","elapsed_ms":530,"event":"done","venv":"/var/cache/…","cache_hit":false,"waited":false,"packages":5,"installed":5,"resolve_ms":340,"download_ms":170,"install_ms":20}
//! ```
//!
//! Other events: `cache_hit` is reported as `done` with `"cache_hit":true`;
//! `waiting` (another process holds the build lock for the same key) and
//! `failed` (with uv's or nodecell's error text).
//!
//! Give [`crate::Provisioner`] any [`EventSink`]: a closure
//! `|e: &Event| ...`, [`JsonLines`] over a writer, or [`NoEvents`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

/// One progress event for one pack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The pack's name.
    pub pack: String,
    /// The venv's cache key.
    pub key: String,
    /// Milliseconds since provisioning of this pack began.
    pub elapsed_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened; serialized as `"event": "<name>"` plus its fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// Another process is building the same venv; waiting for its lock.
    Waiting {
        /// The lock file.
        lock: PathBuf,
    },
    /// uv is resolving the requirements.
    Resolving {
        /// Number of requirements in the manifest.
        requirements: usize,
    },
    /// Resolution finished; distributions are being fetched (or taken from uv's cache).
    Downloading {
        /// Packages in the resolution.
        packages: usize,
        /// Time spent resolving.
        resolve_ms: u64,
    },
    /// One distribution is being downloaded.
    Download {
        /// Its name.
        package: String,
        /// Its size as uv printed it (`17.4MiB`), if known.
        size: Option<String>,
    },
    /// Distributions are ready; they are being linked into the venv.
    Installing {
        /// Packages to install.
        packages: usize,
        /// Time spent downloading/preparing.
        download_ms: u64,
    },
    /// The venv is ready.
    Done {
        /// Its path.
        venv: PathBuf,
        /// Whether it already existed.
        cache_hit: bool,
        /// Whether this call waited for another process's build.
        waited: bool,
        /// Packages in the venv (counting shared host packages).
        packages: usize,
        /// Packages this call installed.
        installed: usize,
        /// Time resolving.
        resolve_ms: u64,
        /// Time downloading/preparing.
        download_ms: u64,
        /// Time installing.
        install_ms: u64,
    },
    /// Provisioning failed; nothing was left in the cache.
    Failed {
        /// The error, including uv's own text where uv failed.
        message: String,
    },
}

impl Event {
    /// The event's name: `resolving`, `downloading`, `installing`, `done`, ...
    pub fn name(&self) -> &'static str {
        match self.kind {
            EventKind::Waiting { .. } => "waiting",
            EventKind::Resolving { .. } => "resolving",
            EventKind::Downloading { .. } => "downloading",
            EventKind::Download { .. } => "download",
            EventKind::Installing { .. } => "installing",
            EventKind::Done { .. } => "done",
            EventKind::Failed { .. } => "failed",
        }
    }

    /// The event as one line of JSON (with a trailing newline).
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"event\":\"error\",\"message\":{:?}}}", e.to_string()));
        s.push('\n');
        s
    }
}

/// Receives progress events. Called from the provisioning thread.
pub trait EventSink: Sync {
    /// One event.
    fn event(&self, event: &Event);
}

impl<F: Fn(&Event) + Sync> EventSink for F {
    fn event(&self, event: &Event) {
        self(event)
    }
}

/// Discards events.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&self, _: &Event) {}
}

/// Writes each event as a JSON line and flushes.
#[derive(Debug)]
pub struct JsonLines<W: Write + Send>(Mutex<W>);

impl<W: Write + Send> JsonLines<W> {
    /// Wraps a writer (stdout, a pipe, a file).
    pub fn new(w: W) -> Self {
        JsonLines(Mutex::new(w))
    }
}

impl<W: Write + Send> EventSink for JsonLines<W> {
    fn event(&self, event: &Event) {
        let mut w = match self.0.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        // A closed pipe must not stop provisioning.
        let _ = w.write_all(event.to_json_line().as_bytes());
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_flat_json_lines() {
        let e = Event {
            pack: "p".into(),
            key: "k".into(),
            elapsed_ms: 5,
            kind: EventKind::Downloading {
                packages: 3,
                resolve_ms: 4,
            },
        };
        let v: serde_json::Value = serde_json::from_str(e.to_json_line().trim()).unwrap();
        assert_eq!(v["event"], "downloading");
        assert_eq!(v["packages"], 3);
        assert_eq!(v["pack"], "p");
        assert_eq!(e.name(), "downloading");
    }
}
