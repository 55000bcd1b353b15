//! What this kernel and this user can enforce, probed for real (a forked
//! child tries each namespace; Landlock, seccomp and cgroups are asked
//! directly). Used by `nodecell check`.

use std::path::PathBuf;

use serde::Serialize;

use crate::cgroup::{self, Version};
use crate::sys;

/// One probed feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Feature {
    /// Short name (`user namespaces`, `landlock`, `cgroup memory`, ...).
    pub name: String,
    /// Whether it works here.
    pub available: bool,
    /// What was found (version, path, errno).
    pub detail: String,
    /// Whether the default policy (`nodecell run` without flags) needs it.
    pub default_wall: bool,
}

impl Feature {
    fn new(name: &str, available: bool, detail: impl Into<String>, default_wall: bool) -> Feature {
        Feature {
            name: name.to_string(),
            available,
            detail: detail.into(),
            default_wall,
        }
    }
}

/// The effective uid of the calling process (who the probe ran as).
pub fn effective_uid() -> u32 {
    sys::geteuid()
}

/// Probes everything. Never panics; each failure is a feature with
/// `available: false` and the reason.
pub fn probe() -> Vec<Feature> {
    let mut out = Vec::new();
    let euid = sys::geteuid();
    out.push(Feature::new(
        "running as",
        true,
        if euid == 0 {
            format!(
                "root: each cell runs as its own host uid leased from {} (--uid-pool, --worker-uid)",
                crate::uids::DEFAULT_POOL
            )
        } else {
            format!("uid {euid} (rootless): workers run as uid {euid}")
        },
        false,
    ));

    let userns = try_unshare(libc::CLONE_NEWUSER);
    out.push(Feature::new(
        "user namespaces",
        userns.is_ok(),
        explain(&userns, "unshare(CLONE_NEWUSER)"),
        true,
    ));
    for (flag, name) in [
        (libc::CLONE_NEWNS, "mount namespace"),
        (libc::CLONE_NEWPID, "pid namespace"),
        (libc::CLONE_NEWNET, "net namespace"),
        (libc::CLONE_NEWIPC, "ipc namespace"),
        (libc::CLONE_NEWUTS, "uts namespace"),
        (libc::CLONE_NEWCGROUP, "cgroup namespace"),
    ] {
        let r = try_unshare(libc::CLONE_NEWUSER | flag);
        out.push(Feature::new(
            name,
            r.is_ok(),
            explain(&r, "inside a new user namespace"),
            true,
        ));
    }

    match sys::landlock_abi() {
        Ok(abi) if abi >= 1 => {
            out.push(Feature::new(
                "landlock",
                true,
                format!(
                    "ABI {abi}{}",
                    if abi > crate::landlock::KNOWN_ABI {
                        format!(" (nodecell uses {})", crate::landlock::KNOWN_ABI)
                    } else {
                        String::new()
                    }
                ),
                true,
            ));
            let scoped = crate::landlock::abi_has_scope(abi);
            out.push(Feature::new(
                "landlock scoping",
                scoped,
                if scoped {
                    "abstract unix sockets and signals (ABI 6+)".to_string()
                } else {
                    format!("needs ABI 6, have {abi}")
                },
                false,
            ));
        }
        other => {
            let why = match crate::landlock::requested_abi() {
                Err(why) => why,
                Ok(_) => format!("{other:?}"),
            };
            out.push(Feature::new("landlock", false, why, true));
            out.push(Feature::new(
                "landlock scoping",
                false,
                "no Landlock",
                false,
            ));
        }
    }

    out.extend(identity_features(euid));
    out.push(memfd_feature(euid == 0));
    out.push(pid1_feature());
    let ov = crate::overlay::probe();
    out.push(Feature::new(
        "overlay",
        ov.is_ok(),
        match ov {
            Ok(()) => "overlayfs mounts in a user namespace (--overlay)".to_string(),
            Err(e) => e,
        },
        false,
    ));
    out.push(seccomp_feature());
    let nnp = sys::no_new_privs();
    out.push(Feature::new(
        "no_new_privs",
        nnp.is_ok(),
        match nnp {
            Ok(true) => "supported (already set on this process)".to_string(),
            Ok(false) => "supported".to_string(),
            Err(e) => e.to_string(),
        },
        true,
    ));
    let ms = sys::raw_syscall3(libc::SYS_mount_setattr, usize::MAX, 0, 0);
    let has_ms = ms.err() != Some(libc::ENOSYS);
    out.push(Feature::new(
        "mount_setattr",
        has_ms,
        if has_ms {
            "recursive read-only binds"
        } else {
            "missing (Linux < 5.12): bind remounts are used instead"
        },
        false,
    ));
    out.extend(cgroup_features());
    out
}

