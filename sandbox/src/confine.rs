//! Confining a worker forked by a zygote, in-process, right after `fork`.
//!
//! A zygote cell (a Python process that imported torch and the app once)
//! forks one worker per pack. Each forked worker calls
//! [`confine_forked_worker`] while it is still single-threaded, before it
//! imports any pack code. In this order it:
//!
//! 1. drops every capability from the bounding set (while `CAP_SETPCAP` is
//!    still effective; without it the bounding set cannot change, and stays
//!    inert under `no_new_privs`), the ambient and the inheritable sets;
//! 2. drops supplementary groups and switches to the worker's own gid and
//!    uid (`setresgid`/`setresuid`: a zygote started with `--uid-range N`
//!    holds `CAP_SETUID`/`CAP_SETGID` in the cell's user namespace, which maps
//!    N host uids; rootless cells map one uid, so every worker keeps it);
//! 3. clears the permitted and effective sets and sets `no_new_privs`;
//! 4. applies a new Landlock domain, stacked on the launcher's: only the
//!    given paths (plus, with [`ConfineSpec::system`], the system's read-only
//!    paths), with signals and abstract unix sockets scoped to the worker's
//!    own domain (ABI 6+), so it cannot signal, trace or connect to a sibling
//!    worker or the zygote;
//! 5. checks `/proc/self/status`: no capability left, `no_new_privs` on.
//!
//! The launcher's seccomp filter stays in place (filters are inherited
//! across `fork` and cannot be removed). Capabilities and Landlock domains
//! are per thread: call this in a single-threaded process.

use std::path::PathBuf;

use crate::capabilities::{self, CapsError};
use crate::landlock::{self, LandlockError, LandlockReport};
use crate::mounts::Access;
use crate::sys;

/// What a forked worker may keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfineSpec {
    /// Switch to this uid (`None`: keep the current one).
    pub uid: Option<u32>,
    /// Switch to this gid (`None`: keep the current one).
    pub gid: Option<u32>,
    /// Readable and executable (the pack's folder, its venv).
    pub ro_paths: Vec<PathBuf>,
    /// Readable and writable, never executable (the pack's state, its tmp).
    pub rw_paths: Vec<PathBuf>,
    /// Also allow what every Python process needs: read+exec of `/usr`,
    /// `/lib*`, `/bin`, `/sbin`; read of `/etc` and `/proc`; the device
    /// nodes of `/dev`. Paths that do not exist are skipped.
    pub system: bool,
}

/// The system paths [`ConfineSpec::system`] adds.
pub const SYSTEM_PATHS: &[(&str, Access)] = &[
    ("/usr", Access::ReadExec),
    ("/lib", Access::ReadExec),
    ("/lib64", Access::ReadExec),
    ("/lib32", Access::ReadExec),
    ("/bin", Access::ReadExec),
    ("/sbin", Access::ReadExec),
    ("/etc", Access::Read),
    ("/proc", Access::Read),
    ("/dev", Access::Device),
];

impl ConfineSpec {
    /// The Landlock rules of this spec: `(path, access, is_dir)`.
    pub fn rules(&self) -> Vec<(PathBuf, Access, bool)> {
        let mut out = Vec::new();
        let mut push = |p: PathBuf, a: Access| {
            if let Ok(m) = std::fs::metadata(&p) {
                out.push((p, a, m.is_dir()));
            }
        };
        if self.system {
            for (p, a) in SYSTEM_PATHS {
                push(PathBuf::from(p), *a);
            }
        }
        for p in &self.ro_paths {
            push(p.clone(), Access::ReadExec);
        }
        for p in &self.rw_paths {
            push(p.clone(), Access::ReadWrite);
        }
        out
    }
}

/// What [`confine_forked_worker`] did.
#[derive(Debug, Clone)]
pub struct ConfineReport {
    /// The uid now in effect.
    pub uid: u32,
    /// The gid now in effect.
    pub gid: u32,
    /// Whether the bounding set was emptied (needs `CAP_SETPCAP`).
    pub bounding_dropped: bool,
    /// The Landlock domain applied.
    pub landlock: LandlockReport,
}

/// Why a worker could not be confined; each variant names its wall. The
/// caller must not run pack code after an error (exit instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfineError {
    /// A capability set could not be cleared.
    #[error("confine: capabilities: {0}")]
    Caps(#[from] CapsError),
    /// Switching the uid, gid or groups failed.
    #[error("confine: switching to {what}: {source}")]
    Ids {
        /// `uid N`, `gid N` or `no supplementary groups`.
        what: String,
        /// The errno.
        source: std::io::Error,
    },
    /// The Landlock domain could not be applied in full.
    #[error("confine: landlock: {0}")]
    Landlock(#[from] LandlockError),
    /// The final check found something left.
    #[error("confine: still holding {0}")]
    Left(String),
}

/// Confines the calling (single-threaded, freshly forked) process as
/// described in the [module docs](self).
pub fn confine_forked_worker(spec: &ConfineSpec) -> Result<ConfineReport, ConfineError> {
    let ids = |what: String| move |source| ConfineError::Ids { what, source };
    let before = capabilities::current()?;
    const SETPCAP: u64 = 1 << 8;
    let bounding_dropped = before.effective & SETPCAP != 0;
    capabilities::clear_transferable(bounding_dropped)?;
    if !sys::groups()
        .map_err(ids("no supplementary groups".into()))?
        .is_empty()
    {
        sys::clear_groups().map_err(ids("no supplementary groups".into()))?;
    }
    if let Some(gid) = spec.gid {
        sys::setresgid(gid).map_err(ids(format!("gid {gid}")))?;
    }
    if let Some(uid) = spec.uid {
        sys::setresuid(uid).map_err(ids(format!("uid {uid}")))?;
    }
    capabilities::drop_all_sets()?;
    let abi = landlock::requested_abi().map_err(LandlockError::Unavailable)?;
    let report = landlock::apply(&spec.rules(), abi)?;
    let after = capabilities::current()?;
    let left = [
        ("permitted", after.permitted),
        ("effective", after.effective),
        ("inheritable", after.inheritable),
        ("ambient", after.ambient),
    ];
    if let Some((set, m)) = left.iter().find(|(_, m)| *m != 0) {
        return Err(ConfineError::Left(format!("{set} capabilities {m:#x}")));
    }
    if bounding_dropped && after.bounding != 0 {
        return Err(ConfineError::Left(format!(
            "bounding capabilities {:#x}",
            after.bounding
        )));
    }
    if !after.no_new_privs {
        return Err(ConfineError::Left("no no_new_privs".into()));
    }
    Ok(ConfineReport {
        uid: sys::geteuid(),
        gid: sys::getgid(),
        bounding_dropped,
        landlock: report,
    })
}

#[cfg(test)]
mod tests;
