//! What this kernel offers the channel (shown by `nodecell check`).
//!
//! Every probe really exercises the feature (creates a ring, seals a memfd, opens a
//! pidfd, ...) instead of reading version numbers, and never panics.

use std::os::fd::AsFd;
use std::sync::atomic::AtomicU32;

use crate::sys;

/// One kernel feature the channel may use.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Short name, e.g. `io_uring`, `io_uring futex ops`, `memfd seals`, `pidfd`.
    pub name: String,
    /// Whether it works here.
    pub available: bool,
    /// What was found (version, errno, fallback in use).
    pub detail: String,
}

fn feature(name: &str, available: bool, detail: impl Into<String>) -> Feature {
    Feature {
        name: name.into(),
        available,
        detail: detail.into(),
    }
}

/// Whether io_uring works and supports FUTEX_WAIT and FUTEX_WAITV (6.7+).
pub fn io_uring_futex_ops() -> std::io::Result<bool> {
    let ring = io_uring::IoUring::new(4)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    Ok(probe.is_supported(io_uring::opcode::FutexWait::CODE)
        && probe.is_supported(io_uring::opcode::FutexWaitV::CODE))
}

/// Whether the `futex_waitv` syscall (5.16+) exists.
pub fn futex_waitv_syscall() -> bool {
    let w = AtomicU32::new(1);
    // Expected 0 while the word is 1: returns EAGAIN at once where the call exists.
    match sys::futex_waitv(
        &[sys::FutexWaitv::new(&w, 0)],
        Some(std::time::Duration::from_millis(1)),
    ) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(sys::errno::ENOSYS),
    }
}

fn probe_io_uring() -> Vec<Feature> {
    let mut out = Vec::new();
    match io_uring::IoUring::new(4) {
        Err(e) => {
            out.push(feature(
                "io_uring",
                false,
                format!("io_uring_setup: {e} (the reactor uses a fallback loop)"),
            ));
            out.push(feature("io_uring futex ops", false, "no io_uring"));
        }
        Ok(ring) => {
            let mut probe = io_uring::Probe::new();
            match ring.submitter().register_probe(&mut probe) {
                Err(e) => {
                    out.push(feature(
                        "io_uring",
                        true,
                        format!("works, but IORING_REGISTER_PROBE failed: {e}"),
                    ));
                    out.push(feature("io_uring futex ops", false, "cannot probe opcodes"));
                }
                Ok(()) => {
                    let max = (0..=255u8)
                        .filter(|&op| probe.is_supported(op))
                        .max()
                        .unwrap_or(0);
                    out.push(feature(
                        "io_uring",
                        true,
                        format!("io_uring_setup works; highest opcode {max}"),
                    ));
                    let ops = [
                        ("FUTEX_WAIT", io_uring::opcode::FutexWait::CODE),
                        ("FUTEX_WAKE", io_uring::opcode::FutexWake::CODE),
                        ("FUTEX_WAITV", io_uring::opcode::FutexWaitV::CODE),
                    ];
                    let missing: Vec<&str> = ops
                        .iter()
                        .filter(|(_, c)| !probe.is_supported(*c))
                        .map(|(n, _)| *n)
                        .collect();
                    if missing.is_empty() {
                        out.push(feature(
                            "io_uring futex ops",
                            true,
                            "FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAITV",
                        ));
                    } else {
                        out.push(feature(
                            "io_uring futex ops",
                            false,
                            format!("missing {}", missing.join(", ")),
                        ));
                    }
                }
            }
        }
    }
    out
}

