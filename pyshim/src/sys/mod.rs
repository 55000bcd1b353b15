//! The few places `_nodecell` itself talks to the loader and libc directly (everything
//! else goes through `nodecell_ipc::sys`): each function small, each unsafe block with
//! its `// SAFETY:` argument.
//!
//! * [`got`]: finding a loaded library and rewriting its GOT slots for a libc function.
//! * [`alloc`]: the `posix_memalign` / `free` replacements the worker heap installs there.
//! * [`numpy`]: the worker heap as numpy's allocation policy (`PyDataMem_SetHandler`).

pub(crate) mod alloc;
pub(crate) mod got;
pub(crate) mod numpy;

/// This process's soft limit on open files (`RLIMIT_NOFILE`), if it can be read.
pub(crate) fn open_files_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `r` is.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r.rlim_cur)
}
