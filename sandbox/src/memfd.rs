//! The memfd wall: no program runs from a memory file the worker wrote.
//!
//! Landlock does not cover memfds (they live on an internal mount), so a
//! worker could otherwise write a binary into a memfd and `execveat` it or
//! exec `/proc/self/fd/N`. Two layers close that:
//!
//! * **The kernel** (root launchers, Linux 6.3+): the sandbox's pid
//!   namespace gets `vm.memfd_noexec=2`, so every memfd created inside is
//!   sealed non-executable (`MFD_NOEXEC_SEAL` is applied when the caller
//!   passes neither flag, and `MFD_EXEC` is refused). The setting belongs to
//!   the sandbox's own pid namespace; the host's is never touched. Only host
//!   root may write it (the sysctl file's permission check is against the
//!   host's uid 0), so the init sets it before it drops root's ids.
//! * **seccomp**: `MFD_EXEC` and `execveat(fd, "", AT_EMPTY_PATH)` are
//!   always refused; where the sysctl is not in force (rootless launchers)
//!   `memfd_create` without `MFD_NOEXEC_SEAL` is refused too, so a library
//!   that creates memfds must ask for sealed ones (nodecell's own channel
//!   does).
//!
//! Before Linux 6.3 neither `vm.memfd_noexec` nor `MFD_NOEXEC_SEAL` exists:
//! the wall is reported missing.

use std::path::Path;

use crate::seccomp::FilterOptions;

/// The per-pid-namespace sysctl.
pub const SYSCTL: &str = "/proc/sys/vm/memfd_noexec";

/// How this launch keeps memfds from being executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemfdPlan {
    /// `vm.memfd_noexec=2` in the sandbox's pid namespace (root launcher).
    Sysctl,
    /// seccomp refuses memfds without `MFD_NOEXEC_SEAL` (rootless launcher).
    SealRequired,
    /// The kernel has neither; why.
    Missing(String),
}

impl MemfdPlan {
    /// The plan for a launcher that is (`root`) or is not host root.
    pub fn for_launcher(root: bool) -> MemfdPlan {
        MemfdPlan::choose(Path::new(SYSCTL).exists(), root)
    }

    /// The plan given whether the kernel has the sysctl (6.3+).
    pub fn choose(kernel_has_sysctl: bool, root: bool) -> MemfdPlan {
        match (kernel_has_sysctl, root) {
            (true, true) => MemfdPlan::Sysctl,
            (true, false) => MemfdPlan::SealRequired,
            (false, _) => MemfdPlan::Missing(
                "this kernel (before Linux 6.3) has neither vm.memfd_noexec nor MFD_NOEXEC_SEAL: \
                 a memfd the worker writes can be executed"
                    .into(),
            ),
        }
    }

    /// What the seccomp filter must add for this plan.
    pub fn filter_options(&self) -> FilterOptions {
        FilterOptions {
            require_noexec_memfd: *self == MemfdPlan::SealRequired,
        }
    }

    /// Runs in the sandbox's init while it still has host root's ids (root
    /// launchers) and the new pid namespace: sets and checks the sysctl.
    /// Returns the report detail, or why the wall is missing.
    pub fn apply(&self) -> Result<String, String> {
        match self {
            MemfdPlan::Sysctl => {
                std::fs::write(SYSCTL, "2")
                    .map_err(|e| format!("writing 2 to {SYSCTL} in the sandbox's pid namespace: {e}"))?;
                let now = std::fs::read_to_string(SYSCTL)
                    .map_err(|e| format!("reading {SYSCTL}: {e}"))?;
                if now.trim() != "2" {
                    return Err(format!("{SYSCTL} reads {} after writing 2", now.trim()));
                }
                Ok("vm.memfd_noexec=2 in the sandbox's pid namespace; MFD_EXEC and fexecve refused".into())
            }
            MemfdPlan::SealRequired => Ok(
                "seccomp requires MFD_NOEXEC_SEAL (only host root may set vm.memfd_noexec); MFD_EXEC and fexecve refused"
                    .into(),
            ),
            MemfdPlan::Missing(why) => Err(why.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_kernel_and_launcher() {
        assert_eq!(MemfdPlan::choose(true, true), MemfdPlan::Sysctl);
        assert_eq!(MemfdPlan::choose(true, false), MemfdPlan::SealRequired);
        assert!(matches!(
            MemfdPlan::choose(false, true),
            MemfdPlan::Missing(_)
        ));
        assert!(!MemfdPlan::Sysctl.filter_options().require_noexec_memfd);
        assert!(
            MemfdPlan::SealRequired
                .filter_options()
                .require_noexec_memfd
        );
        assert!(MemfdPlan::choose(false, false)
            .apply()
            .unwrap_err()
            .contains("6.3"));
    }

    #[test]
    fn this_kernel_has_the_sysctl() {
        // The development machine runs Linux 6.18.
        assert!(Path::new(SYSCTL).exists());
    }
}
