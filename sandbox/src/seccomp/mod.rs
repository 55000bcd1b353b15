//! The seccomp wall: an allow-list wide enough for CPython, numpy and torch,
//! modelled on the default profile of container runtimes (Docker/Podman).
//! Everything else fails with `EPERM`.
//!
//! Explicitly refused (and checked by the tests): the mount family,
//! `pivot_root`, `chroot`, `ptrace`, `process_vm_readv/writev`, `bpf`,
//! `perf_event_open`, the key syscalls, `kexec_*`, module loading,
//! `open_by_handle_at`, `name_to_handle_at`, `userfaultfd`, `io_uring_*`,
//! `unshare`, `setns`, `clone` with namespace flags, `cachestat` (page-cache
//! state of shared files: nothing in Python needs it), socket families other
//! than unix/inet/inet6 and netlink other than `NETLINK_ROUTE`, terminal
//! ioctls outside a short allow-list, `prctl` options outside its
//! allow-list, executable memfds, `fexecve`, set-uid/set-gid mode bits, and
//! x32-ABI syscall numbers. `clone3` and `openat2` return `ENOSYS` so
//! callers fall back to `clone`/`openat`, whose arguments the filter can
//! inspect. `mincore` stays allowed: allocators use it, and since Linux 5.2
//! it reports only the caller's own anonymous pages and files it may write.
//!
//! The lists are in [`syscalls`], the argument rules in [`args`], the
//! hand-written BPF (prefix, `ioctl`, the search tree) in [`bpf`]. The filter
//! is installed last, right before the command starts.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub mod args;
pub mod bpf;
pub mod syscalls;

pub use args::{
    CLONE_NAMESPACE_FLAGS, NETLINK_PROTOCOLS, PERSONALITIES, PRCTL_OPTIONS, SOCKET_FAMILIES,
};
pub use bpf::{TTY_IOCTLS, X32_SYSCALL_BIT};
pub use syscalls::{ALLOWED, ALLOWED_ARCH, DENIED_FAMILIES};

/// What the filter depends on besides the lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FilterOptions {
    /// Refuse `memfd_create` without `MFD_NOEXEC_SEAL`: set when the
    /// kernel's `vm.memfd_noexec=2` is not in force for the sandbox's pid
    /// namespace (rootless launchers cannot set it; kernels before 6.3 lack
    /// it), so no memfd can be created executable.
    pub require_noexec_memfd: bool,
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SeccompError::Build(e.to_string()))
}

/// Every syscall number allowed with any arguments, sorted.
pub fn allowed_numbers() -> Vec<u32> {
    let mut v: Vec<u32> = ALLOWED
        .iter()
        .chain(ALLOWED_ARCH.iter())
        .map(|(_, n)| *n as u32)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Compiles the filter. Layout:
///
/// 1. seccompiler's architecture check (anything but the native arch is killed);
/// 2. [`bpf::prefix`]: load the syscall number; refuse x32 numbers; `clone3`
///    and `openat2` get `ENOSYS`; `ioctl` is decided;
/// 3. a binary search over the unconditionally allowed numbers (a few
///    comparisons per syscall, and cheap for the kernel to pre-evaluate
///    when the filter is installed, unlike a linear list of 300);
/// 4. on a miss, [`args::conditional_program`]: the argument-checked
///    syscalls, `EPERM` for everything else.
///
/// The kernel converts, JIT-compiles and pre-evaluates every instruction
/// when the filter is installed (the launch's last step before the
/// command), so the program is kept short: ~240 instructions.
pub fn build(opts: &FilterOptions) -> Result<BpfProgram, SeccompError> {
    build_counted(opts).map(|(program, _)| program)
}

/// [`build`], and the number of syscalls the filter allows (with or without
/// conditions), as [`allowed_count`] gives it.
pub fn build_counted(opts: &FilterOptions) -> Result<(BpfProgram, usize), SeccompError> {
    let arch = target_arch()?;
    let deny = SeccompAction::Errno(libc::EPERM as u32);
    // seccompiler's empty filter is its architecture check plus one return.
    let empty = SeccompFilter::new(BTreeMap::new(), deny, SeccompAction::Allow, arch)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    let empty: BpfProgram = empty
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?;
    let arch_check = empty.len() - 1;
    let allowed_nrs = allowed_numbers();
    let mut program: BpfProgram = empty[..arch_check].to_vec();
    program.extend(bpf::prefix());
    program.extend(bpf::allow_tree(&allowed_nrs));
    program.extend(args::conditional_program(opts)?);
    if program.len() >= 4096 {
        return Err(SeccompError::Build(format!(
            "filter too long: {} instructions",
            program.len()
        )));
    }
    let allowed = allowed_nrs.len() + args::conditional_syscalls().len() + 1; // + ioctl
    Ok((program, allowed))
}

/// Installs the filter on the calling thread (children inherit it).
/// seccompiler sets `no_new_privs` first, as the kernel requires.
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(e.to_string()))
}

/// Number of syscalls the filter allows (with or without conditions).
pub fn allowed_count() -> usize {
    allowed_numbers().len() + args::conditional_syscalls().len() + 1 // ioctl
}

/// Errors of the seccomp wall.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("building the filter: {0}")]
    Build(String),
    /// The kernel refused the filter.
    #[error("installing the filter: {0}")]
    Install(String),
}

#[cfg(test)]
mod tests;
