//! The sandbox's network namespace, built on another CPU when one is free.
//!
//! Creating a network namespace is the largest single kernel cost of a
//! launch (~0.3-0.8 ms here: every per-namespace part of the network stack
//! is set up), and bringing `lo` up adds ~0.1 ms. First thing after `clone`
//! the init starts a helper process that shares its memory and fd table
//! ([`sys::spawn_beside`]: no page tables copied) and is placed by the
//! scheduler on whichever of the caller's CPUs it finds idlest (the launch
//! runs pinned to one CPU, [`crate::cpu`]: the init widens its set for this
//! `clone` alone; with no other CPU there is no helper). The helper
//!
//! 1. claims the job with an atomic compare-and-swap;
//! 2. `unshare(CLONE_NEWNET)`: a namespace owned by the sandbox's user
//!    namespace, exactly like one the init would make itself (the helper
//!    holds the init's credentials);
//! 3. brings `lo` up through a socket in the new namespace;
//! 4. turns that socket into an fd of the namespace (`SIOCGSKNS`) in the
//!    shared fd table, and exits.
//!
//! Meanwhile the init waits for its uid/gid maps, switches ids and builds
//! the filesystem; then [`Pending::enter`] reaps the helper and `setns`es
//! into the namespace, before the init makes any other step (and long before
//! the command exists). If the helper has not claimed the job by then (its
//! CPUs were busy: on a loaded machine a new process can wait a time slice
//! or more), the init cancels it and builds the namespace itself, so a busy
//! machine pays next to nothing for trying.
//!
//! The helper runs only [`sys::bare`] system calls: it shares the init's
//! thread-local storage, where glibc would write `errno`.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use crate::cpu::Pin;
use crate::sys::{self, bare, WaitStatus};

/// Stack of the helper (it makes a handful of system calls).
const STACK: usize = 16 * 1024;

/// The interface brought up in the new namespace.
const LOOPBACK: &CStr = c"lo";

/// [`Job::state`]: nobody has claimed the job yet.
const UNCLAIMED: u8 = 0;
/// [`Job::state`]: the helper is building (or has built) the namespace.
const HELPER: u8 = 1;
/// [`Job::state`]: the init took the job back; the helper does nothing.
const CANCELLED: u8 = 2;

/// What the helper leaves for the init.
struct Job {
    /// [`UNCLAIMED`], [`HELPER`] or [`CANCELLED`].
    state: AtomicU8,
    /// [`Step`] that failed (0: none).
    failed_step: AtomicU8,
    /// Its errno.
    errno: AtomicI32,
    /// fd of the new namespace (-1 until made).
    nsfd: AtomicI32,
    /// errno of bringing `lo` up (0: up).
    lo_errno: AtomicI32,
}

impl Job {
    fn new() -> Job {
        Job {
            state: AtomicU8::new(UNCLAIMED),
            failed_step: AtomicU8::new(0),
            errno: AtomicI32::new(0),
            nsfd: AtomicI32::new(-1),
            lo_errno: AtomicI32::new(0),
        }
    }

    /// The failure recorded by [`build`], if any.
    fn failure(&self) -> Option<NetnsError> {
        let step = Step::from_u8(self.failed_step.load(Ordering::Acquire))?;
        Some(NetnsError::Call {
            call: step.call(),
            source: io::Error::from_raw_os_error(self.errno.load(Ordering::Relaxed)),
        })
    }

    /// Whether `lo` came up.
    fn loopback(&self) -> Result<(), io::Error> {
        match self.lo_errno.load(Ordering::Relaxed) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The helper's steps, as recorded on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Unshare = 1,
    Socket = 2,
    NsFd = 3,
}

impl Step {
    fn from_u8(v: u8) -> Option<Step> {
        [Step::Unshare, Step::Socket, Step::NsFd]
            .into_iter()
            .find(|s| *s as u8 == v)
    }
    fn call(self) -> &'static str {
        match self {
            Step::Unshare => "unshare(CLONE_NEWNET)",
            Step::Socket => "socket(AF_INET) in the new network namespace",
            Step::NsFd => "ioctl(SIOCGSKNS)",
        }
    }
}

