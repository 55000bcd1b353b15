//! Forks real children, confines them, and checks both what they may still
//! do and what the confinement denies (against the running kernel).

use super::*;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A uid/gid no account uses, for the root run.
const WORKER_ID: u32 = 3_000_000_201;

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.raw_os_error() {
            Some(libc::EACCES) => "EACCES".into(),
            Some(libc::EPERM) => "EPERM".into(),
            _ => format!("err {e}"),
        },
    }
}

/// Forks a child that runs `f` and writes what it returns to a pipe; never
/// panics in the child (every check returns a string).
fn fork_child(f: impl FnOnce() -> String) -> (libc::pid_t, RawFd) {
    let (r, w) = sys::pipe_cloexec().unwrap();
    // SAFETY: the child only allocates (glibc resets malloc locks after fork) and makes
    // syscalls, never a Rust runtime lock (no printing, no panics), and _exits.
    let pid = unsafe { sys::fork() }.unwrap();
    if pid == 0 {
        sys::close(r);
        let out = f();
        let _ = sys::write_all(w, out.as_bytes());
        sys::exit(0);
    }
    sys::close(w);
    (pid, r)
}

fn read_all(fd: RawFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sys::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    sys::close(fd);
    String::from_utf8_lossy(&out).into_owned()
}

fn spec(root: bool, ro: &Path, rw: Option<&Path>) -> ConfineSpec {
    ConfineSpec {
        uid: root.then_some(WORKER_ID),
        gid: root.then_some(WORKER_ID),
        ro_paths: vec![ro.into()],
        rw_paths: rw.map(|p| vec![p.into()]).unwrap_or_default(),
        system: true,
    }
}

