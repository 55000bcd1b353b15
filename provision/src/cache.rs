//! The venv cache on disk: listing and garbage collection.
//!
//! Layout of a cache root:
//!
//! ```text
//! <root>/<key>/                 a finished venv (with nodecell-venv.json)
//! <root>/.locks/<key>.lock      one lock per key (builds, hits, gc)
//! <root>/.tmp/<key>.<pid>.<n>   builds in progress (renamed to <root>/<key>)
//! <root>/.usage/<key>.json      packs that used it, last use
//! <root>/.interpreters/*.json   cached interpreter queries
//! ```

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fs4::FileExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::provision::{usage_path, VenvInfo, INFO_FILE};

/// Who used a venv and when (`.usage/<key>.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Names of the packs that used it.
    pub packs: Vec<String>,
    /// Seconds since the epoch of the last build or cache hit.
    pub last_used_unix: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_usage(root: &Path, key: &str) -> Option<Usage> {
    serde_json::from_slice(&std::fs::read(usage_path(root, key)).ok()?).ok()
}

/// Records a use of `key` by `pack` (best effort; the caller holds the key's lock).
pub(crate) fn write_usage(root: &Path, key: &str, pack: &str) {
    let mut u = read_usage(root, key).unwrap_or_default();
    if !u.packs.iter().any(|p| p == pack) {
        u.packs.push(pack.to_string());
        u.packs.sort();
    }
    u.last_used_unix = now_unix();
    let path = usage_path(root, key);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if let Ok(text) = serde_json::to_vec(&u) {
        if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// One venv in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedVenv {
    /// Its key.
    pub key: String,
    /// Its folder.
    pub path: PathBuf,
    /// Packs that used it.
    pub packs: Vec<String>,
    /// Bytes of its files (symlinks to a shared host torch count as links).
    pub size_bytes: u64,
    /// Seconds since the epoch of its last use.
    pub last_used_unix: u64,
    /// What was recorded when it was built.
    pub info: VenvInfo,
}

/// What [`VenvCache::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Venvs removed (or that would be, with `dry_run`).
    pub removed: Vec<CachedVenv>,
    /// Venvs kept.
    pub kept: usize,
    /// Keys skipped because a process was using their lock.
    pub busy: Vec<String>,
    /// Leftover build folders removed.
    pub stale_builds: usize,
}

/// A venv cache root, for listing and cleaning.
#[derive(Debug, Clone)]
pub struct VenvCache {
    root: PathBuf,
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += m.len();
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

impl VenvCache {
    /// The cache at `root` (nothing is created).
    pub fn open(root: impl Into<PathBuf>) -> VenvCache {
        VenvCache { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every finished venv, most recently used first.
    pub fn list(&self) -> Result<Vec<CachedVenv>> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => {
                return Err(Error::Io {
                    path: self.root.clone(),
                    op: "list",
                    source: e,
                })
            }
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let key = e.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') {
                continue;
            }
            let path = e.path();
            let Some(info) = std::fs::read(path.join(INFO_FILE))
                .ok()
                .and_then(|t| serde_json::from_slice::<VenvInfo>(&t).ok())
            else {
                continue;
            };
            let usage = read_usage(&self.root, &key).unwrap_or_else(|| Usage {
                packs: vec![info.pack.clone()],
                last_used_unix: info.created_unix,
            });
            out.push(CachedVenv {
                size_bytes: dir_size(&path),
                key,
                path,
                packs: usage.packs,
                last_used_unix: usage.last_used_unix,
                info,
            });
        }
        out.sort_by(|a, b| {
            b.last_used_unix
                .cmp(&a.last_used_unix)
                .then(a.key.cmp(&b.key))
        });
        Ok(out)
    }

    /// Removes venvs not used for `keep` (a venv whose lock is held, being
    /// built or looked up, is skipped) and leftovers of killed builds.
    pub fn gc(&self, keep: Duration, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport::default();
        let cutoff = now_unix().saturating_sub(keep.as_secs());
        for v in self.list()? {
            if v.last_used_unix > cutoff {
                report.kept += 1;
                continue;
            }
            let lock_path = self.root.join(".locks").join(format!("{}.lock", v.key));
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(Error::io(&lock_path, "open lock"))?;
            if FileExt::try_lock(&lock).is_err() {
                report.busy.push(v.key.clone());
                continue;
            }
            if !dry_run {
                // Rename first, so the key disappears at once, then delete.
                let doomed =
                    self.root
                        .join(".tmp")
                        .join(format!("{}.gc.{}", v.key, std::process::id()));
                std::fs::rename(&v.path, &doomed)
                    .map_err(Error::io(&v.path, "move out of the cache"))?;
                std::fs::remove_dir_all(&doomed).map_err(Error::io(&doomed, "remove"))?;
                let _ = std::fs::remove_file(usage_path(&self.root, &v.key));
            }
            drop(lock);
            report.removed.push(v);
        }
        // Builds whose process died: their key's lock is free.
        if let Ok(rd) = std::fs::read_dir(self.root.join(".tmp")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(key) = name.split('.').next().filter(|k| !k.is_empty()) else {
                    continue;
                };
                let lock_path = self.root.join(".locks").join(format!("{key}.lock"));
                let Ok(lock) = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                else {
                    continue;
                };
                if FileExt::try_lock(&lock).is_ok() {
                    if !dry_run {
                        let p = e.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                    report.stale_builds += 1;
                }
            }
        }
        Ok(report)
    }
}