/// A network namespace being built by the helper; [`Pending::enter`] moves
/// the init into it. Dropped without entering (an early error), it still
/// cancels or reaps the helper, so its memory is never freed under it.
pub struct Pending {
    /// The helper's pid; 0 once reaped or cancelled, or when there is none
    /// (no other CPU: the init builds the namespace itself).
    pid: libc::pid_t,
    /// Shared with the helper until it is reaped; leaked when it is
    /// cancelled (it may still run its first instructions later).
    job: Option<Box<Job>>,
    stack: Option<Vec<u8>>,
}

/// Starts the helper. Call from the init, before anything that is slower
/// than the namespace itself. With `pin` (the launch runs pinned to one
/// CPU) the caller's whole CPU set is given back for the `clone` alone, so
/// the helper may land on another CPU; when there is no other CPU, there is
/// no helper.
pub fn start(pin: Option<&Pin>) -> Result<Pending, NetnsError> {
    if pin.is_some_and(|p| !p.has_others()) {
        return Ok(Pending {
            pid: 0,
            job: None,
            stack: None,
        });
    }
    let job = Box::new(Job::new());
    let mut stack = vec![0u8; STACK];
    let arg = (&*job as *const Job).cast_mut().cast();
    if let Some(p) = pin {
        let _ = p.restore_cpus();
    }
    // SAFETY: `helper_main` makes only `bare` syscalls and writes `job`'s atomics; `Pending`
    // owns `job` and `stack`: it reaps the helper before freeing them, or leaks them.
    let spawned = unsafe { sys::spawn_beside(helper_main, &mut stack, arg) };
    if let Some(p) = pin {
        let _ = p.reapply();
    }
    let pid = spawned.map_err(|source| NetnsError::Call {
        call: "clone(CLONE_VM | CLONE_FILES) of the namespace helper",
        source,
    })?;
    Ok(Pending {
        pid,
        job: Some(job),
        stack: Some(stack),
    })
}

/// Builds a new network namespace in the calling process, without a helper
/// (what [`Pending::enter`] does when the helper had not started), and
/// brings `lo` up; returns whether `lo` came up.
pub fn enter_new() -> Result<Result<(), io::Error>, NetnsError> {
    let job = Job::new();
    build(&job, false);
    match job.failure() {
        Some(e) => Err(e),
        None => Ok(job.loopback()),
    }
}

impl Pending {
    /// Moves the calling process (the init) into the new namespace: the
    /// helper's, once it is reaped, or one built here when the helper had
    /// not started yet. Returns whether `lo` came up (the namespace is
    /// entered either way: without `lo` the sandbox simply has no network
    /// at all).
    pub fn enter(mut self) -> Result<Result<(), io::Error>, NetnsError> {
        if self.job.is_none() || self.cancel() {
            return enter_new();
        }
        let status = self.reap();
        let job = self.job.as_deref().expect("kept until dropped");
        if job.failed_step.load(Ordering::Acquire) == Step::NsFd as u8 {
            // A kernel without SIOCGSKNS (before 4.9): build it here.
            return enter_new();
        }
        if let Some(e) = job.failure() {
            return Err(e);
        }
        let nsfd = job.nsfd.swap(-1, Ordering::Acquire);
        if nsfd < 0 {
            return Err(NetnsError::HelperDied(format!("{status:?}")));
        }
        let entered = sys::setns(nsfd, libc::CLONE_NEWNET);
        sys::close(nsfd);
        entered.map_err(|source| NetnsError::Call {
            call: "setns(CLONE_NEWNET)",
            source,
        })?;
        Ok(job.loopback())
    }

