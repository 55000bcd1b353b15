//! Tests of the seccomp wall: the compiled program is checked against the
//! intended policy with a small classic-BPF interpreter, then installed in a
//! child test process and checked against the real kernel.

use super::args::{CREATING_OPEN_FLAGS, MFD_EXEC, MFD_NOEXEC_SEAL, SET_ID_BITS};
use super::bpf::{JA, LEAF, SECCOMP_RET_ERRNO};
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
        ("cachestat", 451),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push(("kexec_file_load", libc::SYS_kexec_file_load));
    v
}

/// A classic-BPF interpreter for the instructions seccomp filters use.
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
            0x20 => acc = u32::from_le_bytes(data[k as usize..k as usize + 4].try_into().unwrap()),
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

const LOOSE: FilterOptions = FilterOptions {
    require_noexec_memfd: false,
};
const STRICT: FilterOptions = FilterOptions {
    require_noexec_memfd: true,
};

/// Calls the program for syscall `nr` with up to 6 arguments.
fn call(prog: &[seccompiler::sock_filter], nr: i64, args: &[u64]) -> u32 {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    run(prog, nr as u32, ARCH, a)
}

#[test]
fn compiled_filter_matches_the_policy_for_every_number() {
    let prog = build(&LOOSE).unwrap();
    let allowed = allowed_numbers();
    let conditional = args::conditional_syscalls();
    for nr in 0..600u32 {
        let got = run(&prog, nr, ARCH, [0; 6]);
        let n = nr as i64;
        let want = if n == libc::SYS_clone3 || n == libc::SYS_openat2 {
            ENOSYS
        } else if allowed.contains(&nr) {
            ALLOW
        } else if conditional.contains(&n) || n == libc::SYS_ioctl {
            continue; // argument-dependent, checked below
        } else {
            EPERM
        };
        assert_eq!(got, want, "syscall {nr}");
    }
    for (name, n) in denied_numbers() {
        assert_eq!(call(&prog, n, &[]), EPERM, "{name}");
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
fn clone_sockets_and_personality() {
    let prog = build(&LOOSE).unwrap();
    let clone = libc::SYS_clone;
    let fork_flags = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
    assert_eq!(call(&prog, clone, &[fork_flags]), ALLOW);
    let thread_flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD) as u64;
    assert_eq!(call(&prog, clone, &[thread_flags]), ALLOW);
    for ns in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
    ] {
        assert_eq!(
            call(&prog, clone, &[fork_flags | ns as u64]),
            EPERM,
            "{ns:#x}"
        );
    }
    let socket = libc::SYS_socket;
    for f in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
        assert_eq!(call(&prog, socket, &[f as u64, 1, 0]), ALLOW, "family {f}");
    }
    // Netlink: route only.
    let nl = libc::AF_NETLINK as u64;
    assert_eq!(
        call(&prog, socket, &[nl, 3, libc::NETLINK_ROUTE as u64]),
        ALLOW
    );
    for p in [
        libc::NETLINK_AUDIT,
        libc::NETLINK_KOBJECT_UEVENT,
        libc::NETLINK_GENERIC,
        libc::NETLINK_NETFILTER,
        libc::NETLINK_SOCK_DIAG,
        libc::NETLINK_XFRM,
    ] {
        assert_eq!(
            call(&prog, socket, &[nl, 3, p as u64]),
            EPERM,
            "netlink protocol {p}"
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
        assert_eq!(call(&prog, socket, &[f as u64, 1, 0]), EPERM, "family {f}");
    }
    assert_eq!(
        call(&prog, libc::SYS_socketpair, &[libc::AF_UNIX as u64, 1]),
        ALLOW
    );
    assert_eq!(
        call(&prog, libc::SYS_socketpair, &[libc::AF_INET as u64, 1]),
        EPERM
    );
    let personality = libc::SYS_personality;
    assert_eq!(call(&prog, personality, &[0xffff_ffff]), ALLOW);
    assert_eq!(
        call(&prog, personality, &[0x0040_0000]),
        EPERM,
        "READ_IMPLIES_EXEC"
    );
}

