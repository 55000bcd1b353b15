//! Namespaces and identity: which namespaces the sandbox gets (in order, as
//! data), who the worker is on the host (a uid leased per cell from a pool
//! when the launcher is root, see [`crate::uids`]), the uid/gid maps the
//! launcher writes, and the credential change the sandbox makes once the
//! maps exist.
//!
//! The cgroup namespace is not created by `clone`: the init enters it with
//! `unshare` once the launcher has moved it into its cgroup, so the
//! namespace's root is the sandbox's own cgroup and `/proc/self/cgroup`
//! shows `/` ([`enter_cgroup_namespace`]).
//!
//! A uid map alone does not take host root's power away: right after
//! `clone(CLONE_NEWUSER)` the child still holds the launcher's host uid, so
//! a root launcher's child could still write root-owned files. The child
//! therefore calls `setgroups`/`setresgid`/`setresuid` to the mapped ids
//! ([`Identity::become_worker`]) before touching anything.

use std::io;
use std::path::PathBuf;

use crate::policy::Policy;
use crate::report::Wall;
use crate::sys;
use crate::uids::{self, UidError, UidLease};

/// The namespaces every sandbox gets, in the order they are listed in
/// reports. The launcher's one `clone` call creates all but the network
/// namespace, which a helper of the init builds right after
/// ([`launcher_clone_flags`], [`crate::netns`]);
/// the user namespace comes first because it owns the others. The network
/// namespace is skipped with `--net`.
pub const ORDERED_NAMESPACES: [(libc::c_int, Wall); 6] = [
    (libc::CLONE_NEWUSER, Wall::UserNamespace),
    (libc::CLONE_NEWNS, Wall::MountNamespace),
    (libc::CLONE_NEWPID, Wall::PidNamespace),
    (libc::CLONE_NEWNET, Wall::NetNamespace),
    (libc::CLONE_NEWIPC, Wall::IpcNamespace),
    (libc::CLONE_NEWUTS, Wall::UtsNamespace),
];

/// The namespaces a sandbox gets as `clone` flags (`net` = keep the host
/// network).
pub fn clone_flags(net: bool) -> libc::c_ulong {
    ORDERED_NAMESPACES
        .iter()
        .filter(|(flag, _)| !(net && *flag == libc::CLONE_NEWNET))
        .fold(0, |acc, (flag, _)| acc | *flag as libc::c_ulong)
}

/// The flags the launcher's `clone` uses: every namespace of
/// [`clone_flags`] but the network one, which a helper of the init builds
/// beside it ([`crate::netns`]): building a network namespace is most of
/// what `clone` into six namespaces costs (~0.6 of 0.7 ms), and done beside
/// the init it overlaps the init's own work.
pub fn launcher_clone_flags() -> libc::c_ulong {
    clone_flags(true)
}

/// Who the worker is, inside and outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Host uid of the worker (never 0); the first of `count` with
    /// `--uid-range`.
    pub uid: u32,
    /// Host gid of the worker.
    pub gid: u32,
    /// Number of consecutive uids (and gids) mapped into the sandbox, each
    /// to itself (`--uid-range`; 1 otherwise).
    pub count: u32,
    /// Whether the launcher is root (may map other uids, may keep
    /// `setgroups` allowed so the child can drop root's groups).
    pub launcher_is_root: bool,
}

impl Identity {
    /// The worker's identity for `policy`. Root launchers lease
    /// `policy.uid_range` consecutive ids from the pool (`--uid-pool`, default
    /// [`uids::DEFAULT_POOL`]), or use `--worker-uid` as given; rootless
    /// launchers map the caller's own ids (one uid). The lease must be kept
    /// until the sandbox is gone.
    pub fn for_launcher(policy: &Policy) -> Result<(Identity, UidLease), NamespaceError> {
        let count = policy.uid_range.max(1);
        let euid = sys::geteuid();
        if euid == 0 {
            let lease = match policy.worker_uid {
                Some(0) => return Err(NamespaceError::RootWorker),
                Some(uid) => {
                    if uid
                        .checked_add(count - 1)
                        .is_none_or(|last| last >= u32::MAX - 1)
                    {
                        return Err(NamespaceError::RangeOverflow { uid, count });
                    }
                    UidLease::explicit(uid, count)
                }
                None => uids::lease(&policy.uid_pool.unwrap_or(uids::DEFAULT_POOL), count)?,
            };
            Ok((
                Identity {
                    uid: lease.first,
                    gid: lease.first,
                    count,
                    launcher_is_root: true,
                },
                lease,
            ))
        } else {
            if count > 1 {
                return Err(NamespaceError::RangeNeedsRoot { count });
            }
            if let Some(w) = policy.worker_uid {
                if w != euid {
                    return Err(NamespaceError::WorkerUidNeedsRoot {
                        asked: w,
                        uid: euid,
                    });
                }
            }
            if let Some(pool) = policy.uid_pool {
                return Err(NamespaceError::PoolNeedsRoot {
                    pool: pool.to_string(),
                });
            }
            let gid = sys::getgid();
            Ok((
                Identity {
                    uid: euid,
                    gid,
                    count: 1,
                    launcher_is_root: false,
                },
                UidLease::explicit(euid, 1),
            ))
        }
    }

