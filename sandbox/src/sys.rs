//! One small function per system call the launcher makes, each returning
//! `io::Result`. Every `unsafe` block of the crate that talks to the kernel
//! directly lives here (the seccomp and Landlock crates wrap their own).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub mod bare;

/// Turns a `-1` return into the current `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for `syscall(2)`, which returns a `long`.
fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; paths with an interior NUL are refused.
pub fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `clone(2)` without a new stack: like `fork`, returns 0 in the child and
/// the child's pid in the parent.
///
/// # Safety
/// The calling process must be single-threaded: the child is a copy of this
/// thread only, and any lock another thread held would stay locked forever.
pub unsafe fn clone_fork(flags: libc::c_ulong) -> io::Result<libc::pid_t> {
    let flags = flags | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: no CLONE_VM, NULL stack: a fork's copy of the address space; the caller
    // guarantees no other thread; the pointer arguments are unused for these flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0usize,
        )
    };
    cvt_long(ret).map(|pid| pid as libc::pid_t)
}

/// `fork(2)` through glibc (runs the atfork handlers, resets glibc's caches).
///
/// # Safety
/// The calling process must be single-threaded, see [`clone_fork`].
pub unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the caller guarantees a single-threaded process.
    cvt(unsafe { libc::fork() })
}

/// Starts `f(arg)` in a new process that shares this one's memory
/// (`CLONE_VM | CLONE_VFORK`, like `posix_spawn`): the caller is suspended
/// until the child execs or exits. Returns the child's pid.
///
/// # Safety
/// `f` must end in `execve` or `_exit`, must not unwind, and must only use
/// memory that stays valid while the caller is suspended; `stack` is its
/// stack. Signal handlers of the caller run in the child until it resets
/// them, so they must be safe to run there.
pub unsafe fn spawn_vfork(
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &mut [u8],
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    // SAFETY: the caller upholds the contract above; `stack` outlives the
    // call (we are suspended until the child execs or exits).
    unsafe {
        clone_on_stack(
            f,
            stack,
            arg,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
        )
    }
}

/// Starts `f(arg)` in a helper process that shares this one's memory and fd
/// table (`CLONE_VM | CLONE_FILES`, so no page tables are copied) and runs
/// beside it: unlike [`spawn_vfork`] the caller goes on at once. The helper
/// exits with `f`'s return value and sends `SIGCHLD`; reap it with [`wait`].
///
/// # Safety
/// `f` must use only [`bare`] system calls (it shares this process's
/// thread-local storage: no glibc call that may set `errno`, no allocation,
/// no panic), must only read or write memory through atomics or memory the
/// caller leaves alone, and must return; `stack` is its stack, and it and
/// everything `arg` points to must stay alive and untouched until the helper
/// has been reaped. Signals the caller has blocked stay blocked in the helper.
pub unsafe fn spawn_beside(
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &mut [u8],
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    // SAFETY: the caller upholds the contract above; `stack` outlives the
    // helper.
    unsafe {
        clone_on_stack(
            f,
            stack,
            arg,
            libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD,
        )
    }
}

/// `clone(2)` running `f(arg)` on `stack` (passed as its 16-byte aligned
/// top: the stack grows down) with `flags`.
///
/// # Safety
/// As [`spawn_vfork`] or [`spawn_beside`], whichever `flags` make it.
unsafe fn clone_on_stack(
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &mut [u8],
    arg: *mut libc::c_void,
    flags: libc::c_int,
) -> io::Result<libc::pid_t> {
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the caller upholds its contract; `top` is inside `stack`.
    cvt(unsafe { libc::clone(f, top as *mut libc::c_void, flags, arg) })
}

/// `sched_getcpu(3)`: the CPU the calling thread runs on.
pub fn current_cpu() -> io::Result<usize> {
    // SAFETY: no arguments.
    cvt(unsafe { libc::sched_getcpu() }).map(|c| c as usize)
}

/// `sched_getaffinity(0)`: the calling thread's CPU set.
pub fn affinity() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size.
    cvt(unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) })?;
    Ok(set)
}

/// `sched_setaffinity(0, set)`: the calling thread's CPU set (children
/// inherit it).
pub fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) }).map(drop)
}

