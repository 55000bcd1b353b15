//! The seccomp wall: an allow-list wide enough for CPython, numpy and torch,
//! modelled on the default profile of container runtimes (Docker/Podman),
//! built with seccompiler. Everything else fails with `EPERM`.
//!
//! Explicitly refused (and checked by the tests): the mount family,
//! `pivot_root`, `chroot`, `ptrace`, `process_vm_readv/writev`, `bpf`,
//! `perf_event_open`, the key syscalls, `kexec_*`, module loading,
//! `open_by_handle_at`, `name_to_handle_at`, `userfaultfd`, `io_uring_*`,
//! `unshare`, `setns`, `clone` with namespace flags, the `TIOCSTI` and
//! `TIOCLINUX` ioctls, socket families other than unix/inet/inet6/netlink,
//! and x32-ABI syscall numbers. `clone3` returns `ENOSYS` so glibc falls back
//! to `clone`, whose flags the filter can inspect.
//!
//! The filter is installed last, right before the command starts.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscall numbers newer than the `libc` crate's tables (the same on every
/// architecture since the unified numbering at 424).
mod nr {
    #[cfg(target_arch = "x86_64")]
    pub const IO_PGETEVENTS: i64 = 333;
    #[cfg(not(target_arch = "x86_64"))]
    pub const IO_PGETEVENTS: i64 = 292;
    pub const CACHESTAT: i64 = 451;
    pub const MAP_SHADOW_STACK: i64 = 453;
    pub const FUTEX_WAKE: i64 = 454;
    pub const FUTEX_WAIT: i64 = 455;
    pub const FUTEX_REQUEUE: i64 = 456;
    pub const SETXATTRAT: i64 = 463;
    pub const GETXATTRAT: i64 = 464;
    pub const LISTXATTRAT: i64 = 465;
    pub const REMOVEXATTRAT: i64 = 466;
}

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), paste_sys!($name))),*]
    };
}
macro_rules! paste_sys {
    ($name:ident) => {
        sysno::$name
    };
}