    /// Takes the job back if the helper has not claimed it; then the helper
    /// may still run its first instructions at any time, so its memory is
    /// leaked (16 KiB, once per sandbox). Returns whether it was cancelled.
    fn cancel(&mut self) -> bool {
        let Some(job) = self.job.as_deref() else {
            return false;
        };
        let cancelled = job
            .state
            .compare_exchange(UNCLAIMED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if cancelled {
            // The init's wait loop reaps the helper as an orphan later.
            self.pid = 0;
            std::mem::forget(self.job.take());
            std::mem::forget(self.stack.take());
        }
        cancelled
    }

    /// Waits for the helper (once).
    fn reap(&mut self) -> Option<WaitStatus> {
        let pid = std::mem::replace(&mut self.pid, 0);
        if pid == 0 {
            return None;
        }
        sys::wait(pid, 0).ok().flatten().map(|(_, s)| s)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.cancel() {
            self.reap();
        }
        if let Some(job) = self.job.as_deref() {
            let fd = job.nsfd.swap(-1, Ordering::Acquire);
            if fd >= 0 {
                sys::close(fd);
            }
        }
    }
}

extern "C" fn helper_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Job` that `start` passed; its `Pending` keeps it
    // alive until this process has been reaped, or leaks it.
    let job = unsafe { &*(arg as *const Job) };
    if job
        .state
        .compare_exchange(UNCLAIMED, HELPER, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return 0; // cancelled: the init built it
    }
    build(job, true)
}

/// Builds the namespace in the calling process: `unshare`, `lo` up, and with
/// `want_fd` an fd of the namespace in `job.nsfd`. Only `bare` calls (the
/// helper runs this too); failures are recorded in `job`.
fn build(job: &Job, want_fd: bool) -> libc::c_int {
    let fail = |step: Step, errno: i32| {
        job.errno.store(errno, Ordering::Relaxed);
        job.failed_step.store(step as u8, Ordering::Release);
        1
    };
    if let Err(e) = bare::unshare(libc::CLONE_NEWNET) {
        return fail(Step::Unshare, e);
    }
    let sock = match bare::inet_dgram_socket() {
        Ok(fd) => fd,
        Err(e) => return fail(Step::Socket, e),
    };
    if let Err(e) = bare::interface_up(sock, LOOPBACK) {
        job.lo_errno.store(e, Ordering::Relaxed);
    }
    let nsfd = if want_fd {
        bare::netns_of_socket(sock).map(Some)
    } else {
        Ok(None)
    };
    bare::close(sock);
    match nsfd {
        Ok(Some(fd)) => {
            job.nsfd.store(fd, Ordering::Release);
            0
        }
        Ok(None) => 0,
        Err(e) => fail(Step::NsFd, e),
    }
}

/// Errors of the network namespace wall.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// A system call failed.
    #[error("{call}: {source}")]
    Call {
        /// Which call.
        call: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// The helper ended without making the namespace or saying why.
    #[error("the network namespace helper ended without a namespace ({0})")]
    HelperDied(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's network namespace, and its interfaces.
    fn netns_and_interfaces() -> (std::path::PathBuf, Vec<String>) {
        let ns = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let names = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_string())
            .collect();
        (ns, names)
    }

    /// Loopback carries a datagram (it is up).
    fn loopback_works() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        other.send_to(b"x", sock.local_addr().unwrap()).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(sock.recv(&mut b).unwrap(), 1);
    }

    #[test]
    fn the_helper_or_the_init_builds_a_namespace_with_loopback_up() {
        crate::testutil::in_child(
            "netns::tests::the_helper_or_the_init_builds_a_namespace_with_loopback_up",
            || {
                // The test harness is multi-threaded, so this process cannot
                // make a user namespace of its own: as root the namespace is
                // made in the host's user namespace; rootless it must fail,
                // naming the call (full rootless launches are covered by the
                // escape suite's rootless half).
                if sys::geteuid() != 0 {
                    let err = start(None).unwrap().enter().unwrap_err();
                    assert!(err.to_string().contains("unshare(CLONE_NEWNET)"), "{err}");
                    return;
                }
                // 1. The helper's namespace: wait until it has claimed the job.
                let (host, _) = netns_and_interfaces();
                let pending = start(None).unwrap();
                let job = pending.job.as_deref().unwrap();
                let t = std::time::Instant::now();
                while job.state.load(Ordering::Acquire) == UNCLAIMED {
                    assert!(t.elapsed().as_secs() < 10, "the helper never ran");
                    std::thread::yield_now();
                }
                assert_eq!(job.state.load(Ordering::Acquire), HELPER);
                assert!(pending.enter().unwrap().is_ok(), "lo down");
                let (first, names) = netns_and_interfaces();
                assert_ne!(first, host, "still in the host's network namespace");
                assert_eq!(names, ["lo"]);
                loopback_works();
                // 2. Cancelled before the helper claims it: the init builds
                // it (a helper that claims the job first is reaped; retry).
                let mut cancelled = None;
                for _ in 0..100 {
                    let mut pending = start(None).unwrap();
                    if pending.cancel() {
                        cancelled = Some(pending);
                        break;
                    }
                }
                let pending = cancelled.expect("every helper claimed its job at once");
                assert!(pending.enter().unwrap().is_ok(), "lo down");
                let (second, names) = netns_and_interfaces();
                assert_ne!(second, first, "no new namespace");
                assert_eq!(names, ["lo"]);
                loopback_works();
            },
        );
    }
}