fn probe_memfd() -> Vec<Feature> {
    let mut out = Vec::new();
    let fd = match sys::memfd_create("nodecell-probe") {
        Ok(fd) => fd,
        Err(e) => {
            out.push(feature("memfd seals", false, format!("memfd_create: {e}")));
            return out;
        }
    };
    let basic = sys::ftruncate(fd.as_fd(), 4096)
        .and_then(|()| sys::add_seals(fd.as_fd(), sys::SEAL_SHRINK | sys::SEAL_GROW));
    let shrink_blocked = sys::ftruncate(fd.as_fd(), 0).is_err();
    match basic {
        Ok(()) if shrink_blocked => out.push(feature(
            "memfd seals",
            true,
            "F_SEAL_SHRINK|GROW|WRITE|SEAL; ftruncate on a sealed memfd fails",
        )),
        Ok(()) => out.push(feature(
            "memfd seals",
            false,
            "seals accepted but ftruncate still works",
        )),
        Err(e) => out.push(feature("memfd seals", false, format!("F_ADD_SEALS: {e}"))),
    }
    let fw = sys::add_seals(fd.as_fd(), sys::SEAL_FUTURE_WRITE);
    match fw {
        Ok(()) => {
            let denied = sys::Mapping::map(fd.as_fd(), 4096, sys::Protection::WriteShared).is_err();
            out.push(feature(
                "F_SEAL_FUTURE_WRITE",
                denied,
                if denied {
                    "new writable shared mappings are refused"
                } else {
                    "sealed, but a writable mapping still succeeded"
                },
            ))
        }
        Err(e) => out.push(feature(
            "F_SEAL_FUTURE_WRITE",
            false,
            format!("{e} (kernel < 5.1): host arenas fall back to F_SEAL_WRITE after filling"),
        )),
    }
    match sys::memfd_noexec_seal_supported() {
        Ok(true) => out.push(feature(
            "MFD_NOEXEC_SEAL",
            true,
            "memfds are created non-executable and sealed so",
        )),
        Ok(false) => out.push(feature(
            "MFD_NOEXEC_SEAL",
            false,
            "kernel < 6.3: memfds are created without it",
        )),
        Err(e) => out.push(feature(
            "MFD_NOEXEC_SEAL",
            false,
            format!("memfd_create: {e}"),
        )),
    }
    out
}

fn probe_pidfd() -> Feature {
    match sys::pidfd_open(sys::getpid()) {
        Ok(fd) => {
            let r = sys::poll_one(fd.as_fd(), sys::POLLIN, 0);
            feature("pidfd", true, format!("pidfd_open works (poll on a live process: {:?}); peer death is noticed at once", r.unwrap_or(-1)))
        }
        Err(e) => feature(
            "pidfd",
            false,
            format!("pidfd_open: {e} (kernel < 5.3): peer death is seen when its socket closes"),
        ),
    }
}

fn probe_thp() -> Vec<Feature> {
    let mut out = Vec::new();
    let bracketed = |s: &str| {
        s.split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned())
    };
    let global = sys::read_small_file("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .ok()
        .and_then(|s| bracketed(&s));
    let per_size =
        sys::read_small_file("/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled")
            .ok()
            .and_then(|s| bracketed(&s));
    let effective = match (per_size.as_deref(), global.as_deref()) {
        (Some("inherit") | None, g) => g.map(str::to_owned),
        (Some(p), _) => Some(p.to_owned()),
    };
    let ok = matches!(
        effective.as_deref(),
        Some("always" | "within_size" | "advise" | "force")
    );
    out.push(feature(
        "THP for shmem",
        ok,
        format!(
            "shmem_enabled={} (2048kB: {}): {}",
            global.as_deref().unwrap_or("?"),
            per_size.as_deref().unwrap_or("-"),
            if ok {
                "arenas get huge pages with MADV_HUGEPAGE"
            } else {
                "arenas use 4 KiB pages (set shmem_enabled to advise for faster first touch)"
            }
        ),
    ));
    // MADV_POPULATE_WRITE (5.14+).
    let res = sys::memfd_create("nodecell-probe").and_then(|fd| {
        sys::ftruncate(fd.as_fd(), 8192)?;
        let m = sys::Mapping::map(fd.as_fd(), 8192, sys::Protection::WriteShared)?;
        m.prefault_write()
    });
    match res {
        Ok(sys::Prefault::PopulateWrite) => out.push(feature(
            "MADV_POPULATE_WRITE",
            true,
            "arenas are pre-faulted in one call",
        )),
        Ok(sys::Prefault::Touched) => out.push(feature(
            "MADV_POPULATE_WRITE",
            false,
            "kernel < 5.14: arenas are pre-faulted by touching each page",
        )),
        Err(e) => out.push(feature("MADV_POPULATE_WRITE", false, format!("{e}"))),
    }
    out
}

/// Probes the running kernel. Never panics; each failure is a `Feature` with `available: false`.
pub fn probe() -> Vec<Feature> {
    let mut out = probe_io_uring();
    let waitv = futex_waitv_syscall();
    out.push(feature(
        "futex_waitv",
        waitv,
        if waitv {
            "syscall present (5.16+)"
        } else {
            "missing (kernel < 5.16)"
        },
    ));
    out.extend(probe_memfd());
    out.push(probe_pidfd());
    out.extend(probe_thp());
    let backend = crate::reactor::Backend::detect();
    out.push(feature(
        "ipc reactor",
        backend == crate::reactor::Backend::IoUring,
        backend.describe(),
    ));
    out
}