#[test]
#[allow(clippy::unnecessary_cast)]
fn terminal_ioctls_are_allow_listed() {
    let prog = build(&LOOSE).unwrap();
    let ioctl = |req: u64| call(&prog, libc::SYS_ioctl, &[0, req]);
    for &(name, req) in TTY_IOCTLS {
        assert_eq!(ioctl(req as u64), ALLOW, "{name}");
        // The kernel reads an unsigned int: high bits change nothing.
        assert_eq!(
            ioctl((1 << 32) | req as u64),
            ALLOW,
            "{name} with high bits"
        );
    }
    for (name, req) in [
        ("TIOCSTI", libc::TIOCSTI as u64),
        ("TIOCLINUX", libc::TIOCLINUX as u64),
        ("TIOCSETD", libc::TIOCSETD as u64),
        ("TIOCCONS", libc::TIOCCONS as u64),
        ("TIOCSCTTY", libc::TIOCSCTTY as u64),
        ("TIOCSPGRP", libc::TIOCSPGRP as u64),
        ("TIOCSWINSZ", libc::TIOCSWINSZ as u64),
        ("TIOCMSET", libc::TIOCMSET as u64),
        ("TIOCSSERIAL", libc::TIOCSSERIAL as u64),
        ("TIOCVHANGUP", 0x5437),
        ("TIOCSIG", 0x4004_5436),
        ("TIOCGPTPEER", 0x5441),
        ("KDSETMODE", 0x4B3A),
        ("KDSKBMODE", 0x4B45),
        ("VT_ACTIVATE", 0x5606),
    ] {
        assert_eq!(ioctl(req), EPERM, "{name}");
        assert_eq!(ioctl((1 << 32) | req), EPERM, "{name} with high bits");
    }
    // Everything else reaches the kernel: sockets, block devices, GPUs, V4L2
    // (type 'V' with size bits is not a VT request).
    for (name, req) in [
        ("SIOCGIFFLAGS", libc::SIOCGIFFLAGS as u64),
        ("FICLONE", 0x4004_9409),
        ("NVIDIA escape", 0xc020_462a),
        ("VIDIOC_QUERYCAP", 0x8068_5600),
        ("BLKGETSIZE64", 0x8008_1272),
    ] {
        assert_eq!(ioctl(req), ALLOW, "{name}");
    }
}

#[test]
fn memfd_exec_execveat_and_set_id_modes() {
    let loose = build(&LOOSE).unwrap();
    let strict = build(&STRICT).unwrap();
    let memfd = libc::SYS_memfd_create;
    let cloexec = libc::MFD_CLOEXEC as u64;
    for prog in [&loose, &strict] {
        assert_eq!(call(prog, memfd, &[0, cloexec | MFD_EXEC]), EPERM);
        assert_eq!(call(prog, memfd, &[0, cloexec | MFD_NOEXEC_SEAL]), ALLOW);
        assert_eq!(
            call(
                prog,
                libc::SYS_execveat,
                &[3, 0, 0, 0, libc::AT_EMPTY_PATH as u64]
            ),
            EPERM
        );
        assert_eq!(call(prog, libc::SYS_execveat, &[3, 0, 0, 0, 0]), ALLOW);
    }
    // Without the sysctl, a memfd must be sealed against exec.
    assert_eq!(call(&loose, memfd, &[0, cloexec]), ALLOW);
    assert_eq!(call(&strict, memfd, &[0, cloexec]), EPERM);

    let prog = &loose;
    for (nr, arg) in [
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (libc::SYS_fchmodat2, 2),
        (libc::SYS_mknodat, 2),
    ] {
        let mut a = [0u64; 4];
        a[arg] = 0o755;
        assert_eq!(call(prog, nr, &a), ALLOW, "{nr} 0755");
        for bits in [0o4755, 0o2755, 0o6755] {
            a[arg] = bits;
            assert_eq!(call(prog, nr, &a), EPERM, "{nr} {bits:o}");
        }
        a[arg] = 0o1777; // sticky is fine
        assert_eq!(call(prog, nr, &a), ALLOW, "{nr} sticky");
    }
    let openat = libc::SYS_openat;
    let creat = libc::O_CREAT as u64 | libc::O_WRONLY as u64;
    assert_eq!(
        call(prog, openat, &[0, 0, libc::O_RDONLY as u64, 0o4755]),
        ALLOW,
        "no O_CREAT: mode ignored"
    );
    assert_eq!(call(prog, openat, &[0, 0, creat, 0o644]), ALLOW);
    assert_eq!(call(prog, openat, &[0, 0, creat, 0o4755]), EPERM);
    assert_eq!(
        call(prog, openat, &[0, 0, libc::O_TMPFILE as u64 | 2, 0o2755]),
        EPERM
    );
    assert_eq!(CREATING_OPEN_FLAGS & libc::O_DIRECTORY as u64, 0);
    assert_eq!(SET_ID_BITS, 0o6000);
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(call(prog, libc::SYS_chmod, &[0, 0o4755]), EPERM);
        assert_eq!(call(prog, libc::SYS_chmod, &[0, 0o755]), ALLOW);
        assert_eq!(call(prog, libc::SYS_creat, &[0, 0o6755]), EPERM);
        assert_eq!(call(prog, libc::SYS_open, &[0, creat, 0o4755]), EPERM);
        assert_eq!(call(prog, libc::SYS_open, &[0, 0, 0o4755]), ALLOW);
        assert_eq!(
            call(prog, libc::SYS_mknod, &[0, libc::S_IFREG as u64 | 0o4755]),
            EPERM
        );
    }
}