#[test]
fn a_forked_worker_is_confined_to_its_own_pack() {
    let root = sys::geteuid() == 0;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (pack_a, pack_b, rw_a, outside) = (
        d.path().join("pack-a"),
        d.path().join("pack-b"),
        d.path().join("rw-a"),
        d.path().join("outside"),
    );
    for p in [&pack_a, &pack_b, &rw_a, &outside] {
        std::fs::create_dir(p).unwrap();
    }
    for p in [&rw_a, &outside] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(pack_a.join("code.py"), "a").unwrap();
    std::fs::write(pack_b.join("secret.txt"), "b").unwrap();

    // The sibling: another pack's worker, confined to pack B with the same
    // uid as the worker under test (so only Landlock can tell them apart),
    // alive until killed.
    let spec_b = spec(root, &pack_b, None);
    let (sleeper_r, sleeper_w) = sys::pipe_cloexec().unwrap();
    // SAFETY: as in `fork_child`.
    let sleeper = unsafe { sys::fork() }.unwrap();
    if sleeper == 0 {
        sys::close(sleeper_r);
        let msg = match confine_forked_worker(&spec_b) {
            Ok(_) => "ready".to_string(),
            Err(e) => format!("sleeper: {e}"),
        };
        let _ = sys::write_all(sleeper_w, msg.as_bytes());
        sys::close(sleeper_w);
        std::thread::sleep(std::time::Duration::from_secs(30));
        sys::exit(0);
    }
    sys::close(sleeper_w);
    assert_eq!(read_all(sleeper_r), "ready");

    let spec_a = spec(root, &pack_a, Some(&rw_a));
    let (pa, pb, rwa, out) = (
        pack_a.clone(),
        pack_b.clone(),
        rw_a.clone(),
        outside.clone(),
    );
    let (worker, fd) = fork_child(move || {
        let mem = format!("/proc/{sleeper}/mem");
        // Controls: before confining, every attempt below succeeds.
        let mut r = vec![
            (
                "ctl read other pack",
                outcome(std::fs::read(pb.join("secret.txt"))),
            ),
            (
                "ctl write outside",
                outcome(std::fs::write(out.join("c"), "x")),
            ),
            ("ctl signal sibling", outcome(sys::kill(sleeper, 0))),
            ("ctl sibling memory", outcome(std::fs::File::open(&mem))),
        ];
        match confine_forked_worker(&spec_a) {
            Ok(rep) => {
                r.push(("uid", rep.uid.to_string()));
                r.push(("gid", rep.gid.to_string()));
                r.push(("scoped", rep.landlock.scoped.to_string()));
            }
            Err(e) => return format!("confine={e}\n"),
        }
        r.push(("read own pack", outcome(std::fs::read(pa.join("code.py")))));
        r.push(("read system", outcome(std::fs::read("/etc/passwd"))));
        r.push(("write rw", outcome(std::fs::write(rwa.join("n"), "x"))));
        r.push((
            "read other pack",
            outcome(std::fs::read(pb.join("secret.txt"))),
        ));
        r.push(("write own pack", outcome(std::fs::write(pa.join("n"), "x"))));
        r.push(("write outside", outcome(std::fs::write(out.join("n"), "x"))));
        r.push(("signal sibling", outcome(sys::kill(sleeper, 0))));
        r.push(("sibling memory", outcome(std::fs::File::open(&mem))));
        r.push((
            "caps clear, nnp",
            match capabilities::current() {
                Ok(c) => format!(
                    "{}",
                    c.permitted == 0 && c.effective == 0 && c.ambient == 0 && c.no_new_privs
                ),
                Err(e) => e.to_string(),
            },
        ));
        r.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    });
    let text = read_all(fd);
    let st = sys::wait(worker, 0).unwrap();
    let _ = sys::kill(sleeper, libc::SIGKILL);
    let _ = sys::wait(sleeper, 0);
    assert_eq!(
        st.map(|(_, s)| s),
        Some(sys::WaitStatus::Exited(0)),
        "{text}"
    );
    let got: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let want_id = if root { WORKER_ID } else { sys::geteuid() };
    let expect: &[(&str, &str)] = &[
        ("ctl read other pack", "ok"),
        ("ctl write outside", "ok"),
        ("ctl signal sibling", "ok"),
        ("ctl sibling memory", "ok"),
        ("read own pack", "ok"),
        ("read system", "ok"),
        ("write rw", "ok"),
        ("read other pack", "EACCES"),
        ("write own pack", "EACCES"),
        ("write outside", "EACCES"),
        ("signal sibling", "EPERM"),
        ("caps clear, nnp", "true"),
        ("scoped", "true"),
    ];
    for (k, v) in expect {
        assert_eq!(got.get(k), Some(v), "{k}: {text}");
    }
    assert_ne!(got.get("sibling memory"), Some(&"ok"), "{text}");
    assert_eq!(
        got.get("uid"),
        Some(&want_id.to_string().as_str()),
        "{text}"
    );
    if root {
        assert_eq!(
            got.get("gid"),
            Some(&WORKER_ID.to_string().as_str()),
            "{text}"
        );
    }
    // What the worker wrote belongs to it, and only the rw path has it.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(rw_a.join("n")).unwrap().uid(), want_id);
    assert!(!pack_a.join("n").exists() && !outside.join("n").exists());
}

#[test]
fn the_rules_cover_the_system_and_the_given_paths_only() {
    let d = tempfile::tempdir().unwrap();
    let s = ConfineSpec {
        ro_paths: vec![d.path().into(), "/no/such/path".into()],
        rw_paths: vec![d.path().join("missing")],
        system: false,
        ..ConfineSpec::default()
    };
    let rules = s.rules();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0], (d.path().to_path_buf(), Access::ReadExec, true));
    let sys_rules = ConfineSpec {
        system: true,
        ..ConfineSpec::default()
    }
    .rules();
    assert!(sys_rules.contains(&("/usr".into(), Access::ReadExec, true)));
    assert!(sys_rules
        .iter()
        .all(|(p, a, _)| *a != Access::ReadWrite || p.starts_with("/dev")));
}
