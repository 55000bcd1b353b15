//! The argument-checked syscalls, as seccompiler rules: a call is allowed
//! when one of its rules matches (every condition of a rule holds), and
//! refused with `EPERM` otherwise.
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
//! `ioctl` needs a masked inequality seccompiler cannot express; it is
//! hand-written in [`super::bpf`].

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

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

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| SeccompError::Build(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conds).map_err(|e| SeccompError::Build(e.to_string()))
}

/// `(arg & mask) == value` on the low 32 bits (the kernel reads these
/// arguments as 32-bit ints, so high bits must not change the answer).
fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition, SeccompError> {
    cond(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
}

/// `arg == value` on the low 32 bits.
fn eq(arg: u8, value: u64) -> Result<SeccompCondition, SeccompError> {
    cond(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// A mode argument without set-id bits.
fn no_set_id(mode_arg: u8) -> Result<Vec<SeccompRule>, SeccompError> {
    Ok(vec![rule(vec![masked(mode_arg, SET_ID_BITS, 0)?])?])
}

/// `open`-like calls: allowed when they create nothing, or create without
/// set-id bits.
fn open_without_set_id(flags_arg: u8, mode_arg: u8) -> Result<Vec<SeccompRule>, SeccompError> {
    Ok(vec![
        rule(vec![masked(flags_arg, CREATING_OPEN_FLAGS, 0)?])?,
        rule(vec![masked(mode_arg, SET_ID_BITS, 0)?])?,
    ])
}

/// The argument-checked syscalls for `opts`, as seccompiler rules.
pub fn conditional_rules(
    opts: &FilterOptions,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    map.insert(
        libc::SYS_clone,
        vec![rule(vec![masked(0, CLONE_NAMESPACE_FLAGS, 0)?])?],
    );
    let mut socket = Vec::new();
    for &f in &SOCKET_FAMILIES {
        if f == libc::AF_NETLINK {
            for &p in &NETLINK_PROTOCOLS {
                socket.push(rule(vec![eq(0, f as u64)?, eq(2, p)?])?);
            }
        } else {
            socket.push(rule(vec![eq(0, f as u64)?])?);
        }
    }
    map.insert(libc::SYS_socket, socket);
    map.insert(
        libc::SYS_socketpair,
        vec![rule(vec![eq(0, libc::AF_UNIX as u64)?])?],
    );
    map.insert(
        libc::SYS_personality,
        PERSONALITIES
            .iter()
            .map(|&p| rule(vec![cond(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, p)?]))
            .collect::<Result<_, _>>()?,
    );
    let mut memfd = vec![masked(1, MFD_EXEC, 0)?];
    if opts.require_noexec_memfd {
        memfd.push(masked(1, MFD_NOEXEC_SEAL, MFD_NOEXEC_SEAL)?);
    }
    map.insert(sysno::memfd_create, vec![rule(memfd)?]);
    map.insert(
        sysno::execveat,
        vec![rule(vec![masked(4, libc::AT_EMPTY_PATH as u64, 0)?])?],
    );
    map.insert(sysno::fchmod, no_set_id(1)?);
    map.insert(sysno::fchmodat, no_set_id(2)?);
    map.insert(sysno::fchmodat2, no_set_id(2)?);
    map.insert(sysno::mknodat, no_set_id(2)?);
    map.insert(sysno::openat, open_without_set_id(2, 3)?);
    #[cfg(target_arch = "x86_64")]
    {
        map.insert(sysno::chmod, no_set_id(1)?);
        map.insert(sysno::creat, no_set_id(1)?);
        map.insert(sysno::mknod, no_set_id(1)?);
        map.insert(sysno::open, open_without_set_id(1, 2)?);
    }
    map.insert(
        sysno::prctl,
        PRCTL_OPTIONS
            .iter()
            .map(|&(_, o)| rule(vec![eq(0, o)?]))
            .collect::<Result<_, _>>()?,
    );
    Ok(map)
}