    /// How the identity reads in reports.
    pub fn describe(&self) -> String {
        let who = if self.count > 1 {
            format!(
                "host uids {}-{} (gids the same)",
                self.uid,
                self.uid + (self.count - 1)
            )
        } else {
            format!("host uid {} gid {}", self.uid, self.gid)
        };
        if self.launcher_is_root {
            format!("worker runs as {who}, this cell's own")
        } else {
            format!("worker runs as {who} (the caller's own ids)")
        }
    }

    /// The text of `/proc/<pid>/uid_map`: the worker's uid maps to itself.
    pub fn uid_map(&self) -> String {
        format!("{0} {0} {1}\n", self.uid, self.count)
    }

    /// The text of `/proc/<pid>/gid_map`.
    pub fn gid_map(&self) -> String {
        format!("{0} {0} {1}\n", self.gid, self.count)
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

/// Enters a new cgroup namespace rooted at the caller's current cgroups.
pub fn enter_cgroup_namespace() -> Result<(), NamespaceError> {
    sys::unshare(libc::CLONE_NEWCGROUP).map_err(|source| NamespaceError::Credentials {
        step: "unshare(CLONE_NEWCGROUP)",
        source,
    })
}

/// Errors of the namespace wall.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// `clone` refused to create the namespaces.
    #[error("clone with new user, mount, pid, ipc and uts namespaces failed: {source}{hint}")]
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
    /// No uid could be leased for the cell.
    #[error(transparent)]
    Lease(#[from] UidError),
    /// `--worker-uid` plus `--uid-range` runs past the largest uid.
    #[error("--worker-uid {uid} with --uid-range {count} runs past the largest valid uid")]
    RangeOverflow {
        /// The first uid.
        uid: u32,
        /// The range asked for.
        count: u32,
    },
    /// A rootless launcher was asked for several uids.
    #[error("--uid-range {count} needs root; a rootless launcher maps only its own uid (one uid; the zygote's workers then share it and are kept apart by Landlock, pid-1 style non-dumpable workers and signal scoping)")]
    RangeNeedsRoot {
        /// The range asked for.
        count: u32,
    },
    /// A rootless launcher was given a pool.
    #[error("--uid-pool {pool} needs root; a rootless launcher runs the worker as its own uid")]
    PoolNeedsRoot {
        /// The pool as given.
        pool: String,
    },
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
        // The launcher leaves the network namespace to the init.
        assert_eq!(launcher_clone_flags(), with_net);
        assert_eq!(
            ORDERED_NAMESPACES[0].0,
            libc::CLONE_NEWUSER,
            "the user namespace owns the others"
        );
    }

    #[test]
    fn maps_are_one_to_one_for_the_worker() {
        let root = Identity {
            uid: 1879048200,
            gid: 1879048200,
            count: 1,
            launcher_is_root: true,
        };
        assert_eq!(root.uid_map(), "1879048200 1879048200 1\n");
        assert_eq!(root.gid_map(), "1879048200 1879048200 1\n");
        assert!(!root.deny_setgroups());
        let zygote = Identity {
            count: 8,
            ..root.clone()
        };
        assert_eq!(zygote.uid_map(), "1879048200 1879048200 8\n");
        assert!(zygote.describe().contains("1879048200-1879048207"));
        let user = Identity {
            uid: 1000,
            gid: 1001,
            count: 1,
            launcher_is_root: false,
        };
        assert_eq!(user.gid_map(), "1001 1001 1\n");
        assert!(user.deny_setgroups());
    }

    #[test]
    fn identity_never_maps_root_and_cells_get_their_own() {
        if sys::geteuid() == 0 {
            let (a, la) = Identity::for_launcher(&Policy::new()).unwrap();
            let (b, lb) = Identity::for_launcher(&Policy::new()).unwrap();
            let pool = uids::DEFAULT_POOL;
            for id in [&a, &b] {
                assert!(id.launcher_is_root);
                assert!((pool.first..=pool.last()).contains(&id.uid), "{id:?}");
                assert_eq!(id.uid, id.gid);
            }
            assert_ne!(a.uid, b.uid, "two running cells share a uid");
            drop((la, lb));
            let (c, _l) = Identity::for_launcher(&Policy::new().worker_uid(1234)).unwrap();
            assert_eq!(c.uid, 1234);
            assert!(matches!(
                Identity::for_launcher(&Policy::new().worker_uid(0)),
                Err(NamespaceError::RootWorker)
            ));
            let (z, _l) = Identity::for_launcher(&Policy::new().uid_range(8)).unwrap();
            assert_eq!((z.count, (z.uid - pool.first) % 8), (8, 0));
        } else {
            let (id, _l) = Identity::for_launcher(&Policy::new()).unwrap();
            assert_eq!(id.uid, sys::geteuid());
            assert!(matches!(
                Identity::for_launcher(&Policy::new().worker_uid(sys::geteuid() + 1)),
                Err(NamespaceError::WorkerUidNeedsRoot { .. })
            ));
            assert!(matches!(
                Identity::for_launcher(&Policy::new().uid_range(2)),
                Err(NamespaceError::RangeNeedsRoot { .. })
            ));
        }
    }
}