/// `libc::SYS_*` under their plain names, so the lists read like syscall names.
#[allow(non_upper_case_globals)]
mod sysno {
    pub use libc::{
        SYS_accept as accept, SYS_accept4 as accept4, SYS_bind as bind, SYS_brk as brk,
        SYS_capget as capget, SYS_capset as capset, SYS_chdir as chdir,
        SYS_clock_getres as clock_getres, SYS_clock_gettime as clock_gettime,
        SYS_clock_nanosleep as clock_nanosleep, SYS_close as close, SYS_close_range as close_range,
        SYS_connect as connect, SYS_copy_file_range as copy_file_range, SYS_dup as dup,
        SYS_dup3 as dup3, SYS_epoll_create1 as epoll_create1, SYS_epoll_ctl as epoll_ctl,
        SYS_epoll_pwait as epoll_pwait, SYS_epoll_pwait2 as epoll_pwait2, SYS_eventfd2 as eventfd2,
        SYS_execve as execve, SYS_execveat as execveat, SYS_exit as exit,
        SYS_exit_group as exit_group, SYS_faccessat as faccessat, SYS_faccessat2 as faccessat2,
        SYS_fadvise64 as fadvise64, SYS_fallocate as fallocate, SYS_fchdir as fchdir,
        SYS_fchmod as fchmod, SYS_fchmodat as fchmodat, SYS_fchmodat2 as fchmodat2,
        SYS_fchown as fchown, SYS_fchownat as fchownat, SYS_fcntl as fcntl,
        SYS_fdatasync as fdatasync, SYS_fgetxattr as fgetxattr, SYS_flistxattr as flistxattr,
        SYS_flock as flock, SYS_fremovexattr as fremovexattr, SYS_fsetxattr as fsetxattr,
        SYS_fstatfs as fstatfs, SYS_fsync as fsync, SYS_ftruncate as ftruncate, SYS_futex as futex,
        SYS_futex_waitv as futex_waitv, SYS_get_mempolicy as get_mempolicy,
        SYS_get_robust_list as get_robust_list, SYS_getcpu as getcpu, SYS_getcwd as getcwd,
        SYS_getdents64 as getdents64, SYS_getegid as getegid, SYS_geteuid as geteuid,
        SYS_getgid as getgid, SYS_getgroups as getgroups, SYS_getitimer as getitimer,
        SYS_getpeername as getpeername, SYS_getpgid as getpgid, SYS_getpid as getpid,
        SYS_getppid as getppid, SYS_getpriority as getpriority, SYS_getrandom as getrandom,
        SYS_getresgid as getresgid, SYS_getresuid as getresuid, SYS_getrlimit as getrlimit,
        SYS_getrusage as getrusage, SYS_getsid as getsid, SYS_getsockname as getsockname,
        SYS_getsockopt as getsockopt, SYS_gettid as gettid, SYS_gettimeofday as gettimeofday,
        SYS_getuid as getuid, SYS_getxattr as getxattr, SYS_inotify_add_watch as inotify_add_watch,
        SYS_inotify_init1 as inotify_init1, SYS_inotify_rm_watch as inotify_rm_watch,
        SYS_io_cancel as io_cancel, SYS_io_destroy as io_destroy, SYS_io_getevents as io_getevents,
        SYS_io_setup as io_setup, SYS_io_submit as io_submit, SYS_ioprio_get as ioprio_get,
        SYS_ioprio_set as ioprio_set, SYS_kill as kill, SYS_landlock_add_rule as landlock_add_rule,
        SYS_landlock_create_ruleset as landlock_create_ruleset,
        SYS_landlock_restrict_self as landlock_restrict_self, SYS_lgetxattr as lgetxattr,
        SYS_linkat as linkat, SYS_listen as listen, SYS_listxattr as listxattr,
        SYS_llistxattr as llistxattr, SYS_lremovexattr as lremovexattr, SYS_lseek as lseek,
        SYS_lsetxattr as lsetxattr, SYS_madvise as madvise, SYS_mbind as mbind,
        SYS_membarrier as membarrier, SYS_memfd_create as memfd_create, SYS_mincore as mincore,
        SYS_mkdirat as mkdirat, SYS_mknodat as mknodat, SYS_mlock as mlock, SYS_mlock2 as mlock2,
        SYS_mlockall as mlockall, SYS_mmap as mmap, SYS_mprotect as mprotect,
        SYS_mq_getsetattr as mq_getsetattr, SYS_mq_notify as mq_notify, SYS_mq_open as mq_open,
        SYS_mq_timedreceive as mq_timedreceive, SYS_mq_timedsend as mq_timedsend,
        SYS_mq_unlink as mq_unlink, SYS_mremap as mremap, SYS_mseal as mseal, SYS_msgctl as msgctl,
        SYS_msgget as msgget, SYS_msgrcv as msgrcv, SYS_msgsnd as msgsnd, SYS_msync as msync,
        SYS_munlock as munlock, SYS_munlockall as munlockall, SYS_munmap as munmap,
        SYS_nanosleep as nanosleep, SYS_newfstatat as newfstatat, SYS_openat as openat,
        SYS_openat2 as openat2, SYS_pidfd_open as pidfd_open,
        SYS_pidfd_send_signal as pidfd_send_signal, SYS_pipe2 as pipe2,
        SYS_pkey_alloc as pkey_alloc, SYS_pkey_free as pkey_free,
        SYS_pkey_mprotect as pkey_mprotect, SYS_ppoll as ppoll, SYS_prctl as prctl,
        SYS_pread64 as pread64, SYS_preadv as preadv, SYS_preadv2 as preadv2,
        SYS_prlimit64 as prlimit64, SYS_pselect6 as pselect6, SYS_pwrite64 as pwrite64,
        SYS_pwritev as pwritev, SYS_pwritev2 as pwritev2, SYS_read as read,
        SYS_readahead as readahead, SYS_readlinkat as readlinkat, SYS_readv as readv,
        SYS_recvfrom as recvfrom, SYS_recvmmsg as recvmmsg, SYS_recvmsg as recvmsg,
        SYS_remap_file_pages as remap_file_pages, SYS_removexattr as removexattr,
        SYS_renameat as renameat, SYS_renameat2 as renameat2,
        SYS_restart_syscall as restart_syscall, SYS_rseq as rseq, SYS_rt_sigaction as rt_sigaction,
        SYS_rt_sigpending as rt_sigpending, SYS_rt_sigprocmask as rt_sigprocmask,
        SYS_rt_sigqueueinfo as rt_sigqueueinfo, SYS_rt_sigreturn as rt_sigreturn,
        SYS_rt_sigsuspend as rt_sigsuspend, SYS_rt_sigtimedwait as rt_sigtimedwait,
        SYS_rt_tgsigqueueinfo as rt_tgsigqueueinfo,
        SYS_sched_get_priority_max as sched_get_priority_max,
        SYS_sched_get_priority_min as sched_get_priority_min,
        SYS_sched_getaffinity as sched_getaffinity, SYS_sched_getattr as sched_getattr,
        SYS_sched_getparam as sched_getparam, SYS_sched_getscheduler as sched_getscheduler,
        SYS_sched_rr_get_interval as sched_rr_get_interval,
        SYS_sched_setaffinity as sched_setaffinity, SYS_sched_setattr as sched_setattr,
        SYS_sched_setparam as sched_setparam, SYS_sched_setscheduler as sched_setscheduler,
        SYS_sched_yield as sched_yield, SYS_seccomp as seccomp, SYS_semctl as semctl,
        SYS_semget as semget, SYS_semop as semop, SYS_semtimedop as semtimedop,
        SYS_sendmmsg as sendmmsg, SYS_sendmsg as sendmsg, SYS_sendto as sendto,
        SYS_set_mempolicy as set_mempolicy, SYS_set_robust_list as set_robust_list,
        SYS_set_tid_address as set_tid_address, SYS_setfsgid as setfsgid, SYS_setfsuid as setfsuid,
        SYS_setgid as setgid, SYS_setgroups as setgroups, SYS_setitimer as setitimer,
        SYS_setpgid as setpgid, SYS_setpriority as setpriority, SYS_setregid as setregid,
        SYS_setresgid as setresgid, SYS_setresuid as setresuid, SYS_setreuid as setreuid,
        SYS_setrlimit as setrlimit, SYS_setsid as setsid, SYS_setsockopt as setsockopt,
        SYS_setuid as setuid, SYS_setxattr as setxattr, SYS_shmat as shmat, SYS_shmctl as shmctl,
        SYS_shmdt as shmdt, SYS_shmget as shmget, SYS_shutdown as shutdown,
        SYS_sigaltstack as sigaltstack, SYS_signalfd4 as signalfd4, SYS_splice as splice,
        SYS_statfs as statfs, SYS_statx as statx, SYS_symlinkat as symlinkat, SYS_sync as sync,
        SYS_sync_file_range as sync_file_range, SYS_syncfs as syncfs, SYS_sysinfo as sysinfo,
        SYS_tee as tee, SYS_tgkill as tgkill, SYS_timer_create as timer_create,
        SYS_timer_delete as timer_delete, SYS_timer_getoverrun as timer_getoverrun,
        SYS_timer_gettime as timer_gettime, SYS_timer_settime as timer_settime,
        SYS_timerfd_create as timerfd_create, SYS_timerfd_gettime as timerfd_gettime,
        SYS_timerfd_settime as timerfd_settime, SYS_times as times, SYS_tkill as tkill,
        SYS_truncate as truncate, SYS_umask as umask, SYS_uname as uname, SYS_unlinkat as unlinkat,
        SYS_utimensat as utimensat, SYS_vmsplice as vmsplice, SYS_wait4 as wait4,
        SYS_waitid as waitid, SYS_write as write, SYS_writev as writev,
    };
    // Same on every architecture (unified numbering).
    pub const io_pgetevents: i64 = super::nr::IO_PGETEVENTS;
    pub const cachestat: i64 = super::nr::CACHESTAT;
    pub const map_shadow_stack: i64 = super::nr::MAP_SHADOW_STACK;
    pub const futex_wake: i64 = super::nr::FUTEX_WAKE;
    pub const futex_wait: i64 = super::nr::FUTEX_WAIT;
    pub const futex_requeue: i64 = super::nr::FUTEX_REQUEUE;
    pub const setxattrat: i64 = super::nr::SETXATTRAT;
    pub const getxattrat: i64 = super::nr::GETXATTRAT;
    pub const listxattrat: i64 = super::nr::LISTXATTRAT;
    pub const removexattrat: i64 = super::nr::REMOVEXATTRAT;

