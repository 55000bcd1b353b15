//! System calls for a helper process that shares the init's memory
//! (`CLONE_VM`, see [`super::spawn_beside`]) and so also its thread-local
//! storage: glibc's wrappers write `errno` there on failure, which the init
//! may be reading at that very moment. These issue the instruction directly
//! and return the errno as a value; they allocate nothing, touch no
//! thread-local state and cannot panic.

use std::ffi::CStr;
use std::os::fd::RawFd;

/// `ioctl` request that returns an fd of a socket's network namespace
/// (Linux 4.9+).
pub const SIOCGSKNS: libc::c_ulong = 0x894C;

/// A raw system call with up to four arguments: the kernel's return value,
/// a negative errno on failure.
///
/// # Safety
/// The arguments must be valid for system call `nr` (pointers to memory the
/// kernel may read or write as that call does).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn syscall4(nr: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes arguments valid for `nr`; the `syscall`
    // instruction clobbers only rcx and r11 besides rax, and uses no stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86-64 version.
///
/// # Safety
/// As there.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn syscall4(nr: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let mut x0 = a as isize;
    // SAFETY: the caller passes arguments valid for `nr`; `svc 0` takes the
    // number in x8 and returns in x0, and uses no stack.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") nr as usize,
            inlateout("x0") x0,
            in("x1") b,
            in("x2") c,
            in("x3") d,
            options(nostack),
        );
    }
    x0
}

/// See the x86-64 version.
///
/// # Safety
/// As there.
#[cfg(target_arch = "riscv64")]
#[inline(always)]
unsafe fn syscall4(nr: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let mut a0 = a as isize;
    // SAFETY: the caller passes arguments valid for `nr`; `ecall` takes the
    // number in a7 and returns in a0, and uses no stack.
    unsafe {
        std::arch::asm!(
            "ecall",
            in("a7") nr as usize,
            inlateout("a0") a0,
            in("a1") b,
            in("a2") c,
            in("a3") d,
            options(nostack),
        );
    }
    a0
}

/// A negative return as the errno, anything else as the value.
fn check(ret: isize) -> Result<isize, i32> {
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret)
    }
}

/// `unshare(2)`.
pub fn unshare(flags: libc::c_int) -> Result<(), i32> {
    // SAFETY: plain integers.
    check(unsafe { syscall4(libc::SYS_unshare, flags as usize, 0, 0, 0) }).map(drop)
}

/// `socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)`: a handle for interface
/// ioctls in the caller's network namespace.
pub fn inet_dgram_socket() -> Result<RawFd, i32> {
    let ty = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize;
    // SAFETY: plain integers.
    check(unsafe { syscall4(libc::SYS_socket, libc::AF_INET as usize, ty, 0, 0) })
        .map(|fd| fd as RawFd)
}

/// `SIOCGIFFLAGS` then `SIOCSIFFLAGS` with `IFF_UP` added, on interface
/// `name` through socket `sock`.
pub fn interface_up(sock: RawFd, name: &CStr) -> Result<(), i32> {
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req
        .ifr_name
        .iter_mut()
        .zip(name.to_bytes().iter().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name, for the
    // kernel to fill.
    check(unsafe {
        syscall4(
            libc::SYS_ioctl,
            sock as usize,
            libc::SIOCGIFFLAGS as usize,
            &mut req as *mut libc::ifreq as usize,
            0,
        )
    })?;
    // SAFETY: reading and writing the flags member of the union that
    // SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: `req` is still a valid ifreq.
    check(unsafe {
        syscall4(
            libc::SYS_ioctl,
            sock as usize,
            libc::SIOCSIFFLAGS as usize,
            &req as *const libc::ifreq as usize,
            0,
        )
    })
    .map(drop)
}

/// `ioctl(sock, SIOCGSKNS)`: a new fd (close-on-exec) of the network
/// namespace `sock` belongs to.
pub fn netns_of_socket(sock: RawFd) -> Result<RawFd, i32> {
    // SAFETY: plain integers; the kernel returns a new fd.
    check(unsafe { syscall4(libc::SYS_ioctl, sock as usize, SIOCGSKNS as usize, 0, 0) })
        .map(|fd| fd as RawFd)
}

/// `close(2)`; the result is not needed by any caller.
pub fn close(fd: RawFd) {
    // SAFETY: closing an fd number has no memory-safety effect; callers only
    // close fds they own.
    let _ = unsafe { syscall4(libc::SYS_close, fd as usize, 0, 0, 0) };
}
