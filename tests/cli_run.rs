//! Integration tests of `nodecell run` and `nodecell check` (issue 2):
//! each wall through the real binary against the real kernel, and the
//! CLI's error paths.

use std::io::Write;
use std::net::TcpListener;
use std::process::Stdio;

use crate::util::*;

// ---------------------------------------------------------------- check

#[test]
fn check_lists_the_walls_and_passes_here() {
    let r = run(&["check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for name in [
        "user namespaces",
        "mount namespace",
        "pid namespace",
        "net namespace",
        "landlock",
        "seccomp filters",
        "cgroup memory",
    ] {
        assert!(
            r.stdout.contains(name),
            "{name} missing from:\n{}",
            r.stdout
        );
    }
    assert!(r
        .stdout
        .contains("every wall of the default policy is available"));
}

#[test]
fn check_json_is_machine_readable() {
    let r = run(&["check", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let items = v["sandbox"].as_array().unwrap();
    let landlock = items.iter().find(|i| i["name"] == "landlock").unwrap();
    assert_eq!(landlock["available"], true);
    assert!(landlock["detail"].as_str().unwrap().starts_with("ABI "));
    assert!(items
        .iter()
        .all(|i| i["detail"].is_string() && i["default_wall"].is_boolean()));
    assert!(v["ipc"].is_array());
}

// ---------------------------------------------------------------- exit status

#[test]
fn exit_status_is_the_commands() {
    assert_eq!(sh(&[], "exit 0").code, 0);
    assert_eq!(sh(&[], "exit 7").code, 7);
    let r = sh(&[], "kill -TERM $$");
    assert_eq!(r.code, 128 + 15, "{}", r.stderr);
}

#[test]
fn missing_and_unexecutable_commands() {
    let r = run(&["run", "--", "no-such-command-xyz"]);
    assert_eq!(r.code, 127);
    assert!(
        r.stderr.contains("no-such-command-xyz") && r.stderr.contains("not found"),
        "{}",
        r.stderr
    );
    let r = run(&["run", "--", "/etc/passwd"]);
    assert_eq!(r.code, 126, "{}", r.stderr);
}

// ---------------------------------------------------------------- identity

#[test]
fn worker_is_never_host_root() {
    let r = sh(&[], "id -u; id -g; cat /proc/self/uid_map");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut lines = r.stdout.lines();
    let uid: u32 = lines.next().unwrap().parse().unwrap();
    assert!(is_worker_uid(uid), "{uid}");
    lines.next();
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, [uid.to_string(), uid.to_string(), "1".to_string()]);
    // Host view: the sandbox's init runs as the uid the status line names.
    let (mut child, mut status) = spawn_with_status(&[], &["/bin/sleep", "5"]);
    let up = status_line(&mut status);
    let pid = up["pid"].as_i64().unwrap();
    let uid = up["uid"].as_u64().unwrap() as u32;
    assert!(is_worker_uid(uid), "{up}");
    assert_eq!(up["gid"].as_u64(), Some(uid as u64), "{up}");
    assert_eq!(up["uids"].as_u64(), Some(1), "{up}");
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids: Vec<&str> = st
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    assert!(uids.iter().all(|u| *u == uid.to_string()), "{uids:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn worker_uid_flag_maps_another_uid() {
    if !is_root() {
        let r = run(&["run", "--worker-uid", "4242", "--", "/bin/true"]);
        assert_eq!(r.code, 125, "rootless cannot pick a uid: {}", r.stderr);
        return;
    }
    let r = sh(&["--worker-uid", "4242"], "id -u");
    assert_eq!(r.stdout.trim(), "4242", "{}", r.stderr);
}

#[test]
fn cells_get_distinct_uids_and_the_status_line_names_them() {
    let (mut a, mut sa) = spawn_with_status(&[], &["/bin/sleep", "5"]);
    let (mut b, mut sb) = spawn_with_status(&[], &["/bin/sleep", "5"]);
    let (ua, ub) = (status_line(&mut sa), status_line(&mut sb));
    let uid = |v: &serde_json::Value| v["uid"].as_u64().unwrap() as u32;
    assert!(
        is_worker_uid(uid(&ua)) && is_worker_uid(uid(&ub)),
        "{ua} {ub}"
    );
    if is_root() {
        assert_ne!(uid(&ua), uid(&ub), "two running cells share a host uid");
    }
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn uid_range_maps_a_block_and_keeps_only_the_zygote_caps() {
    if !is_root() {
        let r = run(&["run", "--uid-range", "4", "--", "/bin/true"]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert!(
            r.stderr.contains("--uid-range 4 needs root"),
            "{}",
            r.stderr
        );
        return;
    }
    let r = sh(
        &["--uid-range", "4"],
        "cat /proc/self/uid_map; grep -E '^Cap(Eff|Bnd|Amb):' /proc/self/status; \
         u=$(($(id -u) + 3)); setpriv --reuid=$u --regid=$u --clear-groups --inh-caps=-all --ambient-caps=-all \
           --bounding-set=-all sh -c 'id -u; grep -E \"^Cap(Eff|Bnd|Amb):\" /proc/self/status'",
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let mut lines = r.stdout.lines();
    let map: Vec<u64> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(
        (map[0], map[1], map[2]),
        (map[0], map[0], 4),
        "{}",
        r.stdout
    );
    assert!(is_worker_uid(map[0] as u32));
    // CAP_SETGID, CAP_SETUID, CAP_SETPCAP: bits 6, 7, 8.
    for _ in 0..3 {
        assert!(
            lines.next().unwrap().ends_with("00000000000001c0"),
            "{}",
            r.stdout
        );
    }
    // The zygote gave a "worker" the last uid of the block; it dropped all.
    assert_eq!(
        lines.next().unwrap(),
        (map[0] + 3).to_string(),
        "{}",
        r.stdout
    );
    for _ in 0..3 {
        assert!(
            lines.next().unwrap().ends_with("0000000000000000"),
            "{}",
            r.stdout
        );
    }
    // A uid outside the block does not exist in the cell.
    let r = sh(
        &["--uid-range", "2"],
        "setpriv --reuid=$(($(id -u) + 2)) id -u",
    );
    assert_ne!(r.code, 0, "{}", r.stdout);
}

#[test]
fn uid_pools_that_overlap_host_accounts_are_refused() {
    let r = run(&["run", "--uid-pool", "0:10", "--", "/bin/true"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--uid-pool"), "{}", r.stderr);
    if !is_root() {
        return;
    }
    // uid 1 (daemon) is in every Debian /etc/passwd.
    let r = run(&["run", "--uid-pool", "1:100", "--", "/bin/true"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains("/etc/passwd:") && r.stderr.contains("lies inside the pool"),
        "{}",
        r.stderr
    );
    let r = sh(&["--uid-pool", "3000000000:8"], "id -u");
    let uid: u64 = r.stdout.trim().parse().unwrap();
    assert!((3000000000..3000000008).contains(&uid), "{}", r.stdout);
}

#[test]
fn a_forged_report_cannot_change_the_exit_status() {
    // The worker writes fake records into every fd of pid 1 it can open,
    // then exits 3: nodecell exits 3 and the status line says so.
    let forged = r#"{"t":"setup","wall":"exec","why":"forged","code":0}"#;
    let script = format!(
        "for f in /proc/1/fd/*; do echo '{forged}' > $f; done 2>/dev/null; \
         cat /proc/1/environ >/dev/null 2>&1 && echo ENVIRON-READABLE; exit 3"
    );
    let (child, mut status) = spawn_with_status(&[], &["/bin/sh", "-c", &script]);
    let up = status_line(&mut status);
    assert!(
        up["walls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "pid1" && w["state"] == "active"),
        "{up}"
    );
    let exit = status_line(&mut status);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ENVIRON-READABLE"));
    assert_eq!(exit["exit"]["code"], 3, "{exit}");
    assert_eq!(exit["exit"]["reason"], "exited", "{exit}");
}

#[test]
fn capabilities_seccomp_and_no_new_privs() {
    let r = sh(
        &[],
        "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for line in r.stdout.lines() {
        let (k, v) = line.split_once(':').unwrap();
        let v = v.trim();
        match k {
            "NoNewPrivs" => assert_eq!(v, "1"),
            "Seccomp" => assert_eq!(v, "2"),
            _ => assert_eq!(v, "0000000000000000", "{k}"),
        }
    }
}

// ---------------------------------------------------------------- filesystem

#[test]
fn root_is_minimal_and_read_only() {
    let r = sh(&[], "test ! -e /etc/shadow && test ! -e /root && test ! -e /home && test ! -e /work && echo clean; touch /x 2>&1; touch /usr/x 2>&1; true");
    assert!(r.stdout.contains("clean"), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("'/x': Read-only file system"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("'/usr/x': Read-only file system"),
        "{}",
        r.stdout
    );
}

#[test]
fn ro_and_rw_binds() {
    let d = world_dir();
    let ro = d.path().join("ro");
    let rw = d.path().join("rw");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    world_writable(&rw);
    std::fs::write(ro.join("in.txt"), "hello").unwrap();
    let ro_s = ro.to_str().unwrap();
    let rw_s = rw.to_str().unwrap();
    let r = sh(
        &["--ro", ro_s, "--rw", &format!("{rw_s}:/out")],
        &format!("cat {ro_s}/in.txt; echo; echo data > /out/result; (echo w > {ro_s}/w) 2>/dev/null || echo ro-denied; (: > {ro_s}/in.txt) 2>/dev/null || echo trunc-denied"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("hello"), "{}", r.stdout);
    assert!(
        r.stdout.contains("ro-denied") && r.stdout.contains("trunc-denied"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("result")).unwrap(),
        "data\n"
    );
    assert_eq!(std::fs::read_to_string(ro.join("in.txt")).unwrap(), "hello");
    use std::os::unix::fs::MetadataExt;
    assert!(is_worker_uid(
        std::fs::metadata(rw.join("result")).unwrap().uid()
    ));
}

#[test]
fn overlay_keeps_a_packs_writes_in_its_state_dir() {
    let d = world_dir();
    let pack = d.path().join("pack");
    std::fs::create_dir(&pack).unwrap();
    std::fs::write(pack.join("shipped.txt"), "shipped").unwrap();
    let state = d.path().join("state");
    if !is_root() {
        world_writable(d.path());
    }
    let p = pack.to_str().unwrap();
    let spec = format!("{p}:{}", state.display());
    let script = format!(
        "cat {p}/shipped.txt; echo; echo cfg > {p}/config.json && cat {p}/config.json; \
         rm {p}/shipped.txt 2>/dev/null; test -e {p}/shipped.txt || echo removed-inside"
    );
    let (child, mut status) = spawn_with_status(&["--overlay", &spec], &["/bin/sh", "-c", &script]);
    let up = status_line(&mut status);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("shipped\ncfg\n"), "{stdout}");
    let ov = up["walls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "overlay")
        .unwrap();
    assert_eq!(ov["state"], "active", "{ov}");
    // The host's folder is untouched; the write is in the state directory,
    // which belongs to the cell and nobody else may enter.
    assert!(!pack.join("config.json").exists());
    assert_eq!(
        std::fs::read_to_string(pack.join("shipped.txt")).unwrap(),
        "shipped"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("upper/config.json")).unwrap(),
        "cfg\n"
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(&state).unwrap();
    assert_eq!(m.uid() as u64, up["uid"].as_u64().unwrap());
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    // A second run sees what the first wrote (handed over to its uid).
    let r = sh(
        &["--overlay", &spec],
        &format!("cat {p}/config.json; echo more >> {p}/config.json"),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "cfg\n"), "{}", r.stderr);
    // Bad values name the flag.
    let r = run(&["run", "--overlay", p, "--", "/bin/true"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--overlay"), "{}", r.stderr);
}

/// An overlay the kernel refuses (here: `work/` is another filesystem than
/// `upper/`, made with a tmpfs in a private mount namespace of the
/// launcher) is a missing wall: `required` refuses to start, `best-effort`
/// binds the lower folder read-only and says so. As root, both the root
/// launcher and a rootless one (the test user) are checked.
#[test]
fn an_overlay_that_cannot_mount_fails_closed_or_runs_read_only() {
    assert!(
        is_root(),
        "this test needs root: it mounts a tmpfs in a private mount namespace"
    );
    let (tuid, tgid) = test_user();
    for rootless in [false, true] {
        let d = world_dir();
        let pack = d.path().join("pack");
        std::fs::create_dir(&pack).unwrap();
        std::fs::write(pack.join("shipped.txt"), "shipped").unwrap();
        let state = d.path().join("state");
        for sub in ["", "upper", "work"] {
            std::fs::create_dir(state.join(sub)).unwrap();
            if rootless {
                std::os::unix::fs::chown(state.join(sub), Some(tuid), Some(tgid)).unwrap();
            }
        }
        let p = pack.to_str().unwrap();
        let spec = format!("{p}:{}", state.display());
        let script = format!(
            "cat {p}/shipped.txt; echo; echo x > {p}/new 2>/dev/null && echo WROTE || echo read-only"
        );
        let run_mode = |mode: &str| -> Ran {
            let launcher = format!(
                "{}{} run --mode {mode} --overlay {spec} -- /bin/sh -c '{script}'",
                if rootless {
                    format!("setpriv --reuid {tuid} --regid {tgid} --clear-groups ")
                } else {
                    String::new()
                },
                nodecell_bin().display()
            );
            let mount = format!(
                "mount -t tmpfs -o size=1m,mode=0700,uid={u},gid={g} nodecell-it {w} && exec {launcher}",
                u = if rootless { tuid } else { 0 },
                g = if rootless { tgid } else { 0 },
                w = state.join("work").display()
            );
            std::process::Command::new("unshare")
                .args(["-m", "--propagation", "private", "/bin/sh", "-c", &mount])
                .current_dir("/")
                .stdin(Stdio::null())
                .output()
                .unwrap()
                .into()
        };
        let who = if rootless { "rootless" } else { "root" };
        let r = run_mode("required");
        assert_eq!(r.code, 125, "{who}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("overlay"), "{who}: {}", r.stderr);
        assert!(!r.stdout.contains("shipped"), "{who}: {}", r.stdout);
        let r = run_mode("best-effort");
        assert_eq!(r.code, 0, "{who}: {}", r.stderr);
        assert_eq!(r.stdout, "shipped\nread-only\n", "{who}: {}", r.stderr);
        assert!(
            r.stderr.contains("best-effort")
                && r.stderr.contains("overlay")
                && r.stderr.contains("read-only"),
            "{who}: {}",
            r.stderr
        );
        assert!(!pack.join("new").exists(), "{who}");
    }
}

#[test]
fn bind_errors_name_the_flag() {
    let r = run(&["run", "--ro", "/nonexistent/nodecell-x", "--", "/bin/true"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--ro") && r.stderr.contains("no such file"),
        "{}",
        r.stderr
    );
    let r = run(&["run", "--rw", "/tmp:relative", "--", "/bin/true"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--rw") && r.stderr.contains("absolute"),
        "{}",
        r.stderr
    );
    let r = run(&["run", "--ro", "/usr:/proc/x", "--", "/bin/true"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--ro") && r.stderr.contains("/proc"),
        "{}",
        r.stderr
    );
    if is_root() {
        // The worker uid cannot enter /root: a setup error naming the bind.
        let d = tempfile::Builder::new()
            .prefix("nodecell-private-")
            .tempdir_in("/root")
            .unwrap();
        let r = run(&["run", "--ro", d.path().to_str().unwrap(), "--", "/bin/true"]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert!(
            r.stderr.contains("mount-namespace")
                && r.stderr.contains("--ro")
                && r.stderr.contains("ermission denied"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn tmp_is_private_capped_and_not_executable() {
    let host = tempfile::Builder::new()
        .prefix("nodecell-hostfile-")
        .tempfile_in("/tmp")
        .unwrap();
    let name = host.path().to_str().unwrap();
    let r = sh(
        &["--tmp-size", "1M"],
        &format!(
            "test ! -e {name} && echo private; dd if=/dev/zero of=/tmp/fill bs=64k count=64 2>/dev/null; echo dd=$?; \
             ls -l /tmp/fill | awk '{{print $5}}'; cp /bin/true /tmp/t; chmod +x /tmp/t; /tmp/t 2>/dev/null; echo exec=$?; \
             echo shm > /dev/shm/x && cat /dev/shm/x"
        ),
    );
    assert!(r.stdout.contains("private"), "{}", r.stdout);
    assert!(
        r.stdout.contains("dd=1"),
        "the 4M write must fail at the 1M cap: {}",
        r.stdout
    );
    let size: u64 = r.stdout.lines().nth(2).unwrap().trim().parse().unwrap();
    assert!(size <= 1 << 20, "wrote {size} bytes into a 1M /tmp");
    assert!(r.stdout.contains("exec=126"), "{}", r.stdout);
    assert!(r.stdout.contains("shm"), "{}", r.stdout);
}

#[test]
fn cwd_flag() {
    let r = sh(&["--cwd", "/tmp"], "pwd");
    assert_eq!(r.stdout.trim(), "/tmp");
    let r = run(&["run", "--cwd", "relative", "--", "/bin/true"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--cwd"), "{}", r.stderr);
    let r = run(&["run", "--cwd", "/does-not-exist", "--", "/bin/true"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("--cwd /does-not-exist"), "{}", r.stderr);
}

// ---------------------------------------------------------------- network

#[test]
fn no_network_by_default_loopback_up() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\n\
         try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('host-reached')\n\
         except OSError as e: print('host-unreachable', e)\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); c = socket.create_connection(s.getsockname()); print('loopback-ok')\n\
         import os; print(sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys/class/net') else 'no-sys')"
    );
    let r = py(&[], &code);
    assert!(
        r.stdout.contains("host-unreachable") && r.stdout.contains("loopback-ok"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let r = py(&["--net"], &code);
    assert!(
        r.stdout.contains("host-reached"),
        "--net keeps the host network: {}{}",
        r.stdout,
        r.stderr
    );
    drop(listener);
}

// ---------------------------------------------------------------- seccomp

#[test]
fn denied_syscalls_fail_with_eperm() {
    let code = "import ctypes, errno\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        def call(nr, *a):\n    r = libc.syscall(nr, *a); return errno.errorcode.get(ctypes.get_errno(), 0) if r == -1 else 'ok'\n\
        print('unshare', call(272, 0x10000000))\n\
        print('io_uring_setup', call(425, 1, 0))\n\
        print('ptrace', call(101, 16, 1, 0, 0))\n\
        print('bpf', call(321, 0, 0, 0))\n\
        print('mount', call(165, 0, 0, 0, 0, 0))\n\
        print('clone3', call(435, 0, 0))\n\
        print('tiocsti', call(16, 0, 0x5412, 0))\n\
        print('x32', call(0x40000000 | 39))";
    let r = py(&[], code);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (name, want) in [
        ("unshare", "EPERM"),
        ("io_uring_setup", "EPERM"),
        ("ptrace", "EPERM"),
        ("bpf", "EPERM"),
        ("mount", "EPERM"),
        ("clone3", "ENOSYS"),
        ("tiocsti", "EPERM"),
        ("x32", "EPERM"),
    ] {
        assert!(
            r.stdout.contains(&format!("{name} {want}")),
            "{name}: {}",
            r.stdout
        );
    }
}

// ---------------------------------------------------------------- env and fds

#[test]
fn environment_is_cleared() {
    let r = nodecell(&["run", "--env", "FOO=bar", "--", "/usr/bin/env"])
        .env("NODECELL_SECRET_TOKEN", "s3cret")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("FOO=bar"));
    assert!(out.contains("PATH=/usr/local/bin:/usr/bin:/bin"));
    assert!(
        !out.contains("s3cret") && !out.contains("NODECELL_SECRET_TOKEN"),
        "{out}"
    );
    let r = run(&["run", "--env", "NOEQUALS", "--", "/bin/true"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--env"), "{}", r.stderr);
}

#[test]
fn launch_trace_names_each_phase_and_stays_outside() {
    // NODECELL_TRACE_LAUNCH=1: one stderr line per phase from the launcher
    // and from the sandbox's init, times rising; the variable itself never
    // reaches the command (the environment wall).
    let r = nodecell(&["run", "--", "/usr/bin/env"])
        .env("NODECELL_TRACE_LAUNCH", "1")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(0));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!out.contains("NODECELL_TRACE_LAUNCH"), "{out}");
    let err = String::from_utf8_lossy(&r.stderr);
    let phases: Vec<(f64, String)> = err
        .lines()
        .filter_map(|l| l.strip_prefix("nodecell-trace "))
        .map(|l| {
            let (t, rest) = l.trim_start().split_once(" ms ").unwrap();
            (
                t.parse().unwrap(),
                rest.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    let at = |name: &str| {
        phases
            .iter()
            .find(|(_, p)| p == name)
            .unwrap_or_else(|| panic!("no phase {name:?} in:\n{err}"))
            .0
    };
    assert!(at("launcher identity") <= at("launcher cloned"));
    assert!(at("launcher cloned") <= at("init hide pid 1"));
    assert!(at("init filesystem") <= at("init seccomp"));
    assert!(at("init seccomp") <= at("init command exec'd"));
    assert!(at("init command exited") <= at("launcher released"));
    // Untraced runs print nothing of it.
    let quiet = run(&["run", "--", "/bin/true"]);
    assert!(!quiet.stderr.contains("nodecell-trace"), "{}", quiet.stderr);
}

#[test]
fn only_kept_fds_reach_the_command() {
    let (r, mut w) = pipe();
    let (_r2, w2) = pipe();
    let keep = std::os::fd::AsRawFd::as_raw_fd(&w);
    let stray = std::os::fd::AsRawFd::as_raw_fd(&w2);
    // Clear close-on-exec on both so the launcher inherits them.
    for fd in [keep, stray] {
        // SAFETY: F_SETFD on fds we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    let out = nodecell(&[
        "run",
        "--keep-fd",
        &keep.to_string(),
        "--",
        "/bin/sh",
        "-c",
        &format!("ls /proc/self/fd; echo through >&{keep}"),
    ])
    .output()
    .unwrap();
    w.flush().unwrap();
    drop(w);
    drop(w2);
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(listed.contains(&keep.to_string()), "{listed:?}");
    assert!(
        !listed.contains(&stray.to_string()),
        "stray fd {stray} leaked: {listed:?}"
    );
    let mut got = String::new();
    std::io::Read::read_to_string(&mut std::io::BufReader::new(r), &mut got).unwrap();
    assert_eq!(got, "through\n");
    let r = run(&["run", "--keep-fd", "987", "--", "/bin/true"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--keep-fd 987"), "{}", r.stderr);
}

// ---------------------------------------------------------------- status fd

#[test]
fn status_fd_reports_walls_then_exit() {
    let (mut child, mut status) =
        spawn_with_status(&["--memory", "128M"], &["/bin/sh", "-c", "exit 3"]);
    let up = status_line(&mut status);
    let walls = up["walls"].as_array().unwrap();
    for name in [
        "user-namespace",
        "mount-namespace",
        "pid-namespace",
        "net-namespace",
        "ipc-namespace",
        "uts-namespace",
        "landlock",
        "capabilities",
        "no-new-privs",
        "seccomp",
        "memory-limit",
        "rlimits",
    ] {
        let w = walls
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {up}"));
        assert_eq!(w["state"], "active", "{name}: {w}");
        assert!(w["detail"].is_string());
    }
    assert_eq!(
        walls.iter().find(|w| w["name"] == "pids-limit").unwrap()["state"],
        "off"
    );
    assert!(up["cgroup"].as_str().unwrap().contains("nodecell-"));
    assert!(up["pid"].as_i64().unwrap() > 1);
    let end = status_line(&mut status);
    assert_eq!(end["exit"]["code"], 3);
    assert_eq!(end["exit"]["reason"], "exited");
    assert_eq!(child.wait().unwrap().code(), Some(3));
    // The cgroup is gone.
    assert!(!std::path::Path::new(up["cgroup"].as_str().unwrap()).exists());
}

#[test]
fn status_fd_reports_setup_failures() {
    let (mut child, mut status) = spawn_with_status(&["--cwd", "/nope"], &["/bin/true"]);
    let first = status_line(&mut status);
    // The walls line comes first (the sandbox was up), then the failure.
    let end = if first.get("walls").is_some() {
        status_line(&mut status)
    } else {
        first
    };
    assert_eq!(end["exit"]["reason"], "setup");
    assert_eq!(end["exit"]["code"], 125);
    assert!(end["exit"]["detail"].as_str().unwrap().contains("--cwd"));
    assert_eq!(child.wait().unwrap().code(), Some(125));
}

// ---------------------------------------------------------------- limits

#[test]
fn memory_limit_kills_with_137_and_says_so() {
    let r = py(
        &["--memory", "64M"],
        "b = bytearray(512 << 20); print('survived')",
    );
    assert_eq!(r.code, 137, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("survived"));
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("memory limit"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(line.contains("--memory 64M"), "{line}");
    // Under the limit, fine.
    let r = py(&["--memory", "64M"], "b = bytearray(8 << 20); print('ok')");
    assert_eq!((r.code, r.stdout.trim()), (0, "ok"), "{}", r.stderr);
}

#[test]
fn pids_limit_stops_fork_bombs() {
    let code = "import os, time\n\
        n = 0\n\
        try:\n    \
            for _ in range(200):\n        \
                if os.fork() == 0:\n            time.sleep(30); os._exit(0)\n        \
                n += 1\n\
        except OSError as e: print('stopped', n, e.errno)\n\
        else: print('forked', n)";
    let r = py(&["--pids", "16"], code);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"stopped"), "{}", r.stdout);
    let n: u32 = words[1].parse().unwrap();
    assert!(n < 16, "forked {n} with --pids 16");
}

#[test]
fn timeout_kills_the_whole_tree() {
    let m = marker("timeout");
    let script = format!(
        "{} {} while :; do :; done",
        bg(&m, "sleep 60"),
        bg(&m, "while :; do :; done")
    );
    let start = std::time::Instant::now();
    let child = nodecell(&["run", "--timeout", "2", "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both background processes really run inside before the timeout.
    assert!(
        wait_until(1.8, || pids_with_marker(&m).len() >= 2),
        "background processes never started"
    );
    let r = Ran::from(child.wait_with_output().unwrap());
    let took = start.elapsed().as_secs_f64();
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(took < 6.0, "took {took}s");
    assert!(r.stderr.contains("--timeout"), "{}", r.stderr);
    assert!(
        wait_until(2.0, || pids_with_marker(&m).is_empty()),
        "orphans left: {:?}",
        pids_with_marker(&m)
    );
}

#[test]
fn background_children_die_with_the_sandbox() {
    let m = marker("bg");
    let (m1, m2) = m.split_at(m.len() / 2);
    // Outside a sandbox this daemon would outlive its parent (checked).
    let script = format!(
        "setsid sh -c 'sh -c \"sleep 60; : {m1}\"\"{m2}\" >/dev/null 2>&1 </dev/null &'; sleep 0.3"
    );
    std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(
        wait_until(1.0, || !pids_with_marker(&m).is_empty()),
        "the control daemon did not start"
    );
    kill_groups(&pids_with_marker(&m));
    assert!(wait_until(1.0, || pids_with_marker(&m).is_empty()));
    let r = sh(&[], &format!("{script}; exit 0"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        wait_until(2.0, || pids_with_marker(&m).is_empty()),
        "left: {:?}",
        pids_with_marker(&m)
    );
}

#[test]
fn launcher_death_kills_the_sandbox() {
    let m = marker("pdeath");
    let (mut child, mut status) = spawn_with_status(
        &[],
        &["/bin/sh", "-c", &format!("{} wait", bg(&m, "sleep 60"))],
    );
    let _up = status_line(&mut status);
    assert!(
        wait_until(2.0, || !pids_with_marker(&m).is_empty()),
        "sleeper never started"
    );
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(
        wait_until(2.0, || pids_with_marker(&m).is_empty()),
        "survivors: {:?}",
        pids_with_marker(&m)
    );
}

#[test]
fn sigterm_is_forwarded_to_the_command() {
    // The handler writes with os.write (a print could re-enter the
    // print('ready') still returning) and sleeps in short steps (CPython
    // may notice a signal that lands just before a long sleep only after it).
    let code = "import os, signal, time\n\
        signal.signal(signal.SIGTERM, lambda *a: (os.write(1, b'got-term\\n'), os._exit(3)))\n\
        os.write(1, b'ready\\n')\n\
        for _ in range(600): time.sleep(0.05)";
    let (mut child, mut status) = spawn_with_status(&[], &[PYTHON, "-c", code]);
    let _up = status_line(&mut status);
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(rest.contains("got-term"), "{rest}");
    assert_eq!(st.code(), Some(3));
}

#[test]
fn required_mode_fails_closed_and_best_effort_reports() {
    if is_root() {
        test_user();
    }
    // A rootless launcher without a delegated cgroup cannot limit memory.
    let mk = |mode: &str| {
        let mut c = nodecell(&[
            "run",
            "--mode",
            mode,
            "--memory",
            "64M",
            "--",
            "/bin/echo",
            "ran",
        ]);
        c.current_dir("/").stdin(Stdio::null());
        if is_root() {
            c = as_test_user(c);
        }
        Ran::from(c.output().unwrap())
    };
    let r = mk("required");
    assert_eq!(r.code, 125, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("memory-limit") && r.stderr.contains("delegated"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("ran"));
    let r = mk("best-effort");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("ran"));
    assert!(
        r.stderr.contains("best-effort") && r.stderr.contains("memory-limit"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("RLIMIT_AS"), "{}", r.stderr);
}

// ---------------------------------------------------------------- python

#[test]
fn python_multiprocessing_and_threads_work() {
    let code = "import multiprocessing as mp, threading\n\
        def sq(x): return x * x\n\
        if __name__ == '__main__':\n    \
            with mp.Pool(2) as p: print(sum(p.map(sq, range(10))))\n    \
            out = []\n    \
            ts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n    \
            [t.start() for t in ts]; [t.join() for t in ts]; print(len(out))\n    \
            q = mp.Queue(); pr = mp.Process(target=q.put, args=('via-queue',)); pr.start(); print(q.get()); pr.join()";
    let r = py(&["--pids", "64"], code);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "285\n4\nvia-queue\n");
}

#[test]
fn numpy_imports_from_a_mounted_venv() {
    let venv = dev_venv();
    let v = venv.to_str().unwrap();
    let python = format!("{v}/bin/python");
    let r = run(&[
        "run",
        "--ro",
        v,
        "--",
        &python,
        "-c",
        "import numpy; print(numpy.arange(4).sum())",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "6");
    // Without the bind the venv does not exist inside.
    let r = run(&["run", "--", &python, "-c", "import numpy"]);
    assert_eq!(r.code, 127, "{}", r.stderr);
}

// ---------------------------------------------------------------- CLI errors

#[test]
fn bad_flags_get_clear_errors() {
    for (args, flag) in [
        (vec!["run", "--memory", "12Q", "--", "true"], "--memory"),
        (vec!["run", "--memory", "", "--", "true"], "--memory"),
        (vec!["run", "--pids", "0", "--", "true"], "--pids"),
        (vec!["run", "--cpu", "-1", "--", "true"], "--cpu"),
        (vec!["run", "--timeout", "soon", "--", "true"], "--timeout"),
        (vec!["run", "--mode", "strict", "--", "true"], "--mode"),
        (
            vec!["run", "--worker-uid", "0", "--", "true"],
            "--worker-uid",
        ),
        (vec!["run", "--tmp-size", "1X", "--", "true"], "--tmp-size"),
        (vec!["run", "--status-fd", "x", "--", "true"], "--status-fd"),
        (
            vec!["run", "--no-such-flag", "--", "true"],
            "--no-such-flag",
        ),
    ] {
        let r = run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(flag), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    let r = run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("CMD"), "{}", r.stderr);
}

#[test]
fn status_fd_must_not_be_kept() {
    let r = run(&[
        "run",
        "--status-fd",
        "2",
        "--keep-fd",
        "2",
        "--",
        "/bin/true",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--status-fd 2"), "{}", r.stderr);
}
