//! Namespaces and identity: which namespaces the sandbox gets (in order, as
//! data), the uid/gid maps the launcher writes, and the credential change
//! the sandbox makes once the maps exist.
//!
//! A uid map alone does not take host root's power away: right after
//! `clone(CLONE_NEWUSER)` the child still holds the launcher's host uid, so
//! a root launcher's child could still write root-owned files. The child
//! therefore calls `setgroups`/`setresgid`/`setresuid` to the mapped ids
//! ([`Identity::become_worker`]) before touching anything.

use std::io;
use std::path::PathBuf;

use crate::report::Wall;
use crate::sys;

/// The namespaces every sandbox gets, in the order they are listed in
/// reports. All are created by one `clone` call; the user namespace comes
/// first because it owns the others. The network namespace is skipped with
/// `--net`.
pub const ORDERED_NAMESPACES: [(libc::c_int, Wall); 6] = [
    (libc::CLONE_NEWUSER, Wall::UserNamespace),
    (libc::CLONE_NEWNS, Wall::MountNamespace),
    (libc::CLONE_NEWPID, Wall::PidNamespace),
    (libc::CLONE_NEWNET, Wall::NetNamespace),
    (libc::CLONE_NEWIPC, Wall::IpcNamespace),
    (libc::CLONE_NEWUTS, Wall::UtsNamespace),
];

/// The `clone` flags for a sandbox (`net` = keep the host network).
pub fn clone_flags(net: bool) -> libc::c_ulong {
    ORDERED_NAMESPACES
        .iter()
        .filter(|(flag, _)| !(net && *flag == libc::CLONE_NEWNET))
        .fold(0, |acc, (flag, _)| acc | *flag as libc::c_ulong)
}

/// Who the worker is, inside and outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Host uid of the worker (never 0).
    pub uid: u32,
    /// Host gid of the worker.
    pub gid: u32,
    /// Whether the launcher is root (may map another uid, may keep
    /// `setgroups` allowed so the child can drop root's groups).
    pub launcher_is_root: bool,
}

impl Identity {
    /// The worker's identity: root launchers map `worker_uid` (default
    /// 65534, gid = uid); rootless launchers map the caller's own ids.
    pub fn for_launcher(worker_uid: Option<u32>) -> Result<Identity, NamespaceError> {
        let euid = sys::geteuid();
        if euid == 0 {
            let uid = worker_uid.unwrap_or(crate::policy::DEFAULT_WORKER_UID);
            if uid == 0 {
                return Err(NamespaceError::RootWorker);
            }
            Ok(Identity {
                uid,
                gid: uid,
                launcher_is_root: true,
            })
        } else {
            if let Some(w) = worker_uid {
                if w != euid {
                    return Err(NamespaceError::WorkerUidNeedsRoot {
                        asked: w,
                        uid: euid,
                    });
                }
            }
            Ok(Identity {
                uid: euid,
                gid: sys::getgid(),
                launcher_is_root: false,
            })
        }
    }

    /// The text of `/proc/<pid>/uid_map`: the worker's uid maps to itself.
    pub fn uid_map(&self) -> String {
        format!("{0} {0} 1\n", self.uid)
    }

    /// The text of `/proc/<pid>/gid_map`.
    pub fn gid_map(&self) -> String {
        format!("{0} {0} 1\n", self.gid)
    }

    /// Whether `setgroups` must be denied before writing the gid map
    /// (the kernel requires it of unprivileged writers).
    pub fn deny_setgroups(&self) -> bool {
        !self.launcher_is_root
    }

    /// Launcher side: writes the maps of the child `pid`.
    pub fn write_maps(&self, pid: libc::pid_t) -> Result<(), NamespaceError> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let write = |name: &str, text: &str| {
            std::fs::write(proc.join(name), text).map_err(|source| NamespaceError::Map {
                file: name.to_string(),
                text: text.trim().to_string(),
                source,
            })
        };
        if self.deny_setgroups() {
            write("setgroups", "deny")?;
        }
        write("uid_map", &self.uid_map())?;
        write("gid_map", &self.gid_map())
    }

    /// Sandbox side, after the maps are written: drop supplementary groups
    /// (root launchers) and switch every uid and gid to the worker's, so the
    /// process no longer holds the launcher's host credentials.
    pub fn become_worker(&self) -> Result<(), NamespaceError> {
        if self.launcher_is_root {
            sys::clear_groups().map_err(|source| NamespaceError::Credentials {
                step: "setgroups",
                source,
            })?;
        }
        sys::setresgid(self.gid).map_err(|source| NamespaceError::Credentials {
            step: "setresgid",
            source,
        })?;
        sys::setresuid(self.uid).map_err(|source| NamespaceError::Credentials {
            step: "setresuid",
            source,
        })?;
        Ok(())
    }
}

