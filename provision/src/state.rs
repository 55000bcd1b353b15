//! Pack state: the per-pack layers that isolated packs write into instead of
//! their own folder (see the Python `nodecell.studio.state` for how a layer
//! is kept up to date), under nodecell's state folder:
//! `<root>/packs/<pack>/{layer/, synced.json}`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::interpreter::running_as_root;

/// nodecell's state folder: `$NODECELL_STATE_DIR` if set, else
/// `/var/lib/nodecell` when running as root, else
/// `${XDG_STATE_HOME:-~/.local/state}/nodecell`.
pub fn default_root() -> PathBuf {
    if let Some(r) = std::env::var_os("NODECELL_STATE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(r);
    }
    if running_as_root() {
        return PathBuf::from("/var/lib/nodecell");
    }
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("nodecell")
}

/// One pack's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackState {
    /// The pack's name.
    pub pack: String,
    /// Its folder (`<root>/packs/<pack>`).
    pub dir: PathBuf,
    /// Bytes in it.
    pub bytes: u64,
    /// Files in it.
    pub files: u64,
    /// Seconds since the epoch of the last sync (its last start).
    pub last_used_unix: u64,
}

fn walk(dir: &Path, bytes: &mut u64, files: &mut u64) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.is_dir() {
            walk(&e.path(), bytes, files);
        } else {
            *bytes += m.len();
            *files += 1;
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every pack's state under `root`, by name.
pub fn list(root: &Path) -> Vec<PackState> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root.join("packs")) else {
        return out;
    };
    for e in rd.flatten() {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let (mut bytes, mut files) = (0, 0);
        walk(&dir, &mut bytes, &mut files);
        let used = ["synced.json", "layer"]
            .iter()
            .filter_map(|f| dir.join(f).metadata().and_then(|m| m.modified()).ok())
            .max()
            .map(unix)
            .unwrap_or(0);
        out.push(PackState {
            pack: e.file_name().to_string_lossy().into_owned(),
            dir,
            bytes,
            files,
            last_used_unix: used,
        });
    }
    out.sort_by(|a, b| a.pack.cmp(&b.pack));
    out
}

/// Removes one pack's state; `Ok(false)` when it had none. A name that is
/// not a plain folder name is refused.
pub fn remove(root: &Path, pack: &str) -> std::io::Result<bool> {
    if pack.is_empty() || pack.contains('/') || pack == "." || pack == ".." {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{pack:?} is not a pack name"),
        ));
    }
    let dir = root.join("packs").join(pack);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The packs whose state was not used for `keep` (removed unless `dry_run`).
pub fn gc(root: &Path, keep: Duration, dry_run: bool) -> std::io::Result<Vec<PackState>> {
    let now = unix(SystemTime::now());
    let mut out = Vec::new();
    for s in list(root) {
        if now.saturating_sub(s.last_used_unix) >= keep.as_secs() {
            if !dry_run {
                remove(root, &s.pack)?;
            }
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_remove_and_gc() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert!(list(root).is_empty());
        for p in ["a", "b"] {
            std::fs::create_dir_all(root.join("packs").join(p).join("layer/sub")).unwrap();
            std::fs::write(root.join("packs").join(p).join("layer/sub/x.json"), "{}").unwrap();
            std::fs::write(root.join("packs").join(p).join("synced.json"), "{}").unwrap();
        }
        let l = list(root);
        assert_eq!(
            l.iter().map(|s| s.pack.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!((l[0].files, l[0].bytes), (2, 4));
        assert!(remove(root, "a").unwrap());
        assert!(!remove(root, "a").unwrap());
        assert!(remove(root, "../x").is_err());
        assert!(gc(root, Duration::from_secs(3600), false)
            .unwrap()
            .is_empty());
        let gone = gc(root, Duration::ZERO, true).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(list(root).len(), 1, "a dry run removes nothing");
        gc(root, Duration::ZERO, false).unwrap();
        assert!(list(root).is_empty());
    }
}