fn explain(r: &Result<(), i32>, what: &str) -> String {
    match r {
        Ok(()) => format!("works ({what})"),
        Err(e) => format!("{what}: {}", std::io::Error::from_raw_os_error(*e)),
    }
}

/// Tries `unshare(flags)` in a forked child; `Err(errno)` on failure.
fn try_unshare(flags: libc::c_int) -> Result<(), i32> {
    // SAFETY: the child only calls unshare and _exit (async-signal-safe),
    // so forking from a multi-threaded caller is fine too.
    let pid = match unsafe { sys::fork() } {
        Ok(0) => {
            let code = match sys::unshare(flags) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(255).clamp(1, 255),
            };
            sys::exit(code)
        }
        Ok(pid) => pid,
        Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EAGAIN)),
    };
    match sys::wait(pid, 0) {
        Ok(Some((_, sys::WaitStatus::Exited(0)))) => Ok(()),
        Ok(Some((_, sys::WaitStatus::Exited(errno)))) => Err(errno),
        _ => Err(libc::ECHILD),
    }
}

/// Per-cell uids (root) and supplementary groups (rootless).
fn identity_features(euid: u32) -> Vec<Feature> {
    if euid == 0 {
        let pool = crate::uids::DEFAULT_POOL;
        let r = crate::uids::check_host_files(&pool);
        vec![
            Feature::new(
                "per-cell uids",
                r.is_ok(),
                match r {
                    Ok(()) => format!(
                        "pool {pool} is free of host accounts and subordinate ranges; leases in {}",
                        crate::uids::LEASE_FILE
                    ),
                    Err(e) => e.to_string(),
                },
                true,
            ),
            Feature::new(
                "supplementary groups",
                true,
                "dropped (root launcher)",
                true,
            ),
        ]
    } else {
        let gid = sys::getgid();
        let extra: Vec<u32> = sys::groups()
            .unwrap_or_default()
            .into_iter()
            .filter(|&g| g != gid)
            .collect();
        vec![
            Feature::new(
                "per-cell uids",
                false,
                format!("rootless: every cell runs as uid {euid} (the kernel maps only the caller's own uid without a setuid helper)"),
                false,
            ),
            Feature::new(
                "supplementary groups",
                extra.is_empty(),
                if extra.is_empty() {
                    "none to drop".to_string()
                } else {
                    format!("rootless: groups {extra:?} cannot be dropped (needs CAP_SETGID over the host's user namespace); they stay in effect for files inside the binds")
                },
                true,
            ),
        ]
    }
}

/// Whether memfds can be kept from being executed.
fn memfd_feature(root: bool) -> Feature {
    match crate::memfd::MemfdPlan::for_launcher(root) {
        crate::memfd::MemfdPlan::Sysctl => Feature::new(
            "memfd exec",
            true,
            "vm.memfd_noexec=2 in each sandbox's pid namespace, plus seccomp",
            true,
        ),
        crate::memfd::MemfdPlan::SealRequired => Feature::new(
            "memfd exec",
            true,
            "rootless: seccomp requires MFD_NOEXEC_SEAL (only host root may set vm.memfd_noexec); libraries must create sealed memfds",
            true,
        ),
        crate::memfd::MemfdPlan::Missing(why) => Feature::new("memfd exec", false, why, true),
    }
}

/// Whether the init can hide its argv and environment.
fn pid1_feature() -> Feature {
    let ok = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| crate::pid1::string_areas(&s))
        .is_some();
    Feature::new(
        "pid 1 hiding",
        ok,
        if ok {
            "not dumpable; argv and environment scrubbed"
        } else {
            "/proc/self/stat has no argv/environment addresses (Linux < 3.5)"
        },
        true,
    )
}

fn seccomp_feature() -> Feature {
    // PR_GET_SECCOMP fails with EINVAL on kernels without seccomp.
    let mode = sys::raw_syscall3(libc::SYS_prctl, libc::PR_GET_SECCOMP as usize, 0, 0);
    const SECCOMP_GET_ACTION_AVAIL: usize = 2;
    let errno_action: u32 = 0x0005_0000;
    let avail = sys::raw_syscall3(
        libc::SYS_seccomp,
        SECCOMP_GET_ACTION_AVAIL,
        0,
        &errno_action as *const u32 as usize,
    );
    match (mode, avail) {
        (Ok(m), Ok(_)) => Feature::new(
            "seccomp filters",
            true,
            if m == 2 {
                "supported (this process is already filtered)"
            } else {
                "supported, SECCOMP_RET_ERRNO available"
            },
            true,
        ),
        (Err(e), _) | (_, Err(e)) => Feature::new(
            "seccomp filters",
            false,
            std::io::Error::from_raw_os_error(e).to_string(),
            true,
        ),
    }
}