/// Errors of the namespace wall.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// `clone` refused to create the namespaces.
    #[error("clone with new user, mount, pid, net, ipc and uts namespaces failed: {source}{hint}")]
    Clone {
        /// The errno.
        source: io::Error,
        /// A hint about the likely cause.
        hint: &'static str,
    },
    /// Writing a map file failed.
    #[error("writing {file} ({text}): {source}")]
    Map {
        /// `uid_map`, `gid_map` or `setgroups`.
        file: String,
        /// What was written.
        text: String,
        /// The errno.
        source: io::Error,
    },
    /// Changing credentials inside failed.
    #[error("{step}: {source}")]
    Credentials {
        /// Which call.
        step: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// A root launcher was asked for worker uid 0.
    #[error("the worker never runs as host uid 0")]
    RootWorker,
    /// A rootless launcher was asked for another uid.
    #[error(
        "--worker-uid {asked} needs root; a rootless launcher runs the worker as its own uid {uid}"
    )]
    WorkerUidNeedsRoot {
        /// The uid asked for.
        asked: u32,
        /// The caller's uid.
        uid: u32,
    },
}

impl NamespaceError {
    /// Wraps a failed clone with a hint for the usual causes.
    pub fn clone_failed(source: io::Error) -> NamespaceError {
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) => {
                " (unprivileged user namespaces may be disabled: kernel.unprivileged_userns_clone, \
                 an AppArmor or SELinux policy, or a seccomp filter around this process)"
            }
            Some(libc::ENOSPC) => " (user.max_user_namespaces or another namespace count reached)",
            Some(libc::EINVAL) => " (this kernel lacks one of the namespace types)",
            Some(libc::EUSERS) => " (too many nested user namespaces)",
            _ => "",
        };
        NamespaceError::Clone { source, hint }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_include_every_namespace_unless_net() {
        let all = clone_flags(false);
        for (flag, _) in ORDERED_NAMESPACES {
            assert_ne!(all & flag as libc::c_ulong, 0);
        }
        let with_net = clone_flags(true);
        assert_eq!(with_net & libc::CLONE_NEWNET as libc::c_ulong, 0);
        assert_ne!(with_net & libc::CLONE_NEWUSER as libc::c_ulong, 0);
        assert_eq!(
            ORDERED_NAMESPACES[0].0,
            libc::CLONE_NEWUSER,
            "the user namespace owns the others"
        );
    }

    #[test]
    fn maps_are_one_to_one_for_the_worker() {
        let root = Identity {
            uid: 65534,
            gid: 65534,
            launcher_is_root: true,
        };
        assert_eq!(root.uid_map(), "65534 65534 1\n");
        assert_eq!(root.gid_map(), "65534 65534 1\n");
        assert!(!root.deny_setgroups());
        let user = Identity {
            uid: 1000,
            gid: 1001,
            launcher_is_root: false,
        };
        assert_eq!(user.gid_map(), "1001 1001 1\n");
        assert!(user.deny_setgroups());
    }

    #[test]
    fn identity_never_maps_root() {
        if sys::geteuid() == 0 {
            let id = Identity::for_launcher(None).unwrap();
            assert_eq!(id.uid, 65534);
            assert!(id.launcher_is_root);
            assert_eq!(Identity::for_launcher(Some(1234)).unwrap().uid, 1234);
            assert!(matches!(
                Identity::for_launcher(Some(0)),
                Err(NamespaceError::RootWorker)
            ));
        } else {
            let id = Identity::for_launcher(None).unwrap();
            assert_eq!(id.uid, sys::geteuid());
            assert!(matches!(
                Identity::for_launcher(Some(sys::geteuid() + 1)),
                Err(NamespaceError::WorkerUidNeedsRoot { .. })
            ));
        }
    }
}