/// The set holding only `cpu` (`None` past the set's size).
pub fn one_cpu(cpu: usize) -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of_val(&set) {
        return None;
    }
    // SAFETY: `cpu` is below the set's size in bits (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    Some(set)
}

/// `sched_getattr(0)`: the calling thread's scheduling policy and
/// parameters (for a fair policy, `sched_runtime` is its custom time slice,
/// 0 when it has none).
pub fn sched_attr() -> io::Result<libc::sched_attr> {
    // SAFETY: sched_attr is plain data; zeroed is valid.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of_val(&attr) as libc::c_uint;
    // SAFETY: `attr` is valid for writes of `size` bytes.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            size,
            0,
        )
    })?;
    Ok(attr)
}

/// `sched_setattr(0, attr, 0)`.
pub fn set_sched_attr(attr: &libc::sched_attr) -> io::Result<()> {
    let mut attr = *attr;
    attr.size = std::mem::size_of_val(&attr) as u32;
    // SAFETY: `attr` is a valid sched_attr whose size field matches.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    })
    .map(drop)
}

/// `set` without `cpu`; `None` when nothing is left.
pub fn without_cpu(set: &libc::cpu_set_t, cpu: usize) -> Option<libc::cpu_set_t> {
    let mut out = *set;
    let bits = 8 * std::mem::size_of_val(set);
    if cpu < bits {
        // SAFETY: `cpu` is below the set's size in bits.
        unsafe { libc::CPU_CLR(cpu, &mut out) };
    }
    let left = (0..bits).any(|c| {
        // SAFETY: `c` is below the set's size in bits.
        unsafe { libc::CPU_ISSET(c, &out) }
    });
    left.then_some(out)
}

/// The CPUs in `set`, ascending.
#[cfg(test)]
pub fn cpus(set: &libc::cpu_set_t) -> Vec<usize> {
    (0..8 * std::mem::size_of_val(set))
        .filter(|&c| {
            // SAFETY: `c` is below the set's size in bits.
            unsafe { libc::CPU_ISSET(c, set) }
        })
        .collect()
}

/// `setns(fd, nstype)`.
pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// `chdir(2)` with a ready C string.
pub fn chdir_c(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    cvt(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// Number of threads of this process, read from `/proc/self/task`.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `pipe2(O_CLOEXEC)`: returns (read end, write end).
pub fn pipe_cloexec() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

/// `read(2)` into `buf`, retrying on EINTR.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes all of `buf`, retrying on EINTR and short writes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `close(2)`; errors are ignored (the fd is gone either way on Linux).
pub fn close(fd: RawFd) {
    // SAFETY: closing an fd number has no memory-safety effect; callers only
    // pass fds they own.
    unsafe { libc::close(fd) };
}

/// `close_range(2)` for `first..=last`. Falls back to closing one by one on
/// kernels without it (before 5.9).
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range takes plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if ret == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    let max = open_max().min(last as u64 + 1) as u32;
    for fd in first..max {
        close(fd as RawFd);
    }
    Ok(())
}

/// Highest possible fd number + 1 (`RLIMIT_NOFILE` hard limit, capped).
fn open_max() -> u64 {
    getrlimit(libc::RLIMIT_NOFILE)
        .map(|(_, hard)| hard.min(1 << 20))
        .unwrap_or(1024)
}

/// Whether `fd` is an open file descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the fd table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only change the fd's flags.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    if new != flags {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, new) })?;
    }
    Ok(())
}

/// `open(path, O_PATH | O_CLOEXEC)`: a handle to a path that can be bound
/// later through `/proc/self/fd/N` even after the path's name is hidden.
pub fn open_path(path: &Path) -> io::Result<RawFd> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    cvt(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) })
}