    #[cfg(target_arch = "x86_64")]
    pub use libc::{
        SYS_access as access, SYS_alarm as alarm, SYS_arch_prctl as arch_prctl, SYS_chmod as chmod,
        SYS_chown as chown, SYS_creat as creat, SYS_dup2 as dup2, SYS_epoll_create as epoll_create,
        SYS_epoll_wait as epoll_wait, SYS_eventfd as eventfd, SYS_fork as fork, SYS_fstat as fstat,
        SYS_futimesat as futimesat, SYS_getdents as getdents, SYS_getpgrp as getpgrp,
        SYS_inotify_init as inotify_init, SYS_lchown as lchown, SYS_link as link,
        SYS_lstat as lstat, SYS_mkdir as mkdir, SYS_mknod as mknod, SYS_open as open,
        SYS_pause as pause, SYS_pipe as pipe, SYS_poll as poll, SYS_readlink as readlink,
        SYS_rename as rename, SYS_rmdir as rmdir, SYS_select as select, SYS_sendfile as sendfile,
        SYS_signalfd as signalfd, SYS_stat as stat, SYS_symlink as symlink, SYS_time as time,
        SYS_unlink as unlink, SYS_utime as utime, SYS_utimes as utimes, SYS_vfork as vfork,
    };
    #[cfg(not(target_arch = "x86_64"))]
    pub use libc::{SYS_fstat as fstat, SYS_sendfile as sendfile};
}

