//! The argument-checked syscalls, as hand-written classic BPF: a call is
//! allowed when its arguments pass its check, and refused with `EPERM`
//! otherwise.
//!
//! * `clone`: no namespace flags (`unshare`/`setns` are refused outright).
//! * `socket`: unix, inet, inet6, and netlink `NETLINK_ROUTE` only (what
//!   glibc's `getaddrinfo`/`getifaddrs` need); `socketpair`: unix only.
//! * `personality`: the values container runtimes allow (never
//!   `READ_IMPLIES_EXEC`).
//! * `memfd_create`: never `MFD_EXEC`; and, where the kernel's
//!   `vm.memfd_noexec=2` is not in force for the sandbox
//!   ([`FilterOptions::require_noexec_memfd`]), only with `MFD_NOEXEC_SEAL`,
//!   so no memfd can ever be executed.
//! * `execveat`: not on an fd alone (`AT_EMPTY_PATH`, i.e. `fexecve`).
//! * the chmod family, `open`/`openat`/`creat` with `O_CREAT`/`O_TMPFILE`,
//!   `mknod`/`mknodat`: never set-uid or set-gid mode bits, so a worker
//!   cannot leave a set-id binary in a writable bind for the host (or another
//!   cell) to run.
//! * `prctl`: only the options CPython, glibc, torch and the zygote's
//!   confinement use ([`PRCTL_OPTIONS`]).
//!
//! `ioctl` is checked in [`super::bpf`]'s prefix.

use seccompiler::sock_filter;

use super::bpf::{
    arg_low, Asm, To, JEQ_K, JSET_K, LD_W_ABS, RET_K, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO,
};
use super::syscalls::sysno;
use super::{FilterOptions, SeccompError};

/// Namespace flags `clone` may not carry.
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64
    | 0x80; // CLONE_NEWTIME

/// Socket families a worker may create (netlink: [`NETLINK_PROTOCOLS`] only).
pub const SOCKET_FAMILIES: [i32; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// Netlink protocols a worker may open: `NETLINK_ROUTE`, which glibc uses to
/// list addresses (`getaddrinfo` with `AI_ADDRCONFIG`, `getifaddrs`). Changing
/// anything through it needs `CAP_NET_ADMIN`, which the worker lacks.
pub const NETLINK_PROTOCOLS: [u64; 1] = [libc::NETLINK_ROUTE as u64];

/// `personality(2)` values container runtimes allow (`PER_LINUX`,
/// `PER_LINUX32`, `UNAME26` variants and the query value).
pub const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `memfd_create` flag: the memfd may be executed.
pub const MFD_EXEC: u64 = 0x10;
/// `memfd_create` flag: the memfd can never be executed (sealed, mode
/// without x bits).
pub const MFD_NOEXEC_SEAL: u64 = 0x8;

/// Set-user-ID and set-group-ID mode bits.
pub const SET_ID_BITS: u64 = (libc::S_ISUID | libc::S_ISGID) as u64;

/// `open` flags that create a file (and so take a mode).
pub const CREATING_OPEN_FLAGS: u64 =
    (libc::O_CREAT | (libc::O_TMPFILE & !libc::O_DIRECTORY)) as u64;

/// `prctl` options a worker may use, with why.
pub const PRCTL_OPTIONS: &[(&str, u64)] = &[
    ("PR_SET_PDEATHSIG", 1),        // multiprocessing helpers, torch DataLoader
    ("PR_GET_PDEATHSIG", 2),        //
    ("PR_GET_DUMPABLE", 3),         //
    ("PR_SET_DUMPABLE", 4),         // the zygote's workers make themselves unreadable
    ("PR_GET_KEEPCAPS", 7),         // libcap
    ("PR_SET_KEEPCAPS", 8),         // setpriv, libcap: keep caps across setuid
    ("PR_SET_NAME", 15),            // thread names
    ("PR_GET_NAME", 16),            //
    ("PR_GET_SECCOMP", 21),         //
    ("PR_SET_SECCOMP", 22),         // stacking a filter of one's own only narrows
    ("PR_CAPBSET_READ", 23),        // libcap
    ("PR_CAPBSET_DROP", 24),        // the zygote's workers drop what it kept
    ("PR_GET_SECUREBITS", 27),      // libcap
    ("PR_SET_TIMERSLACK", 29),      // event loops
    ("PR_GET_TIMERSLACK", 30),      //
    ("PR_SET_CHILD_SUBREAPER", 36), // process managers inside the sandbox
    ("PR_GET_CHILD_SUBREAPER", 37), //
    ("PR_SET_NO_NEW_PRIVS", 38),    //
    ("PR_GET_NO_NEW_PRIVS", 39),    //
    ("PR_GET_TID_ADDRESS", 40),     //
    ("PR_SET_THP_DISABLE", 41),     // allocators
    ("PR_GET_THP_DISABLE", 42),     //
    ("PR_CAP_AMBIENT", 47),         // libcap; raising needs the capability already
    ("PR_SVE_SET_VL", 50),          // glibc on arm64
    ("PR_SVE_GET_VL", 51),          //
    ("PR_GET_SPECULATION_CTRL", 52),
    ("PR_SET_SPECULATION_CTRL", 53), // a process hardening itself
    ("PR_SET_TAGGED_ADDR_CTRL", 55), // glibc on arm64 (MTE)
    ("PR_GET_TAGGED_ADDR_CTRL", 56),
    ("PR_SET_MDWE", 65), // memory-deny-write-execute for itself
    ("PR_GET_MDWE", 66),
    ("PR_GET_AUXV", 0x4155_5856),
    ("PR_SET_VMA", 0x5356_4d41), // glibc names its anonymous mappings
];

/// Which check a conditional syscall gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// `clone`: no namespace flags in argument 0.
    Clone,
    /// `socket`: an allowed family (and netlink protocol).
    Socket,
    /// `socketpair`: unix only.
    SocketPair,
    /// `personality`: one of [`PERSONALITIES`] (all 64 bits).
    Personality,
    /// `memfd_create`: flags in argument 1.
    Memfd,
    /// `execveat`: no `AT_EMPTY_PATH` in argument 4.
    Execveat,
    /// No set-id bits in the mode argument 1 or 2.
    Mode1,
    Mode2,
    /// `open`-like: flags argument, then mode argument when it creates.
    Open12,
    Open23,
    /// `prctl`: an option of [`PRCTL_OPTIONS`].
    Prctl,
}