/// `mount(2)`. `None` arguments are passed as NULL.
pub fn mount(
    source: Option<&CStr>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let target = cpath(target)?;
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is either NULL or a valid NUL-terminated string
    // that outlives the call.
    cvt(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
    .map(drop)
}

/// `umount2(2)`.
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: `target` is a valid NUL-terminated string.
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cpath(new_root)?;
    let put_old = cpath(put_old)?;
    // SAFETY: both are valid NUL-terminated strings.
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// `MOUNT_ATTR_*` flags of `mount_setattr(2)`.
pub mod mount_attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x0000_0001;
    /// Ignore set-user-ID and file capabilities.
    pub const NOSUID: u64 = 0x0000_0002;
    /// No device access.
    pub const NODEV: u64 = 0x0000_0004;
    /// No program execution.
    pub const NOEXEC: u64 = 0x0000_0008;
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` on `path`, setting `attrs` and clearing `clear` (on
/// the whole subtree when `recursive`). Returns `ENOSYS` on kernels before
/// 5.12.
pub fn mount_setattr(path: &Path, attrs: u64, clear: u64, recursive: bool) -> io::Result<()> {
    let c = cpath(path)?;
    let mut attr = MountAttr {
        attr_set: attrs,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let flags: libc::c_uint = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: `c` is a valid string, `attr` a valid struct of the size passed.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// `statvfs(3)`'s `f_flag` (the `ST_*` mount flags of the mount holding `path`).
pub fn mount_flags(path: &Path) -> io::Result<libc::c_ulong> {
    let c = cpath(path)?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid string and `st` a valid out-pointer.
    cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    Ok(st.f_flag)
}

/// `chdir(2)`.
pub fn chdir(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    cvt(unsafe { libc::chdir(c.as_ptr()) }).map(drop)
}

/// `symlink(2)`: creates `link` pointing at `target`.
pub fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `setgroups(0, NULL)`: drops every supplementary group.
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: a zero-length list with a NULL pointer is valid.
    cvt(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

/// `setresgid(gid, gid, gid)`.
pub fn setresgid(gid: u32) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

/// `setresuid(uid, uid, uid)`.
pub fn setresuid(uid: u32) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// `prctl(PR_SET_PDEATHSIG, sig)`.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_GET_NO_NEW_PRIVS)`.
pub fn no_new_privs() -> io::Result<bool> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }).map(|v| v == 1)
}

/// `prctl(PR_CAPBSET_DROP, cap)`.
pub fn drop_bounding_cap(cap: u32) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// `getrlimit(2)`: (soft, hard).
pub fn getrlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid out-pointer.
    cvt(unsafe { libc::getrlimit(resource, &mut r) })?;
    Ok((r.rlim_cur, r.rlim_max))
}

/// `setrlimit(2)`.
pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `r` is a valid pointer to an initialised rlimit.
    cvt(unsafe { libc::setrlimit(resource, &r) }).map(drop)
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Result of [`wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// The process exited with this code.
    Exited(i32),
    /// The process was killed by this signal.
    Signaled(i32),
}

impl WaitStatus {
    fn from_raw(status: libc::c_int) -> Option<WaitStatus> {
        if libc::WIFEXITED(status) {
            Some(WaitStatus::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(WaitStatus::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The shell's view of the status: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            WaitStatus::Exited(c) => c,
            WaitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// `waitpid(pid, flags)`: `Ok(None)` when `WNOHANG` found nothing (or the
/// child only stopped), otherwise the reaped pid and its status.
pub fn wait(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<(libc::pid_t, WaitStatus)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out-pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ret == 0 {
            return Ok(None);
        }
        return Ok(WaitStatus::from_raw(status).map(|s| (ret, s)));
    }
}

/// A signal set built from a list of signals.
pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: `set` is initialised; an invalid signal number only errors.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// `sigprocmask(how, set)`; returns the previous mask.
pub fn sigprocmask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    cvt(unsafe { libc::sigprocmask(how, set, &mut old) })?;
    Ok(old)
}

/// `signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK)`.
pub fn signalfd(set: &libc::sigset_t) -> io::Result<RawFd> {
    // SAFETY: `set` is a valid initialised sigset.
    cvt(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })
}

/// Reads one pending signal number from a non-blocking signalfd.
pub fn read_signalfd(fd: RawFd) -> io::Result<Option<u32>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is valid for writes of `size` bytes.
    let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    if n == size as isize {
        return Ok(Some(info.ssi_signo));
    }
    let e = io::Error::last_os_error();
    if n < 0
        && matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
    {
        return Ok(None);
    }
    Err(e)
}

/// Installs `handler` for `sig` (with `SA_RESTART` off, so blocking calls
/// return EINTR and the caller sees the signal promptly).
pub fn set_signal_handler(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: sigaction is plain data; zeroed is a valid starting value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    // SAFETY: `sa.sa_mask` is a valid sigset to initialise.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised; the handler is a valid extern "C" fn.
    cvt(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) }).map(drop)
}

/// Resets `sig` to its default disposition.
pub fn set_signal_default(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: SIG_DFL is always a valid disposition.
    let ret = unsafe { libc::signal(sig, libc::SIG_DFL) };
    if ret == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll(2)` on `fds`, `timeout_ms` < 0 waits forever. EINTR is `Ok(0)`.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of pollfd of the given length.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ret == -1 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(ret as usize)
}