#[test]
fn prctl_options_are_allow_listed() {
    let prog = build(&LOOSE).unwrap();
    for &(name, opt) in PRCTL_OPTIONS {
        assert_eq!(call(&prog, libc::SYS_prctl, &[opt]), ALLOW, "{name}");
    }
    for (name, opt) in [
        ("PR_SET_MM", libc::PR_SET_MM as u64),
        ("PR_SET_PTRACER", 0x5961_6d61),
        ("PR_SCHED_CORE", 62),
        ("PR_SET_IO_FLUSHER", 57),
        ("PR_SET_MEMORY_MERGE", 67),
        ("PR_SET_SECUREBITS", libc::PR_SET_SECUREBITS as u64),
        ("PR_SET_SYSCALL_USER_DISPATCH", 59),
        ("PR_TASK_PERF_EVENTS_ENABLE", 32),
        ("PR_SET_TSC", 26),
    ] {
        assert_eq!(call(&prog, libc::SYS_prctl, &[opt]), EPERM, "{name}");
    }
}

#[test]
fn the_search_tree_is_short() {
    let nrs = allowed_numbers();
    let tree = bpf::allow_tree(&nrs);
    assert!(
        tree.len() < nrs.len(),
        "{} instructions for {} numbers",
        tree.len(),
        nrs.len()
    );
    assert!(allowed_count() > 250);
    for opts in [LOOSE, STRICT] {
        let (prog, n) = build_counted(&opts).unwrap();
        assert_eq!(n, allowed_count());
        assert_eq!(prog, build(&opts).unwrap());
        // The kernel's install cost grows with the length (485 instructions
        // with seccompiler's code for the argument checks, 232 hand-written).
        assert!(prog.len() < 300, "{} instructions", prog.len());
    }
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
    for n in &args::conditional_syscalls() {
        assert!(
            !seen.contains(n),
            "{n} is both unconditional and conditional"
        );
    }
    for special in [libc::SYS_ioctl, libc::SYS_clone3, libc::SYS_openat2] {
        assert!(
            !seen.contains(&special),
            "{special} is decided in the prefix"
        );
    }
}

#[test]
fn prefix_sits_after_the_arch_check() {
    let prog = build(&LOOSE).unwrap();
    assert_eq!(prog[0].code, 0x20);
    assert_eq!(prog[0].k, 4, "arch offset in seccomp_data");
    assert_eq!(prog[3].code, 0x20);
    assert_eq!(prog[3].k, 0, "then loads the syscall number");
    assert!(prog.len() < 700, "{} instructions", prog.len());
}

fn errno(r: Result<libc::c_long, i32>) -> i32 {
    r.err().unwrap_or(0)
}

fn sc(nr: i64, a: usize, b: usize, c: usize) -> i32 {
    errno(crate::sys::raw_syscall3(nr, a, b, c))
}