/// The argument-checked syscalls and their checks.
fn checks() -> Vec<(i64, Check)> {
    let mut v = vec![
        (libc::SYS_clone, Check::Clone),
        (libc::SYS_socket, Check::Socket),
        (libc::SYS_socketpair, Check::SocketPair),
        (libc::SYS_personality, Check::Personality),
        (sysno::memfd_create, Check::Memfd),
        (sysno::execveat, Check::Execveat),
        (sysno::fchmod, Check::Mode1),
        (sysno::fchmodat, Check::Mode2),
        (sysno::fchmodat2, Check::Mode2),
        (sysno::mknodat, Check::Mode2),
        (sysno::openat, Check::Open23),
        (sysno::prctl, Check::Prctl),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        (sysno::chmod, Check::Mode1),
        (sysno::creat, Check::Mode1),
        (sysno::mknod, Check::Mode1),
        (sysno::open, Check::Open12),
    ]);
    v
}

/// The syscalls allowed only when their arguments pass a check.
pub fn conditional_syscalls() -> Vec<i64> {
    checks().into_iter().map(|(n, _)| n).collect()
}

/// Loads the low word of argument `arg` and jumps to `eperm` when any of
/// `bits` is set in it, else to `allow` (a check of one flag word).
fn deny_if_any_bit(a: &mut Asm, arg: u32, bits: u32) {
    a.op(LD_W_ABS, arg_low(arg));
    a.jump(JSET_K, bits, To::Label("eperm"), To::Label("allow"));
}

/// A 32-bit immediate, or a build error naming what did not fit.
fn imm(what: &str, v: u64) -> Result<u32, SeccompError> {
    u32::try_from(v).map_err(|_| SeccompError::Build(format!("{what} {v:#x} does not fit 32 bits")))
}