/// `execve(2)`; only returns on failure.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: `path` is a valid string; `argv` and `envp` are NULL-terminated
    // arrays of pointers to strings that the caller keeps alive.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `_exit(2)`: leaves without running atexit handlers or flushing stdio
/// (the right exit for a forked child).
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and takes a plain integer.
    unsafe { libc::_exit(code) }
}

/// `unshare(2)`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

/// Raw `syscall(nr, a, b, c)` for probes: returns the result or the errno.
pub fn raw_syscall3(nr: libc::c_long, a: usize, b: usize, c: usize) -> Result<libc::c_long, i32> {
    // SAFETY: used only by probes with NULL or integer arguments that the
    // kernel validates (never with pointers to memory it would write).
    let ret = unsafe { libc::syscall(nr, a, b, c) };
    if ret == -1 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret)
    }
}

/// `getgid(2)`.
pub fn getgid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getgid() }
}

/// `geteuid(2)`.
pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// `getpid(2)`.
pub fn getpid() -> libc::pid_t {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpid() }
}

/// `access(path, mode)`.
pub fn access(path: &Path, mode: libc::c_int) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    cvt(unsafe { libc::access(c.as_ptr(), mode) }).map(drop)
}

/// Landlock's ABI version of the running kernel: `Ok(n)` or the errno
/// (`ENOSYS` not built, `EOPNOTSUPP` disabled at boot).
pub fn landlock_abi() -> Result<i32, i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: usize = 1;
    raw_syscall3(
        libc::SYS_landlock_create_ruleset,
        0,
        0,
        LANDLOCK_CREATE_RULESET_VERSION,
    )
    .map(|v| v as i32)
}

/// `prctl(PR_SET_DUMPABLE, on)`. A process that is not dumpable cannot be
/// inspected through `/proc/<pid>/{mem,environ,fd,maps,...}` or ptraced by
/// processes without `CAP_SYS_PTRACE` over its memory's user namespace.
pub fn set_dumpable(on: bool) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, on as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_GET_DUMPABLE)`.
pub fn dumpable() -> io::Result<bool> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }).map(|v| v != 0)
}

/// `prctl(PR_SET_NAME, name)`: the thread's `comm` (at most 15 bytes used).
pub fn set_thread_name(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string the kernel copies.
    cvt(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

/// Overwrites `len` bytes at address `start` of this process with `fill`
/// followed by zeros (used on the process's own argv and environment
/// strings, whose addresses come from `/proc/self/stat`).
///
/// # Safety
/// `[start, start + len)` must be writable memory of this process that no
/// live Rust reference points into (the initial argv/environment strings
/// qualify: Rust and glibc only keep raw pointers to them, which stay valid
/// and read as the new bytes).
pub unsafe fn overwrite_bytes(start: usize, len: usize, fill: &[u8]) {
    let p = start as *mut u8;
    let head = fill.len().min(len);
    // SAFETY: the caller guarantees the range is writable and unaliased;
    // `head <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(fill.as_ptr(), p, head);
        std::ptr::write_bytes(p.add(head), 0, len - head);
    }
}