/// Syscalls allowed with any arguments, on every architecture.
pub const ALLOWED: &[(&str, i64)] = syscalls![
    accept,
    accept4,
    bind,
    brk,
    cachestat,
    capget,
    capset,
    chdir,
    clock_getres,
    clock_gettime,
    clock_nanosleep,
    close,
    close_range,
    connect,
    copy_file_range,
    dup,
    dup3,
    epoll_create1,
    epoll_ctl,
    epoll_pwait,
    epoll_pwait2,
    eventfd2,
    execve,
    execveat,
    exit,
    exit_group,
    faccessat,
    faccessat2,
    fadvise64,
    fallocate,
    fchdir,
    fchmod,
    fchmodat,
    fchmodat2,
    fchown,
    fchownat,
    fcntl,
    fdatasync,
    fgetxattr,
    flistxattr,
    flock,
    fremovexattr,
    fsetxattr,
    fstat,
    fstatfs,
    fsync,
    ftruncate,
    futex,
    futex_requeue,
    futex_wait,
    futex_waitv,
    futex_wake,
    get_mempolicy,
    get_robust_list,
    getcpu,
    getcwd,
    getdents64,
    getegid,
    geteuid,
    getgid,
    getgroups,
    getitimer,
    getpeername,
    getpgid,
    getpid,
    getppid,
    getpriority,
    getrandom,
    getresgid,
    getresuid,
    getrlimit,
    getrusage,
    getsid,
    getsockname,
    getsockopt,
    gettid,
    gettimeofday,
    getuid,
    getxattr,
    getxattrat,
    inotify_add_watch,
    inotify_init1,
    inotify_rm_watch,
    io_cancel,
    io_destroy,
    io_getevents,
    io_pgetevents,
    io_setup,
    io_submit,
    ioprio_get,
    ioprio_set,
    kill,
    landlock_add_rule,
    landlock_create_ruleset,
    landlock_restrict_self,
    lgetxattr,
    linkat,
    listen,
    listxattr,
    listxattrat,
    llistxattr,
    lremovexattr,
    lseek,
    lsetxattr,
    madvise,
    map_shadow_stack,
    mbind,
    membarrier,
    memfd_create,
    mincore,
    mkdirat,
    mknodat,
    mlock,
    mlock2,
    mlockall,
    mmap,
    mprotect,
    mq_getsetattr,
    mq_notify,
    mq_open,
    mq_timedreceive,
    mq_timedsend,
    mq_unlink,
    mremap,
    mseal,
    msgctl,
    msgget,
    msgrcv,
    msgsnd,
    msync,
    munlock,
    munlockall,
    munmap,
    nanosleep,
    newfstatat,
    openat,
    openat2,
    pidfd_open,
    pidfd_send_signal,
    pipe2,
    pkey_alloc,
    pkey_free,
    pkey_mprotect,
    ppoll,
    prctl,
    pread64,
    preadv,
    preadv2,
    prlimit64,
    pselect6,
    pwrite64,
    pwritev,
    pwritev2,
    read,
    readahead,
    readlinkat,
    readv,
    recvfrom,
    recvmmsg,
    recvmsg,
    remap_file_pages,
    removexattr,
    removexattrat,
    renameat,
    renameat2,
    restart_syscall,
    rseq,
    rt_sigaction,
    rt_sigpending,
    rt_sigprocmask,
    rt_sigqueueinfo,
    rt_sigreturn,
    rt_sigsuspend,
    rt_sigtimedwait,
    rt_tgsigqueueinfo,
    sched_get_priority_max,
    sched_get_priority_min,
    sched_getaffinity,
    sched_getattr,
    sched_getparam,
    sched_getscheduler,
    sched_rr_get_interval,
    sched_setaffinity,
    sched_setattr,
    sched_setparam,
    sched_setscheduler,
    sched_yield,
    seccomp,
    semctl,
    semget,
    semop,
    semtimedop,
    sendfile,
    sendmmsg,
    sendmsg,
    sendto,
    set_mempolicy,
    set_robust_list,
    set_tid_address,
    setfsgid,
    setfsuid,
    setgid,
    setgroups,
    setitimer,
    setpgid,
    setpriority,
    setregid,
    setresgid,
    setresuid,
    setreuid,
    setrlimit,
    setsid,
    setsockopt,
    setuid,
    setxattr,
    setxattrat,
    shmat,
    shmctl,
    shmdt,
    shmget,
    shutdown,
    sigaltstack,
    signalfd4,
    splice,
    statfs,
    statx,
    symlinkat,
    sync,
    sync_file_range,
    syncfs,
    sysinfo,
    tee,
    tgkill,
    timer_create,
    timer_delete,
    timer_getoverrun,
    timer_gettime,
    timer_settime,
    timerfd_create,
    timerfd_gettime,
    timerfd_settime,
    times,
    tkill,
    truncate,
    umask,
    uname,
    unlinkat,
    utimensat,
    vmsplice,
    wait4,
    waitid,
    write,
    writev,
];

/// Legacy x86-64 syscalls that glibc and CPython still use there.
#[cfg(target_arch = "x86_64")]
pub const ALLOWED_ARCH: &[(&str, i64)] = syscalls![
    access,
    alarm,
    arch_prctl,
    chmod,
    chown,
    creat,
    dup2,
    epoll_create,
    epoll_wait,
    eventfd,
    fork,
    futimesat,
    getdents,
    getpgrp,
    inotify_init,
    lchown,
    link,
    lstat,
    mkdir,
    mknod,
    open,
    pause,
    pipe,
    poll,
    readlink,
    rename,
    rmdir,
    select,
    signalfd,
    stat,
    symlink,
    time,
    unlink,
    utime,
    utimes,
    vfork,
];
/// Legacy syscalls of this architecture (none outside x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub const ALLOWED_ARCH: &[(&str, i64)] = &[];

