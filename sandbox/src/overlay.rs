//! The overlay wall (`--overlay LOWER:STATE_DIR[:DST]`): a pack sees its own
//! folder (`LOWER`, never written) at `DST` through an overlay filesystem
//! whose upper layer is `STATE_DIR/upper`: whatever the pack writes into its
//! folder lands in its state directory, never in the host's folder.
//!
//! The launcher prepares `STATE_DIR` before `clone`: it creates it (mode
//! 0700) with `upper/` and `work/`, owned by the cell's host uid; a state
//! directory a previous run left under another uid is handed over to this
//! cell (a walk that never follows symlinks). Another cell (another uid)
//! cannot read it. The sandbox's init mounts the overlay inside its mount
//! namespace (`userxattr`: overlayfs in a user namespace, Linux 5.11+),
//! `nosuid,nodev`; Landlock allows reading and writing there but not
//! `execve`. A kernel that cannot mount it is a missing wall: `required`
//! refuses, `best-effort` binds `LOWER` read-only at `DST` and says so.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::policy::PolicyError;
use crate::sys;

/// One `--overlay`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overlay {
    /// The read-only source (a pack's folder on the host).
    pub lower: PathBuf,
    /// Where writes go (`upper/`, `work/` inside).
    pub state: PathBuf,
    /// Where the pack sees it inside the sandbox (default `lower`).
    pub dst: PathBuf,
}

impl Overlay {
    /// Parses `LOWER:STATE_DIR[:DST]` (relative host paths are taken from
    /// the current directory).
    pub fn parse(s: &str) -> Result<Overlay, PolicyError> {
        let err = |why: &str| PolicyError::new("--overlay", s, why);
        let mut parts = s.splitn(3, ':');
        let (lower, state) = match (parts.next(), parts.next()) {
            (Some(l), Some(st)) if !l.is_empty() && !st.is_empty() => (l, st),
            _ => return Err(err("expected LOWER:STATE_DIR[:DST]")),
        };
        let abs = |p: &str| -> Result<PathBuf, PolicyError> {
            let p = Path::new(p);
            if p.is_absolute() {
                Ok(p.to_path_buf())
            } else {
                std::env::current_dir()
                    .map(|d| d.join(p))
                    .map_err(|e| err(&format!("current directory: {e}")))
            }
        };
        let lower = abs(lower)?;
        let state = abs(state)?;
        let dst = match parts.next() {
            None => lower.clone(),
            Some(d) if d.starts_with('/') => PathBuf::from(d),
            Some(_) => return Err(err("the destination must be an absolute path")),
        };
        Ok(Overlay { lower, state, dst })
    }

    /// `STATE_DIR/upper`.
    pub fn upper(&self) -> PathBuf {
        self.state.join("upper")
    }

    /// `STATE_DIR/work`.
    pub fn work(&self) -> PathBuf {
        self.state.join("work")
    }

    /// Checks the host side: `LOWER` is a directory, `STATE_DIR` is not
    /// inside it (nor it inside `STATE_DIR`), and its parent exists.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let shown = format!(
            "{}:{}:{}",
            self.lower.display(),
            self.state.display(),
            self.dst.display()
        );
        let err = |why: String| PolicyError::new("--overlay", &shown, why);
        match std::fs::metadata(&self.lower) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err(format!("{} is not a directory", self.lower.display()))),
            Err(e) => return Err(err(format!("{}: {e}", self.lower.display()))),
        }
        if self.state.starts_with(&self.lower) || self.lower.starts_with(&self.state) {
            return Err(err(
                "the state directory and the lower folder must not contain each other".into(),
            ));
        }
        match self.state.parent() {
            Some(p) if p.is_dir() => {}
            _ => {
                return Err(err(format!(
                    "the parent of {} does not exist",
                    self.state.display()
                )))
            }
        }
        Ok(())
    }
}

/// Why a state directory could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("--overlay state {path}: {why}")]
pub struct OverlayError {
    /// The path at fault.
    pub path: PathBuf,
    /// Why.
    pub why: String,
}

/// Launcher side, before `clone`: makes `STATE_DIR`, `upper/` and `work/`
/// (mode 0700) owned by `uid:gid`. When the launcher is root and the state
/// directory belongs to someone else (a previous run's uid), everything in
/// it is handed over to `uid:gid` without following symlinks. Rootless
/// launchers own what they create and chown nothing.
pub fn prepare_state(ov: &Overlay, uid: u32, gid: u32, root: bool) -> Result<(), OverlayError> {
    let fail = |path: &Path, why: String| OverlayError {
        path: path.to_path_buf(),
        why,
    };
    for d in [ov.state.clone(), ov.upper(), ov.work()] {
        match std::fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(fail(
                    &d,
                    "exists and is not a directory (or is a symlink)".into(),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&d).map_err(|e| fail(&d, e.to_string()))?;
            }
            Err(e) => return Err(fail(&d, e.to_string())),
        }
    }
    let state =
        sys::open_dir_nofollow(None, &ov.state).map_err(|e| fail(&ov.state, e.to_string()))?;
    sys::fchmod(state.as_raw_fd(), 0o700).map_err(|e| fail(&ov.state, e.to_string()))?;
    if root {
        let (owner, _) =
            sys::fstat_owner(state.as_raw_fd()).map_err(|e| fail(&ov.state, e.to_string()))?;
        if owner != uid {
            hand_over(&state, &ov.state, uid, gid).map_err(|e| fail(&ov.state, e))?;
        }
        sys::fchown(state.as_raw_fd(), uid, gid).map_err(|e| fail(&ov.state, e.to_string()))?;
    }
    Ok(())
}

