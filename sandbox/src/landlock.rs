//! The Landlock wall: filesystem rules matching the mounts (read-only and
//! executable system paths, read-only `/etc` and `/proc`, writable but not
//! executable `/tmp`, `/dev/shm` and `--rw` binds, device nodes), using the
//! best ABI the kernel offers, plus abstract-unix-socket and signal scoping
//! where the ABI has it (6+).
//!
//! A ruleset that is not `FullyEnforced` for the requested ABI counts as a
//! missing wall.

use std::path::PathBuf;

use ::landlock::{
    Access as _, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

use crate::mounts::Access;
use crate::sys;

/// Highest Landlock ABI this build knows how to ask for.
pub const KNOWN_ABI: i32 = 10;

/// The ABI the sandbox asks for: the kernel's own, capped at [`KNOWN_ABI`].
/// `Err(reason)` when the kernel has no Landlock.
pub fn requested_abi() -> Result<i32, String> {
    match sys::landlock_abi() {
        Ok(v) if v >= 1 => Ok(v.min(KNOWN_ABI)),
        Ok(v) => Err(format!("the kernel reports Landlock ABI {v}")),
        Err(libc::EOPNOTSUPP) => {
            Err("Landlock is built but disabled at boot (add `landlock` to lsm=)".into())
        }
        Err(libc::ENOSYS) => Err(
            "this kernel has no Landlock (needs Linux 5.13+ with CONFIG_SECURITY_LANDLOCK)".into(),
        ),
        Err(e) => Err(format!(
            "landlock_create_ruleset: {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
}

/// Whether an ABI has scoping (abstract unix sockets and signals).
pub fn abi_has_scope(abi: i32) -> bool {
    abi >= 6
}

/// The access rights for a use of a path under `abi`. Only rights of that
/// ABI are returned, so the kernel enforces every one of them.
pub fn rights(access: Access, dir: bool, abi: ABI) -> BitFlags<AccessFs> {
    let all = AccessFs::from_all(abi);
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let unix = AccessFs::ResolveUnix;
    let r = match access {
        Access::ReadExec => read | AccessFs::Execute | unix,
        Access::Read => read | unix,
        Access::ReadWrite => {
            all & !(AccessFs::Execute
                | AccessFs::MakeChar
                | AccessFs::MakeBlock
                | AccessFs::IoctlDev)
        }
        Access::Device => {
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev
        }
        Access::List => BitFlags::from(AccessFs::ReadDir),
    };
    let r = r & all;
    if dir {
        r
    } else {
        r & AccessFs::from_file(abi)
    }
}

/// What Landlock enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockReport {
    /// The ABI asked for.
    pub abi: i32,
    /// Whether the scoping part was applied.
    pub scoped: bool,
    /// Number of path rules.
    pub rules: usize,
}

/// Builds the ruleset for `rules` and restricts the calling process (and,
/// through inheritance, everything it starts). Paths that do not exist
/// inside are skipped. Sets `no_new_privs` as Landlock requires.
pub fn apply(
    rules: &[(PathBuf, Access, bool)],
    abi_n: i32,
) -> Result<LandlockReport, LandlockError> {
    let abi = ABI::from(abi_n);
    let handled = AccessFs::from_all(abi);
    let mut ruleset = Ruleset::default()
        .handle_access(handled)
        .map_err(|e| LandlockError::Ruleset(e.to_string()))?;
    let scoped = abi_has_scope(abi_n);
    if scoped {
        ruleset = ruleset
            .scope(Scope::from_all(abi))
            .map_err(|e| LandlockError::Ruleset(e.to_string()))?;
    }
    let mut created = ruleset
        .create()
        .map_err(|e| LandlockError::Ruleset(e.to_string()))?;
    let mut count = 0;
    for (path, access, _) in rules {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let fd = PathFd::new(path).map_err(|e| LandlockError::Path {
            path: path.clone(),
            why: e.to_string(),
        })?;
        created = created
            .add_rule(PathBeneath::new(fd, rights(*access, meta.is_dir(), abi)))
            .map_err(|e| LandlockError::Path {
                path: path.clone(),
                why: e.to_string(),
            })?;
        count += 1;
    }
    let status = created
        .restrict_self()
        .map_err(|e| LandlockError::Ruleset(e.to_string()))?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(LandlockReport {
            abi: abi_n,
            scoped,
            rules: count,
        }),
        RulesetStatus::PartiallyEnforced => Err(LandlockError::Partial { abi: abi_n }),
        RulesetStatus::NotEnforced => Err(LandlockError::NotEnforced),
    }
}

/// Errors of the Landlock wall.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LandlockError {
    /// The kernel has no usable Landlock.
    #[error("{0}")]
    Unavailable(String),
    /// Creating or applying the ruleset failed.
    #[error("{0}")]
    Ruleset(String),
    /// A rule could not be added for a path.
    #[error("rule for {path}: {why}")]
    Path {
        /// Path inside the sandbox.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Only part of the requested rights are enforced.
    #[error("only partially enforced for ABI {abi}")]
    Partial {
        /// The ABI asked for.
        abi: i32,
    },
    /// Nothing is enforced.
    #[error("not enforced by this kernel")]
    NotEnforced,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_rights_never_write_or_exec_when_not_asked() {
        let abi = ABI::V7;
        let ro = rights(Access::Read, true, abi);
        assert!(ro.contains(AccessFs::ReadFile | AccessFs::ReadDir));
        assert!(!ro.intersects(
            AccessFs::WriteFile | AccessFs::Execute | AccessFs::Truncate | AccessFs::MakeReg
        ));
        let rx = rights(Access::ReadExec, true, abi);
        assert!(rx.contains(AccessFs::Execute));
        assert!(!rx.intersects(AccessFs::WriteFile | AccessFs::RemoveFile));
    }

    #[test]
    fn writable_paths_cannot_exec_or_make_devices() {
        let rw = rights(Access::ReadWrite, true, ABI::V7);
        assert!(rw.contains(
            AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate | AccessFs::Refer
        ));
        assert!(!rw.intersects(
            AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock | AccessFs::IoctlDev
        ));
    }

    #[test]
    fn rights_stay_within_the_abi() {
        // Truncate arrived in ABI 3, IoctlDev in 5, ResolveUnix in 9.
        let dev_v1 = rights(Access::Device, false, ABI::V1);
        assert!(!dev_v1.intersects(AccessFs::Truncate | AccessFs::IoctlDev));
        assert!(rights(Access::Device, false, ABI::V5).contains(AccessFs::IoctlDev));
        assert!(!rights(Access::Read, true, ABI::V7).contains(AccessFs::ResolveUnix));
        assert!(rights(Access::Read, true, ABI::V9).contains(AccessFs::ResolveUnix));
        for a in [
            Access::Read,
            Access::ReadExec,
            Access::ReadWrite,
            Access::Device,
            Access::List,
        ] {
            for abi in [ABI::V1, ABI::V3, ABI::V6, ABI::V7, ABI::V10] {
                assert_eq!(
                    rights(a, true, abi) & !AccessFs::from_all(abi),
                    BitFlags::EMPTY
                );
            }
        }
    }

    #[test]
    fn listing_grants_nothing_but_readdir() {
        assert_eq!(
            rights(Access::List, true, ABI::V7),
            BitFlags::from(AccessFs::ReadDir)
        );
    }

    #[test]
    fn file_rules_only_carry_file_rights() {
        let f = rights(Access::ReadWrite, false, ABI::V7);
        assert_eq!(f & !AccessFs::from_file(ABI::V7), BitFlags::EMPTY);
        assert!(f.contains(AccessFs::WriteFile));
    }

    #[test]
    fn scoping_needs_abi_6() {
        assert!(!abi_has_scope(5));
        assert!(abi_has_scope(6));
        assert!(abi_has_scope(7));
    }

    #[test]
    fn the_kernel_abi_is_read() {
        // This machine's kernel has Landlock; the value is capped at what we know.
        match requested_abi() {
            Ok(v) => assert!((1..=KNOWN_ABI).contains(&v)),
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