/// Syscalls the filter must refuse, by family (used by the tests and the
/// escape suite to check the filter, and by SECURITY.md).
pub const DENIED_FAMILIES: &[(&str, &[&str])] = &[
    (
        "mount",
        &[
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
        ],
    ),
    (
        "ptrace",
        &[
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "pidfd_getfd",
            "kcmp",
        ],
    ),
    ("bpf/perf", &["bpf", "perf_event_open"]),
    ("keys", &["keyctl", "add_key", "request_key"]),
    (
        "kexec/modules",
        &[
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
        ],
    ),
    ("handles", &["open_by_handle_at", "name_to_handle_at"]),
    ("userfaultfd", &["userfaultfd"]),
    (
        "io_uring",
        &["io_uring_setup", "io_uring_enter", "io_uring_register"],
    ),
    ("namespaces", &["unshare", "setns"]),
    (
        "system",
        &[
            "reboot",
            "swapon",
            "swapoff",
            "syslog",
            "acct",
            "settimeofday",
            "clock_settime",
            "adjtimex",
            "sethostname",
            "setdomainname",
            "iopl",
            "ioperm",
            "quotactl",
        ],
    ),
];

/// Namespace flags `clone` may not carry.
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64
    | 0x80; // CLONE_NEWTIME

/// Socket families a worker may create.
pub const SOCKET_FAMILIES: [i32; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// `personality(2)` values container runtimes allow (`PER_LINUX`,
/// `PER_LINUX32`, `UNAME26` variants and the query value).
pub const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Terminal ioctls that inject input or talk to the console.
#[allow(clippy::unnecessary_cast)] // the ioctl type differs between libcs
pub const DENIED_IOCTLS: [u64; 2] = [libc::TIOCSTI as u64, libc::TIOCLINUX as u64];

/// Marker bit of x32-ABI syscall numbers on x86-64.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

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

/// The argument-checked syscalls, as seccompiler rules (allowed when one
/// rule matches): `clone` without namespace flags, `ioctl` but terminal
/// injection, `socket`/`socketpair` of the allowed families, `personality`
/// with the usual values.
pub fn conditional_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    use SeccompCmpArgLen::{Dword, Qword};
    use SeccompCmpOp::{Eq, MaskedEq, Ne};
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // clone: only without namespace flags (the kernel reads the low 32 bits).
    map.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Dword,
            MaskedEq(CLONE_NAMESPACE_FLAGS),
            0,
        )?])?],
    );
    // ioctl: anything but terminal input injection (the command is an int).
    map.insert(
        libc::SYS_ioctl,
        vec![rule(
            DENIED_IOCTLS
                .iter()
                .map(|&c| cond(1, Dword, Ne, c))
                .collect::<Result<_, _>>()?,
        )?],
    );
    // socket: unix, inet, inet6, netlink only.
    map.insert(
        libc::SYS_socket,
        SOCKET_FAMILIES
            .iter()
            .map(|&f| rule(vec![cond(0, Dword, Eq, f as u64)?]))
            .collect::<Result<_, _>>()?,
    );
    map.insert(
        libc::SYS_socketpair,
        vec![rule(vec![cond(0, Dword, Eq, libc::AF_UNIX as u64)?])?],
    );
    map.insert(
        libc::SYS_personality,
        PERSONALITIES
            .iter()
            .map(|&p| rule(vec![cond(0, Qword, Eq, p)?]))
            .collect::<Result<_, _>>()?,
    );
    Ok(map)
}

