//! The rlimit wall: limits applied with `setrlimit` in every sandbox, the
//! floor under the cgroup limits: no core dumps, a bounded number of open
//! files, optional file-size and address-space caps, and, when a cgroup
//! controller is missing in best-effort mode, `RLIMIT_AS` for `--memory`
//! and `RLIMIT_NPROC` for `--pids`.

use crate::policy::Policy;
use crate::sys;

/// One limit to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*`.
    pub resource: libc::__rlimit_resource_t,
    /// Short name for reports.
    pub name: &'static str,
    /// Soft and hard value.
    pub value: u64,
}

/// The limits of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlimitPlan {
    /// In the order they are applied.
    pub limits: Vec<Rlimit>,
}

impl RlimitPlan {
    /// Plans the limits for `policy`. `memory_fallback`/`pids_fallback` say
    /// that the cgroup controller for `--memory`/`--pids` is missing.
    pub fn new(policy: &Policy, memory_fallback: bool, pids_fallback: bool) -> RlimitPlan {
        let hard_nofile = sys::getrlimit(libc::RLIMIT_NOFILE)
            .map(|(_, h)| h)
            .unwrap_or(u64::MAX);
        let mut limits = vec![
            Rlimit {
                resource: libc::RLIMIT_CORE,
                name: "core",
                value: 0,
            },
            Rlimit {
                resource: libc::RLIMIT_NOFILE,
                name: "nofile",
                value: policy.rlimits.open_files.min(hard_nofile),
            },
        ];
        if let Some(f) = policy.rlimits.file_size {
            limits.push(Rlimit {
                resource: libc::RLIMIT_FSIZE,
                name: "fsize",
                value: f,
            });
        }
        let address_space = match (
            policy.rlimits.address_space,
            memory_fallback.then_some(policy.memory).flatten(),
        ) {
            (Some(a), Some(m)) => Some(a.min(m)),
            (a, m) => a.or(m),
        };
        if let Some(a) = address_space {
            limits.push(Rlimit {
                resource: libc::RLIMIT_AS,
                name: "as",
                value: a,
            });
        }
        if let (true, Some(p)) = (pids_fallback, policy.pids) {
            limits.push(Rlimit {
                resource: libc::RLIMIT_NPROC,
                name: "nproc",
                value: p,
            });
        }
        RlimitPlan { limits }
    }

    /// Applies every limit (soft = hard, so the command cannot raise them).
    pub fn apply(&self) -> Result<(), String> {
        for l in &self.limits {
            sys::setrlimit(l.resource, l.value, l.value)
                .map_err(|e| format!("setrlimit {}={}: {e}", l.name, l.value))?;
        }
        Ok(())
    }

    /// `core=0 nofile=65536 ...` for reports.
    pub fn describe(&self) -> String {
        self.limits
            .iter()
            .map(|l| format!("{}={}", l.name, l.value))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::in_child;

    #[test]
    fn defaults_are_core_and_nofile() {
        let plan = RlimitPlan::new(&Policy::new(), false, false);
        let names: Vec<_> = plan.limits.iter().map(|l| l.name).collect();
        assert_eq!(names, ["core", "nofile"]);
        assert_eq!(plan.limits[0].value, 0);
        assert!(plan.describe().starts_with("core=0 nofile="));
    }

    #[test]
    fn fallbacks_only_when_the_cgroup_is_missing() {
        let p = Policy::new().memory(64 << 20).pids(10);
        assert!(!RlimitPlan::new(&p, false, false)
            .limits
            .iter()
            .any(|l| l.name == "as" || l.name == "nproc"));
        let plan = RlimitPlan::new(&p, true, true);
        assert!(plan
            .limits
            .iter()
            .any(|l| l.name == "as" && l.value == 64 << 20));
        assert!(plan
            .limits
            .iter()
            .any(|l| l.name == "nproc" && l.value == 10));
    }

    #[test]
    fn limits_are_applied() {
        in_child("rlimits::tests::limits_are_applied", || {
            let mut p = Policy::new();
            p.rlimits.file_size = Some(4096);
            p.rlimits.open_files = 64;
            RlimitPlan::new(&p, false, false).apply().unwrap();
            assert_eq!(sys::getrlimit(libc::RLIMIT_NOFILE).unwrap(), (64, 64));
            assert_eq!(sys::getrlimit(libc::RLIMIT_CORE).unwrap(), (0, 0));
            assert_eq!(sys::getrlimit(libc::RLIMIT_FSIZE).unwrap(), (4096, 4096));
        });
    }
}