fn cgroup_features() -> Vec<Feature> {
    let mut out = Vec::new();
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| cgroup::parse_proc_cgroup(&t))
        .unwrap_or_default();
    match cgroup::version() {
        Version::V2 => {
            let path = own.get("").cloned().unwrap_or_else(|| "/".into());
            let dir = PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
            let enabled =
                std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            let available =
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            out.push(Feature::new(
                "cgroup",
                true,
                format!("v2, own cgroup {}", dir.display()),
                false,
            ));
            let writable = sys::access(&dir, libc::W_OK).is_ok();
            for c in ["memory", "pids", "cpu"] {
                let in_subtree = enabled.split_whitespace().any(|x| x == c);
                let can_enable = available.split_whitespace().any(|x| x == c) && writable;
                let ok = writable && (in_subtree || can_enable);
                let detail = if ok {
                    format!("children of {} can be limited", dir.display())
                } else if !writable {
                    format!(
                        "{} is not writable by this user (needs a delegated cgroup)",
                        dir.display()
                    )
                } else {
                    format!("not available in {}/cgroup.controllers", dir.display())
                };
                out.push(Feature::new(&format!("cgroup {c}"), ok, detail, false));
            }
        }
        Version::V1 => {
            let v2_note =
                if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
                    let ctl = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
                        .unwrap_or_default();
                    if ctl.trim().is_empty() {
                        " (hybrid: cgroup2 has no controllers)".to_string()
                    } else {
                        format!(" (hybrid: cgroup2 has {})", ctl.trim())
                    }
                } else {
                    String::new()
                };
            out.push(Feature::new(
                "cgroup",
                true,
                format!("v1 hierarchies{v2_note}"),
                false,
            ));
            let v1 = cgroups_rs::fs::hierarchies::V1::new();
            for (c, ctl) in [
                ("memory", cgroups_rs::fs::Controllers::Mem),
                ("pids", cgroups_rs::fs::Controllers::Pids),
                ("cpu", cgroups_rs::fs::Controllers::Cpu),
            ] {
                let Some((mount, root)) = v1.get_mount_point(ctl) else {
                    out.push(Feature::new(
                        &format!("cgroup {c}"),
                        false,
                        "no v1 hierarchy has this controller",
                        false,
                    ));
                    continue;
                };
                let own_path = own.get(c).cloned().unwrap_or_else(|| "/".into());
                let dir = mount.join(cgroup::child_path(&own_path, &root, ""));
                let writable = sys::access(&dir, libc::W_OK).is_ok();
                out.push(Feature::new(
                    &format!("cgroup {c}"),
                    writable,
                    if writable {
                        format!("v1, children of {}", dir.display())
                    } else {
                        format!(
                            "v1, {} is not writable by this user (needs a delegated cgroup)",
                            dir.display()
                        )
                    },
                    false,
                ));
            }
        }
    }
    out
}

/// Whether every feature the default policy needs is available.
pub fn default_policy_ok(features: &[Feature]) -> bool {
    features
        .iter()
        .filter(|f| f.default_wall)
        .all(|f| f.available)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lists_every_wall_with_a_detail() {
        let f = probe();
        for name in [
            "user namespaces",
            "cgroup namespace",
            "memfd exec",
            "pid 1 hiding",
            "per-cell uids",
            "supplementary groups",
            "mount namespace",
            "pid namespace",
            "net namespace",
            "ipc namespace",
            "uts namespace",
            "landlock",
            "seccomp filters",
            "no_new_privs",
            "cgroup",
        ] {
            let item = f
                .iter()
                .find(|x| x.name == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert!(!item.detail.is_empty(), "{name}");
        }
        // The default policy needs no cgroup limits (the namespace it needs).
        assert!(f
            .iter()
            .filter(|x| x.name.starts_with("cgroup") && x.name != "cgroup namespace")
            .all(|x| !x.default_wall));
        assert!(f
            .iter()
            .any(|x| x.name == "cgroup namespace" && x.default_wall));
    }

    #[test]
    fn this_machine_can_run_the_default_policy() {
        // The development machine (Linux 6.18, Landlock 7, user namespaces on).
        let f = probe();
        assert!(default_policy_ok(&f), "{f:#?}");
    }
}