/// Installs the real filter in a child test process and checks what the
/// kernel answers.
#[test]
fn installed_filter_refuses_and_allows() {
    in_child(
        "seccomp::tests::installed_filter_refuses_and_allows",
        || {
            let prog = build(&STRICT).unwrap();
            install(&prog).unwrap();
            for (name, n) in denied_numbers() {
                assert_eq!(sc(n, 0, 0, 0), libc::EPERM, "{name}");
            }
            assert_eq!(sc(libc::SYS_clone3, 0, 0, 0), libc::ENOSYS, "clone3");
            assert_eq!(sc(libc::SYS_openat2, 0, 0, 0), libc::ENOSYS, "openat2");
            #[cfg(target_arch = "x86_64")]
            assert_eq!(
                sc(libc::SYS_getpid | X32_SYSCALL_BIT as i64, 0, 0, 0),
                libc::EPERM,
                "x32 getpid"
            );
            // clone with a namespace flag is refused.
            assert_eq!(
                sc(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as usize,
                    0,
                    0
                ),
                libc::EPERM
            );
            // Terminal ioctls outside the list are refused; listed ones and
            // others reach the kernel (EBADF/ENOTTY).
            assert_eq!(
                sc(libc::SYS_ioctl, 0, libc::TIOCSTI as usize, 0),
                libc::EPERM
            );
            assert_eq!(
                sc(
                    libc::SYS_ioctl,
                    0,
                    (1usize << 32) | libc::TIOCSTI as usize,
                    0
                ),
                libc::EPERM
            );
            assert_eq!(
                sc(libc::SYS_ioctl, 0, libc::TIOCSETD as usize, 0),
                libc::EPERM
            );
            assert_eq!(
                sc(libc::SYS_ioctl, 999, libc::FIONREAD as usize, 0),
                libc::EBADF
            );
            let (r, w) = crate::sys::pipe_cloexec().unwrap();
            let mut t = [0u8; 64];
            assert_eq!(
                sc(
                    libc::SYS_ioctl,
                    r as usize,
                    libc::TCGETS as usize,
                    t.as_mut_ptr() as usize
                ),
                libc::ENOTTY
            );
            crate::sys::close(r);
            crate::sys::close(w);
            // Sockets: packet refused, unix works, netlink route only.
            assert_eq!(
                sc(
                    libc::SYS_socket,
                    libc::AF_PACKET as usize,
                    libc::SOCK_RAW as usize,
                    0
                ),
                libc::EPERM
            );
            for (dom, ty, proto) in [
                (libc::AF_UNIX, libc::SOCK_STREAM, 0),
                (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
            ] {
                let fd = crate::sys::raw_syscall3(
                    libc::SYS_socket,
                    dom as usize,
                    ty as usize,
                    proto as usize,
                )
                .unwrap();
                crate::sys::close(fd as i32);
            }
            assert_eq!(
                sc(
                    libc::SYS_socket,
                    libc::AF_NETLINK as usize,
                    libc::SOCK_RAW as usize,
                    libc::NETLINK_KOBJECT_UEVENT as usize
                ),
                libc::EPERM
            );
            // memfds: only sealed against exec.
            let name = c"t";
            assert_eq!(
                sc(
                    libc::SYS_memfd_create,
                    name.as_ptr() as usize,
                    libc::MFD_CLOEXEC as usize,
                    0
                ),
                libc::EPERM
            );
            assert_eq!(
                sc(
                    libc::SYS_memfd_create,
                    name.as_ptr() as usize,
                    (libc::MFD_CLOEXEC as u64 | MFD_EXEC) as usize,
                    0
                ),
                libc::EPERM
            );
            let fd = crate::sys::raw_syscall3(
                libc::SYS_memfd_create,
                name.as_ptr() as usize,
                (libc::MFD_CLOEXEC as u64 | MFD_NOEXEC_SEAL) as usize,
                0,
            )
            .unwrap();
            crate::sys::close(fd as i32);
            // Set-id bits: refused on a real file; plain modes work.
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("f");
            std::fs::write(&f, "x").unwrap();
            use std::os::unix::fs::PermissionsExt;
            let e =
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
            use std::os::unix::fs::OpenOptionsExt;
            let e = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o2755)
                .open(dir.path().join("g"))
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(dir.path().join("h"))
                .unwrap();
            // prctl: naming works, PR_SET_MM does not reach the kernel.
            assert_eq!(
                sc(libc::SYS_prctl, libc::PR_SET_MM as usize, 0, 0),
                libc::EPERM
            );
            crate::sys::set_thread_name(c"nc-test").unwrap();
            // Ordinary life goes on: threads and files.
            let t =
                std::thread::spawn(|| std::fs::read_to_string("/proc/thread-self/status").unwrap());
            assert!(t.join().unwrap().contains("Seccomp:\t2"));
        },
    );
}
