//! Keeping a launch on one CPU until the command runs.
//!
//! A launch starts two new processes one after the other (the sandbox's init,
//! then the command), and each time the parent goes to sleep right after:
//! the launcher waits for the init, the init (`CLONE_VFORK`) for the
//! command's exec. The scheduler places each new process by fork balancing,
//! which on a busy machine often picks a CPU that is running another job,
//! while the parent's CPU is about to go idle: the new process then waits
//! there for a time slice or more before it runs at all (measured with
//! `perf sched timehist` on the 2-vCPU development VM under load: the
//! command's process runnable for 8.7 ms before its first instruction).
//!
//! So the launcher pins itself to the CPU it runs on before `clone`; the init
//! inherits that, and so does the command's process, which runs the moment
//! its parent blocks. Each gives the caller's CPU set back as soon as it no
//! longer matters: the launcher right after `clone`, the command's process
//! right before `execve` (the command itself never runs pinned: measured, a
//! process that only the init unpinned after the exec still read a single
//! CPU at its start in 13% of launches), the init once the command runs.
//! (Exec balancing may still move the command, mid-exec, to a busier CPU.)
//! Where the CPU or the set cannot be read or set (a set larger than
//! `cpu_set_t`, a seccomp filter around the launcher) nothing is pinned and
//! the launch is only slower.
//!
//! On that one CPU, each hand-off (launcher to init, init to command and
//! back, init to launcher) still waits for whatever else runs there to use
//! up its time slice. The launcher therefore also asks for the shortest
//! slice the kernel gives a fair-policy process ([`SLICE_NS`], Linux 6.12+),
//! which lets a waking process preempt a longer-sliced job at once; it
//! changes when they run, not how much CPU they get. The slice is inherited
//! across `clone` and `execve` like the CPU set: the init keeps it, the
//! command's process gives the caller's back with the set before its
//! `execve`, the launcher when the launch returns.

use std::io;

use crate::sys;

/// Time slice of the launcher and the init: the shortest the kernel takes
/// (0.1 ms; Linux 6.12+ lets any process ask for one under its fair policy,
/// older kernels ignore it).
pub const SLICE_NS: u64 = 100_000;

/// The caller's CPU set and scheduling attributes, kept while the launch
/// runs pinned with a short slice, and the one CPU it is pinned to.
#[derive(Clone, Copy)]
pub struct Pin {
    original: libc::cpu_set_t,
    cpu: usize,
    /// The caller's attributes, when its policy is a fair one and the slice
    /// was shortened.
    sched: Option<libc::sched_attr>,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin").finish_non_exhaustive()
    }
}

impl Pin {
    /// Pins the calling thread to the CPU it runs on; `None` (and nothing
    /// changed) when the CPU or the set cannot be read or set.
    pub fn to_current_cpu() -> Option<Pin> {
        let original = sys::affinity().ok()?;
        let cpu = sys::current_cpu().ok()?;
        sys::set_affinity(&sys::one_cpu(cpu)?).ok()?;
        let sched = sys::sched_attr().ok().filter(|a| {
            let fair = matches!(a.sched_policy as i32, libc::SCHED_OTHER | libc::SCHED_BATCH);
            let mut short = *a;
            short.sched_runtime = SLICE_NS;
            fair && sys::set_sched_attr(&short).is_ok()
        });
        Some(Pin {
            original,
            cpu,
            sched,
        })
    }

    /// Gives the calling thread the caller's CPU set back (its time slice
    /// stays: see [`Pin::restore`]).
    pub fn restore_cpus(&self) -> io::Result<()> {
        sys::set_affinity(&self.original)
    }

    /// Gives the calling thread the caller's CPU set and time slice back.
    pub fn restore(&self) -> io::Result<()> {
        let cpus = sys::set_affinity(&self.original);
        let sched = self.sched.as_ref().map_or(Ok(()), sys::set_sched_attr);
        cpus.and(sched)
    }

    /// Pins the calling thread again (after [`Pin::restore`]).
    pub fn reapply(&self) -> io::Result<()> {
        match sys::one_cpu(self.cpu) {
            Some(set) => sys::set_affinity(&set),
            None => Ok(()),
        }
    }

    /// Whether the caller may run on other CPUs than the pinned one.
    pub fn has_others(&self) -> bool {
        sys::without_cpu(&self.original, self.cpu).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_holds_one_cpu_and_a_short_slice_then_restores_both() {
        crate::testutil::in_child(
            "cpu::tests::pinning_holds_one_cpu_and_a_short_slice_then_restores_both",
            || {
                let before = sys::cpus(&sys::affinity().unwrap());
                let slice = || sys::sched_attr().unwrap().sched_runtime;
                let caller_slice = slice();
                let pin = Pin::to_current_cpu().expect("pinning works on this machine");
                let cpu = sys::current_cpu().unwrap();
                assert_eq!(sys::cpus(&sys::affinity().unwrap()), [cpu]);
                // A child starts with the pinned set.
                let out = std::process::Command::new("/bin/sh")
                    .args(["-c", "grep Cpus_allowed_list /proc/self/status"])
                    .output()
                    .unwrap();
                let shown = String::from_utf8_lossy(&out.stdout);
                assert!(shown.trim().ends_with(&format!("\t{cpu}")), "{shown}");
                assert_eq!(pin.has_others(), before.len() > 1);
                // The short slice holds until the full restore (Linux 6.12+).
                assert_eq!(slice(), SLICE_NS);
                pin.restore_cpus().unwrap();
                assert_eq!(sys::cpus(&sys::affinity().unwrap()), before);
                assert_eq!(slice(), SLICE_NS);
                pin.reapply().unwrap();
                assert_eq!(sys::cpus(&sys::affinity().unwrap()), [cpu]);
                // A child inherits the short slice (as the init does).
                let out = std::process::Command::new("/bin/sh")
                    .args(["-c", "grep -s '^se.slice' /proc/self/sched || true"])
                    .output()
                    .unwrap();
                let shown = String::from_utf8_lossy(&out.stdout);
                assert!(
                    shown.is_empty() || shown.trim().ends_with(&format!(" {SLICE_NS}")),
                    "{shown}"
                );
                pin.restore().unwrap();
                assert_eq!(sys::cpus(&sys::affinity().unwrap()), before);
                assert_eq!(slice(), caller_slice, "the caller's slice is back");
            },
        );
    }
}