/// Chowns everything below the directory `dir` (open, `O_NOFOLLOW`) to
/// `uid:gid`, never following a symlink (each entry is changed relative to
/// its parent's fd with `AT_SYMLINK_NOFOLLOW`; directories are entered with
/// `O_NOFOLLOW`), so a link left by a previous cell cannot redirect it.
fn hand_over(dir: &OwnedFd, shown: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let names =
        sys::dir_entries(dir.as_raw_fd()).map_err(|e| format!("{}: {e}", shown.display()))?;
    for (name, is_dir) in names {
        let path = shown.join(&name);
        sys::fchownat_nofollow(dir.as_raw_fd(), &name, uid, gid)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if is_dir {
            let sub = sys::open_dir_nofollow(Some(dir.as_raw_fd()), Path::new(&name))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            hand_over(&sub, &path, uid, gid)?;
        }
    }
    Ok(())
}

/// Whether this kernel and user can mount an overlay in a user namespace,
/// tried for real in a forked child (for `nodecell check`).
pub fn probe() -> Result<(), String> {
    sys::probe_userns_overlay()
        .map_err(|e| format!("overlay in a user namespace: {e} (needs Linux 5.11+)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_a_default_destination() {
        let o = Overlay::parse("/srv/pack:/var/lib/state").unwrap();
        assert_eq!(o.dst, PathBuf::from("/srv/pack"));
        assert_eq!(o.upper(), PathBuf::from("/var/lib/state/upper"));
        let o = Overlay::parse("/srv/pack:/var/lib/state:/pack").unwrap();
        assert_eq!(o.dst, PathBuf::from("/pack"));
        for bad in ["/srv/pack", ":/s", "/l:", "/l:/s:rel"] {
            assert_eq!(Overlay::parse(bad).unwrap_err().flag, "--overlay", "{bad}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let lower = d.path().join("lower");
        std::fs::create_dir(&lower).unwrap();
        let ok = Overlay {
            lower: lower.clone(),
            state: d.path().join("state"),
            dst: lower.clone(),
        };
        ok.validate().unwrap();
        let inside = Overlay {
            state: lower.join("s"),
            ..ok.clone()
        };
        assert!(inside
            .validate()
            .unwrap_err()
            .reason
            .contains("contain each other"));
        let orphan = Overlay {
            state: d.path().join("no/such/state"),
            ..ok.clone()
        };
        assert!(orphan.validate().unwrap_err().reason.contains("parent"));
        let missing = Overlay {
            lower: d.path().join("nope"),
            ..ok
        };
        assert!(missing.validate().is_err());
    }

    #[test]
    fn state_is_made_private_and_handed_over_without_following_links() {
        if sys::geteuid() != 0 {
            // A rootless launcher chowns nothing: only the layout is checked.
            let d = tempfile::tempdir().unwrap();
            let ov = Overlay {
                lower: d.path().into(),
                state: d.path().join("s"),
                dst: "/x".into(),
            };
            prepare_state(&ov, sys::geteuid(), sys::getgid(), false).unwrap();
            assert!(ov.upper().is_dir() && ov.work().is_dir());
            return;
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "host file").unwrap();
        let ov = Overlay {
            lower: d.path().join("lower"),
            state: d.path().join("state"),
            dst: "/x".into(),
        };
        prepare_state(&ov, 3_000_000_001, 3_000_000_001, true).unwrap();
        // A previous run's files, and a link it planted to a host file.
        std::fs::create_dir_all(ov.upper().join("sub")).unwrap();
        std::fs::write(ov.upper().join("sub/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, ov.upper().join("link")).unwrap();
        prepare_state(&ov, 3_000_000_002, 3_000_000_002, true).unwrap();
        for p in [
            ov.state.clone(),
            ov.upper(),
            ov.work(),
            ov.upper().join("sub"),
            ov.upper().join("sub/f"),
        ] {
            assert_eq!(
                std::fs::symlink_metadata(&p).unwrap().uid(),
                3_000_000_002,
                "{}",
                p.display()
            );
        }
        assert_eq!(
            std::fs::symlink_metadata(ov.upper().join("link"))
                .unwrap()
                .uid(),
            3_000_000_002
        );
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "the link was not followed"
        );
        assert_eq!(
            std::fs::metadata(&ov.state).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn this_kernel_mounts_overlays_in_user_namespaces() {
        probe().unwrap();
    }
}