/// `getgroups(2)`: the supplementary group ids of this process.
pub fn groups() -> io::Result<Vec<u32>> {
    // SAFETY: a zero size with a NULL list only returns the count.
    let n = cvt(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
    let mut v = vec![0 as libc::gid_t; n as usize];
    // SAFETY: `v` holds room for `n` gids.
    let m = cvt(unsafe { libc::getgroups(n, v.as_mut_ptr()) })?;
    v.truncate(m as usize);
    Ok(v)
}

/// Takes an open-file-description write lock on bytes `[start, start + len)`
/// of `fd` without waiting: `Ok(true)` when taken, `Ok(false)` when another
/// open file description holds part of the range. The lock goes away when
/// the last fd of this open file description is closed (for instance when
/// the process dies).
pub fn try_lock_range(fd: RawFd, start: u64, len: u64) -> io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    // SAFETY: `fl` is a valid flock for F_OFD_SETLK.
    match cvt(unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) }) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode)`.
pub fn open_rw_create(path: &Path, mode: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `path` (relative to `parent` when given) with
/// `O_NOFOLLOW`: a symlink is refused (`ELOOP`), never followed.
pub fn open_dir_nofollow(parent: Option<RawFd>, path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string; the fd is ours.
    let fd = cvt(unsafe {
        libc::openat(
            parent.unwrap_or(libc::AT_FDCWD),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `fchmod(2)`.
pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(drop)
}

/// `fchown(2)`.
pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

/// Owner (uid, gid) of an open file.
pub fn fstat_owner(fd: RawFd) -> io::Result<(u32, u32)> {
    // SAFETY: stat is plain data; zeroed is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_uid, st.st_gid))
}

/// `fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn fchownat_nofollow(
    dirfd: RawFd,
    name: &std::ffi::OsStr,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let c = cpath(Path::new(name))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    cvt(unsafe { libc::fchownat(dirfd, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// The entries of the open directory `fd` (without `.` and `..`), each
/// with whether it is a directory (not following symlinks).
pub fn dir_entries(fd: RawFd) -> io::Result<Vec<(std::ffi::OsString, bool)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{fd}"))? {
        let e = e?;
        out.push((e.file_name(), e.file_type()?.is_dir()));
    }
    Ok(out)
}

/// Tries, in a forked child, to mount an overlay inside a new user and
/// mount namespace (on a private tmpfs, so nothing of the host is touched).
/// Everything the child uses is prepared before `fork`, and it only makes
/// system calls, so a multi-threaded caller is fine.
pub fn probe_userns_overlay() -> io::Result<()> {
    let uid_map = format!("0 {} 1", geteuid());
    let gid_map = format!("0 {} 1", getgid());
    let dirs = [c"/tmp/l", c"/tmp/u", c"/tmp/w", c"/tmp/m"];
    let opts = c"lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w,userxattr";
    let step = |ok: bool, code: i32| if ok { 0 } else { code };
    // SAFETY: the child only makes system calls on data prepared above and
    // leaves with _exit.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        let write = |path: &CStr, text: &str| -> bool {
            // SAFETY: valid string; the fd is closed before returning.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return false;
                }
                let ok = libc::write(fd, text.as_ptr().cast(), text.len()) == text.len() as isize;
                libc::close(fd);
                ok
            }
        };
        // SAFETY: plain system calls with valid strings.
        let code = unsafe {
            let errno = || *libc::__errno_location();
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                errno()
            } else if !(write(c"/proc/self/setgroups", "deny")
                && write(c"/proc/self/uid_map", &uid_map)
                && write(c"/proc/self/gid_map", &gid_map))
            {
                step(false, libc::EPERM)
            } else if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                ) != 0
                || dirs.iter().any(|d| libc::mkdir(d.as_ptr(), 0o755) != 0)
                || libc::mount(
                    c"overlay".as_ptr(),
                    c"/tmp/m".as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                ) != 0
            {
                errno()
            } else {
                0
            }
        };
        exit(code.clamp(0, 255));
    }
    match wait(pid, 0)? {
        Some((_, WaitStatus::Exited(0))) => Ok(()),
        Some((_, WaitStatus::Exited(e))) => Err(io::Error::from_raw_os_error(e)),
        _ => Err(io::Error::from_raw_os_error(libc::ECHILD)),
    }
}