/// The argument checks as classic BPF, entered with the syscall number in
/// the accumulator: each checked syscall jumps to its block, which answers
/// `ALLOW` or `EPERM`; any other number gets `EPERM`. Argument compares read
/// the low 32 bits (the kernel reads these arguments as 32-bit ints) except
/// `personality`'s, which reads all 64. One shared `ALLOW` and `EPERM` at the
/// end; every block is a few instructions, so the whole part stays short
/// (the kernel converts, JIT-compiles and pre-evaluates each instruction
/// when the filter is installed).
pub fn conditional_program(opts: &FilterOptions) -> Result<Vec<sock_filter>, SeccompError> {
    let mut a = Asm::default();
    // Dispatch on the number; blocks are shared between syscalls with the
    // same check.
    let mut used: Vec<Check> = Vec::new();
    for (nr, check) in checks() {
        a.jump(JEQ_K, nr as u32, To::Label(label(check)), To::Next);
        if !used.contains(&check) {
            used.push(check);
        }
    }
    // Not an argument-checked syscall (an always-true compare: `Asm` sets
    // only conditional jumps' offsets).
    a.jump(JEQ_K, 0, To::Label("eperm"), To::Label("eperm"));
    for check in used {
        a.label(label(check));
        match check {
            Check::Clone => {
                a.op(LD_W_ABS, arg_low(0));
                a.jump(
                    JSET_K,
                    imm("clone flags", CLONE_NAMESPACE_FLAGS)?,
                    To::Label("eperm"),
                    To::Label("allow"),
                );
            }
            Check::Socket => {
                a.op(LD_W_ABS, arg_low(0));
                for &f in &SOCKET_FAMILIES {
                    let to = if f == libc::AF_NETLINK {
                        To::Label("netlink")
                    } else {
                        To::Label("allow")
                    };
                    a.jump(JEQ_K, f as u32, to, To::Next);
                }
                a.jump(JEQ_K, 0, To::Label("eperm"), To::Label("eperm"));
                a.label("netlink");
                a.op(LD_W_ABS, arg_low(2));
                for &p in &NETLINK_PROTOCOLS {
                    a.jump(
                        JEQ_K,
                        imm("netlink protocol", p)?,
                        To::Label("allow"),
                        To::Next,
                    );
                }
                a.jump(JEQ_K, 0, To::Label("eperm"), To::Label("eperm"));
            }
            Check::SocketPair => {
                a.op(LD_W_ABS, arg_low(0));
                a.jump(
                    JEQ_K,
                    libc::AF_UNIX as u32,
                    To::Label("allow"),
                    To::Label("eperm"),
                );
            }
            Check::Personality => {
                a.op(LD_W_ABS, arg_low(0) + 4);
                a.jump(JEQ_K, 0, To::Next, To::Label("eperm"));
                a.op(LD_W_ABS, arg_low(0));
                for &p in &PERSONALITIES {
                    a.jump(JEQ_K, imm("personality", p)?, To::Label("allow"), To::Next);
                }
                a.jump(JEQ_K, 0, To::Label("eperm"), To::Label("eperm"));
            }
            Check::Memfd if opts.require_noexec_memfd => {
                a.op(LD_W_ABS, arg_low(1));
                a.jump(JSET_K, MFD_EXEC as u32, To::Label("eperm"), To::Next);
                a.jump(
                    JSET_K,
                    MFD_NOEXEC_SEAL as u32,
                    To::Label("allow"),
                    To::Label("eperm"),
                );
            }
            Check::Memfd => deny_if_any_bit(&mut a, 1, MFD_EXEC as u32),
            Check::Execveat => deny_if_any_bit(&mut a, 4, libc::AT_EMPTY_PATH as u32),
            Check::Mode1 => deny_if_any_bit(&mut a, 1, SET_ID_BITS as u32),
            Check::Mode2 => deny_if_any_bit(&mut a, 2, SET_ID_BITS as u32),
            Check::Open12 | Check::Open23 => {
                let (flags, mode) = if check == Check::Open12 {
                    (1, 2)
                } else {
                    (2, 3)
                };
                a.op(LD_W_ABS, arg_low(flags));
                a.jump(
                    JSET_K,
                    CREATING_OPEN_FLAGS as u32,
                    To::Next,
                    To::Label("allow"),
                );
                deny_if_any_bit(&mut a, mode, SET_ID_BITS as u32);
            }
            Check::Prctl => {
                a.op(LD_W_ABS, arg_low(0));
                for &(name, o) in PRCTL_OPTIONS {
                    a.jump(JEQ_K, imm(name, o)?, To::Label("allow"), To::Next);
                }
                a.jump(JEQ_K, 0, To::Label("eperm"), To::Label("eperm"));
            }
        }
    }
    a.label("allow");
    a.op(RET_K, SECCOMP_RET_ALLOW);
    a.label("eperm");
    a.op(RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32);
    Ok(a.finish())
}

/// The label of a check's block.
fn label(check: Check) -> &'static str {
    match check {
        Check::Clone => "clone",
        Check::Socket => "socket",
        Check::SocketPair => "socketpair",
        Check::Personality => "personality",
        Check::Memfd => "memfd",
        Check::Execveat => "execveat",
        Check::Mode1 => "mode1",
        Check::Mode2 => "mode2",
        Check::Open12 => "open12",
        Check::Open23 => "open23",
        Check::Prctl => "prctl",
    }
}