/// Compiles the filter. Layout:
///
/// 1. seccompiler's architecture check (anything but the native arch is killed);
/// 2. load the syscall number; refuse x32 numbers; `clone3` gets `ENOSYS`;
/// 3. a binary search over the unconditionally allowed numbers (a few
///    comparisons per syscall, and cheap for the kernel to pre-evaluate
///    when the filter is installed, unlike a linear list of 300);
/// 4. on a miss, seccompiler's program for the argument-checked syscalls,
///    whose default answer is `EPERM`.
pub fn build() -> Result<BpfProgram, SeccompError> {
    let arch = target_arch()?;
    let deny = SeccompAction::Errno(libc::EPERM as u32);
    let filter = SeccompFilter::new(
        conditional_rules()?,
        deny.clone(),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| SeccompError::Build(e.to_string()))?;
    let mut program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?;

    // Length of seccompiler's architecture check: an empty filter is that
    // check plus one return.
    let empty = SeccompFilter::new(BTreeMap::new(), deny, SeccompAction::Allow, arch)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    let empty: BpfProgram = empty
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?;
    let arch_check = empty.len() - 1;

    let mut prefix = prefix_instructions();
    prefix.extend(allow_tree(&allowed_numbers()));
    program.splice(arch_check..arch_check, prefix);
    if program.len() >= 4096 {
        return Err(SeccompError::Build(format!(
            "filter too long: {} instructions",
            program.len()
        )));
    }
    Ok(program)
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JGT_K: u16 = 0x25;
const RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// `LD nr; JGE x32 -> EPERM; JEQ clone3 -> ENOSYS`.
fn prefix_instructions() -> Vec<seccompiler::sock_filter> {
    let mut v = vec![insn(LD_W_ABS, 0, 0, 0)];
    if cfg!(target_arch = "x86_64") {
        v.push(insn(JGE_K, 0, 1, X32_SYSCALL_BIT));
        v.push(insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32));
    }
    v.push(insn(JEQ_K, 0, 1, libc::SYS_clone3 as u32));
    v.push(insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    v
}

/// Ranges of allowed numbers checked one by one at the leaves of the
/// search tree.
const LEAF: usize = 6;

/// `nrs` (sorted, unique) as inclusive ranges of consecutive numbers.
fn ranges(nrs: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &n in nrs {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

enum Op {
    Raw(seccompiler::sock_filter),
    /// A conditional jump whose true branch goes to the leaf's RET ALLOW.
    ToAllow {
        code: u16,
        k: u32,
    },
    /// A conditional jump whose false branch goes to the leaf's RET ALLOW.
    ElseAllow {
        code: u16,
        k: u32,
    },
    /// Jump past the end of the tree (not an allowed number).
    JumpMiss,
    /// The leaf's `RET ALLOW`.
    RetAllow,
}

/// A binary search over sorted `nrs` (the syscall number is in the
/// accumulator): returns ALLOW for a member, falls through past its last
/// instruction otherwise. Consecutive numbers are checked as ranges.
/// Conditional jumps only ever skip a few instructions inside a leaf; long
/// distances use `JA`, whose offset is 32 bits.
fn allow_tree(nrs: &[u32]) -> Vec<seccompiler::sock_filter> {
    fn leaf(rs: &[(u32, u32)], out: &mut Vec<seccompiler::sock_filter>) {
        let mut ops = Vec::new();
        for &(lo, hi) in rs {
            if lo == hi {
                ops.push(Op::ToAllow { code: JEQ_K, k: lo });
            } else {
                // nr < lo: skip the next check; nr > hi: go on; else allow.
                ops.push(Op::Raw(insn(JGE_K, 0, 1, lo)));
                ops.push(Op::ElseAllow { code: JGT_K, k: hi });
            }
        }
        ops.push(Op::JumpMiss);
        ops.push(Op::RetAllow);
        let ret = ops.len() - 1;
        for (i, op) in ops.into_iter().enumerate() {
            // Offset from the instruction after `i` to the RET ALLOW.
            let to_ret = || (ret - i - 1) as u8;
            out.push(match op {
                Op::Raw(f) => f,
                Op::ToAllow { code, k } => insn(code, to_ret(), 0, k),
                Op::ElseAllow { code, k } => insn(code, 0, to_ret(), k),
                // Placeholder, fixed once the tree's length is known.
                Op::JumpMiss => insn(JA, 0, 0, u32::MAX),
                Op::RetAllow => insn(RET_K, 0, 0, SECCOMP_RET_ALLOW),
            });
        }
    }
    fn emit(rs: &[(u32, u32)], out: &mut Vec<seccompiler::sock_filter>) {
        if rs.len() <= LEAF {
            leaf(rs, out);
            return;
        }
        let mid = rs.len() / 2;
        let mut left = Vec::new();
        emit(&rs[..mid], &mut left);
        // nr >= start of the right half: take the JA over the left half.
        out.push(insn(JGE_K, 0, 1, rs[mid].0));
        out.push(insn(JA, 0, 0, left.len() as u32));
        out.extend(left);
        emit(&rs[mid..], out);
    }
    if nrs.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    emit(&ranges(nrs), &mut out);
    let total = out.len();
    for (i, f) in out.iter_mut().enumerate() {
        if f.code == JA && f.k == u32::MAX {
            f.k = (total - i - 1) as u32;
        }
    }
    out
}

/// Installs the filter on the calling thread (children inherit it).
/// seccompiler sets `no_new_privs` first, as the kernel requires.
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(e.to_string()))
}

/// Number of syscalls the filter allows (with or without conditions).
pub fn allowed_count() -> usize {
    allowed_numbers().len() + conditional_rules().map(|r| r.len()).unwrap_or(0)
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
mod tests {
    use super::*;
    use crate::testutil::in_child;

    fn denied_numbers() -> Vec<(&'static str, i64)> {
        let mut v = vec![
            ("mount", libc::SYS_mount),
            ("umount2", libc::SYS_umount2),
            ("pivot_root", libc::SYS_pivot_root),
            ("chroot", libc::SYS_chroot),
            ("ptrace", libc::SYS_ptrace),
            ("process_vm_readv", libc::SYS_process_vm_readv),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("bpf", libc::SYS_bpf),
            ("perf_event_open", libc::SYS_perf_event_open),
            ("keyctl", libc::SYS_keyctl),
            ("add_key", libc::SYS_add_key),
            ("request_key", libc::SYS_request_key),
            ("kexec_load", libc::SYS_kexec_load),
            ("init_module", libc::SYS_init_module),
            ("finit_module", libc::SYS_finit_module),
            ("delete_module", libc::SYS_delete_module),
            ("open_by_handle_at", libc::SYS_open_by_handle_at),
            ("name_to_handle_at", libc::SYS_name_to_handle_at),
            ("userfaultfd", libc::SYS_userfaultfd),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("io_uring_enter", libc::SYS_io_uring_enter),
            ("io_uring_register", libc::SYS_io_uring_register),
            ("unshare", libc::SYS_unshare),
            ("setns", libc::SYS_setns),
            ("fsopen", libc::SYS_fsopen),
            ("open_tree", libc::SYS_open_tree),
            ("move_mount", libc::SYS_move_mount),
            ("mount_setattr", libc::SYS_mount_setattr),
            ("pidfd_getfd", libc::SYS_pidfd_getfd),
        ];
        #[cfg(target_arch = "x86_64")]
        v.push(("kexec_file_load", libc::SYS_kexec_file_load));
        v
    }

    /// A classic-BPF interpreter for the instructions seccomp filters use,
    /// to check the compiled program against the intended policy.
    fn run(prog: &[seccompiler::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        for _ in 0..10_000 {
            let i = &prog[pc];
            pc += 1;
            let k = i.k;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                0x20 => {
                    acc = u32::from_le_bytes(data[k as usize..k as usize + 4].try_into().unwrap())
                }
                0x54 => acc &= k,
                0x05 => pc += k as usize,
                0x15 => pc += jump(acc == k),
                0x25 => pc += jump(acc > k),
                0x35 => pc += jump(acc >= k),
                0x45 => pc += jump(acc & k != 0),
                0x06 => return k,
                c => panic!("unexpected BPF opcode {c:#x} at {}", pc - 1),
            }
        }
        panic!("filter did not return");
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7;

    #[test]
    fn compiled_filter_matches_the_policy_for_every_number() {
        let prog = build().unwrap();
        let allowed = allowed_numbers();
        let conditional = conditional_rules().unwrap();
        for nr in 0..600u32 {
            let got = run(&prog, nr, ARCH, [0; 6]);
            let want = if nr == libc::SYS_clone3 as u32 {
                ENOSYS
            } else if allowed.contains(&nr) {
                ALLOW
            } else if conditional.contains_key(&(nr as i64)) {
                continue; // argument-dependent, checked below
            } else {
                EPERM
            };
            assert_eq!(got, want, "syscall {nr}");
        }
        for (name, n) in denied_numbers() {
            assert_eq!(run(&prog, n as u32, ARCH, [0; 6]), EPERM, "{name}");
        }
        // Another architecture is killed; x32 numbers are refused.
        assert_eq!(
            run(&prog, libc::SYS_getpid as u32, 0x4000_0003, [0; 6]),
            0x8000_0000
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                run(
                    &prog,
                    X32_SYSCALL_BIT | libc::SYS_getpid as u32,
                    ARCH,
                    [0; 6]
                ),
                EPERM
            );
            assert_eq!(run(&prog, u32::MAX, ARCH, [0; 6]), EPERM);
        }
    }

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn argument_checks() {
        let prog = build().unwrap();
        let clone = libc::SYS_clone as u32;
        let fork_flags =
            (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        assert_eq!(run(&prog, clone, ARCH, [fork_flags, 0, 0, 0, 0, 0]), ALLOW);
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD) as u64;
        assert_eq!(
            run(&prog, clone, ARCH, [thread_flags, 0, 0, 0, 0, 0]),
            ALLOW
        );
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
        ] {
            assert_eq!(
                run(&prog, clone, ARCH, [fork_flags | ns as u64, 0, 0, 0, 0, 0]),
                EPERM,
                "{ns:#x}"
            );
        }
        let ioctl = libc::SYS_ioctl as u32;
        assert_eq!(
            run(&prog, ioctl, ARCH, [0, libc::TIOCSTI as u64, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            run(&prog, ioctl, ARCH, [0, libc::TIOCLINUX as u64, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            run(
                &prog,
                ioctl,
                ARCH,
                [0, (1 << 32) | libc::TIOCSTI as u64, 0, 0, 0, 0]
            ),
            EPERM,
            "high bits ignored"
        );
        assert_eq!(
            run(&prog, ioctl, ARCH, [0, libc::FIONREAD as u64, 0, 0, 0, 0]),
            ALLOW
        );
        let socket = libc::SYS_socket as u32;
        for f in SOCKET_FAMILIES {
            assert_eq!(
                run(&prog, socket, ARCH, [f as u64, 1, 0, 0, 0, 0]),
                ALLOW,
                "family {f}"
            );
        }
        for f in [
            libc::AF_PACKET,
            libc::AF_KEY,
            libc::AF_VSOCK,
            libc::AF_BLUETOOTH,
            libc::AF_ALG,
            0,
        ] {
            assert_eq!(
                run(&prog, socket, ARCH, [f as u64, 1, 0, 0, 0, 0]),
                EPERM,
                "family {f}"
            );
        }
        assert_eq!(
            run(
                &prog,
                libc::SYS_socketpair as u32,
                ARCH,
                [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]
            ),
            ALLOW
        );
        assert_eq!(
            run(
                &prog,
                libc::SYS_socketpair as u32,
                ARCH,
                [libc::AF_INET as u64, 1, 0, 0, 0, 0]
            ),
            EPERM
        );
        let personality = libc::SYS_personality as u32;
        assert_eq!(
            run(&prog, personality, ARCH, [0xffff_ffff, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            run(&prog, personality, ARCH, [0x0040_0000, 0, 0, 0, 0, 0]),
            EPERM,
            "READ_IMPLIES_EXEC"
        );
    }

    #[test]
    fn the_search_tree_is_short() {
        let nrs = allowed_numbers();
        let tree = allow_tree(&nrs);
        assert!(
            tree.len() < nrs.len(),
            "{} instructions for {} numbers",
            tree.len(),
            nrs.len()
        );
        assert!(allowed_count() > 250);
        // Every conditional jump stays within a leaf.
        assert!(tree
            .iter()
            .all(|i| i.code == JA || (i.jt.max(i.jf) as usize) <= 3 * LEAF));
    }

    #[test]
    fn lists_have_no_duplicates() {
        let mut seen = std::collections::HashSet::new();
        for (name, n) in ALLOWED.iter().chain(ALLOWED_ARCH.iter()) {
            assert!(seen.insert(*n), "{name} listed twice");
        }
        for n in conditional_rules().unwrap().keys() {
            assert!(
                !seen.contains(n),
                "{n} is both unconditional and conditional"
            );
        }
    }

    #[test]
    fn prefix_sits_after_the_arch_check() {
        let prog = build().unwrap();
        assert_eq!(prog[0].code, 0x20);
        assert_eq!(prog[0].k, 4, "arch offset in seccomp_data");
        assert_eq!(prog[3].code, 0x20);
        assert_eq!(prog[3].k, 0, "then loads the syscall number");
        assert!(prog.len() < 600, "{} instructions", prog.len());
    }

    /// Installs the real filter in a child test process and checks what the
    /// kernel answers.
    #[test]
    fn installed_filter_refuses_and_allows() {
        in_child(
            "seccomp::tests::installed_filter_refuses_and_allows",
            || {
                let prog = build().unwrap();
                install(&prog).unwrap();
                let errno = |r: Result<libc::c_long, i32>| r.err().unwrap_or(0);
                for (name, n) in denied_numbers() {
                    assert_eq!(
                        errno(crate::sys::raw_syscall3(n, 0, 0, 0)),
                        libc::EPERM,
                        "{name}"
                    );
                }
                assert_eq!(
                    errno(crate::sys::raw_syscall3(libc::SYS_clone3, 0, 0, 0)),
                    libc::ENOSYS,
                    "clone3"
                );
                #[cfg(target_arch = "x86_64")]
                assert_eq!(
                    errno(crate::sys::raw_syscall3(
                        libc::SYS_getpid | X32_SYSCALL_BIT as i64,
                        0,
                        0,
                        0
                    )),
                    libc::EPERM,
                    "x32 getpid"
                );
                // clone with a namespace flag is refused; unshare too.
                assert_eq!(
                    errno(crate::sys::raw_syscall3(
                        libc::SYS_clone,
                        (libc::CLONE_NEWUSER | libc::SIGCHLD) as usize,
                        0,
                        0
                    )),
                    libc::EPERM
                );
                // TIOCSTI is refused even with high bits set; other ioctls reach the kernel.
                assert_eq!(
                    errno(crate::sys::raw_syscall3(
                        libc::SYS_ioctl,
                        0,
                        libc::TIOCSTI as usize,
                        0
                    )),
                    libc::EPERM
                );
                assert_eq!(
                    errno(crate::sys::raw_syscall3(
                        libc::SYS_ioctl,
                        0,
                        (1usize << 32) | libc::TIOCSTI as usize,
                        0
                    )),
                    libc::EPERM
                );
                assert_eq!(
                    errno(crate::sys::raw_syscall3(
                        libc::SYS_ioctl,
                        999,
                        libc::FIONREAD as usize,
                        0
                    )),
                    libc::EBADF
                );
                // Packet sockets are refused, unix sockets work.
                assert_eq!(
                    errno(crate::sys::raw_syscall3(
                        libc::SYS_socket,
                        libc::AF_PACKET as usize,
                        libc::SOCK_RAW as usize,
                        0
                    )),
                    libc::EPERM
                );
                let fd = crate::sys::raw_syscall3(
                    libc::SYS_socket,
                    libc::AF_UNIX as usize,
                    libc::SOCK_STREAM as usize,
                    0,
                )
                .unwrap();
                crate::sys::close(fd as i32);
                // Ordinary life goes on: threads and files.
                let t = std::thread::spawn(|| {
                    std::fs::read_to_string("/proc/thread-self/status").unwrap()
                });
                assert!(t.join().unwrap().contains("Seccomp:\t2"));
            },
        );
    }
}
