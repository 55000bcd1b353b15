//! `cargo xtask bench launch`: what a sandbox costs to start.
//!
//! Measures, in one run and interleaved in a random order per round (so
//! drift, noise from other load and the aftermath of the previous launch hit
//! every row alike), the median and p90 wall time from fork to reaped exit
//! of:
//!
//! * plain fork+exec of `/bin/true` (the baseline),
//! * `nodecell run -- /bin/true` (release build, default policy),
//! * `bwrap --unshare-all --die-with-parent --ro-bind /usr /usr ... /bin/true`,
//! * `nodecell run --memory 256M --pids 64 -- /bin/true` (with cgroups; informative),
//! * with `--static`, the same `nodecell run` built as the wheel's launcher
//!   is (static-pie, `-C target-feature=+crt-static`, stripped, in
//!   target/launcher like pyshim/build.rs): the launcher the wheel ships.
//!
//! * with `--compare PATH` (repeatable), another nodecell binary's
//!   `run -- /bin/true`, for before/after comparisons in one run;
//!
//! * "namespaces only": `clone` into the six namespaces nodecell and bwrap
//!   create, the uid/gid maps written, then exec of `/bin/true`: no mounts,
//!   no Landlock, no seccomp. What the kernel charges for the namespaces
//!   alone, the floor under both sandboxes (informative).
//!
//! Every binary is timed from a fresh copy under `target/bench/bin` (the
//! same bytes start measurably slower from the file the linker wrote).
//!
//! Each row also gets the CPU time of its whole process tree (user + system,
//! from `getrusage` of the bench itself, which forks, and of its reaped
//! children; the bench is a child subreaper, so the
//! sandbox's init and the command, left behind by a launcher that returns
//! before the namespaces are torn down, are reaped and counted too), which
//! load on a shared machine disturbs far less than wall time. Kernel work done
//! in kernel threads (a network namespace's teardown) is not counted. The
//! orphans are reaped after the clock stops, before the next launch.
//!
//! Goals (reported, never asserted): nodecell within 3 ms of fork+exec and
//! no slower than bwrap, for `target/release/nodecell` and, with `--static`,
//! for the static build (the launcher the wheel ships). Prints a table and
//! writes `target/bench/launch.json` as
//! `{"rows":[{"name":..., "median_ns":..., "p90_ns":..., "cpu_median_ns":...}]}`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Arguments of `cargo xtask bench launch`.
#[derive(clap::Args)]
pub struct Args {
    /// Launches per row.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Warm-up launches per row (not measured).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The nodecell binary (default: build and use target/release/nodecell).
    #[arg(long)]
    nodecell: Option<PathBuf>,
    /// Also build the static-pie nodecell the wheel ships
    /// (`-C target-feature=+crt-static`, stripped, into target/launcher as
    /// pyshim/build.rs does) and add it as a row.
    #[arg(long = "static")]
    with_static: bool,
    /// Another nodecell binary to time in the same interleaved run (for
    /// instance a copy built from `main` before a change): adds the row
    /// `nodecell run -- /bin/true (compare: PATH)`. Repeatable.
    #[arg(long, value_name = "PATH")]
    compare: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    name: String,
    median_ns: u64,
    p90_ns: u64,
    /// Median CPU time (user + system) of the row's whole process tree.
    cpu_median_ns: u64,
}

#[derive(Serialize)]
struct Report {
    rows: Vec<Row>,
}

/// Entry point.
pub fn main(args: Args) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let nodecell = match args.nodecell {
        Some(p) => p,
        None => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args([
                    "build",
                    "-q",
                    "--release",
                    "-p",
                    "nodecell",
                    "--bin",
                    "nodecell",
                ])
                .current_dir(&root)
                .status()
                .context("cargo build --release")?;
            if !st.success() {
                bail!("cargo build --release -p nodecell failed");
            }
            target.join("release/nodecell")
        }
    };
    let static_bin = if args.with_static {
        // Built exactly as the wheel's launcher (pyshim/build.rs): the same
        // flags, profile settings and target folder, so the two share one
        // build and the row times what the wheel ships.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let dir = target.join("launcher");
        let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let st = Command::new(cargo)
            .args([
                "build",
                "-q",
                "--release",
                "-p",
                "nodecell",
                "--bin",
                "nodecell",
                "--target",
                &triple,
                "--target-dir",
            ])
            .arg(&dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(&root)
            .status()
            .context("cargo build (static)")?;
        if !st.success() {
            bail!("the static build failed");
        }
        Some(dir.join(triple).join("release/nodecell"))
    } else {
        None
    };
    let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("bwrap not found: install Debian's bubblewrap (scripts/setup.sh does)")?;
    // Every binary timed is a fresh copy under target/bench/bin: the same
    // bytes launch ~0.5 ms slower from the file the linker wrote than from a
    // copy of it (more page faults: measured 2.62 vs 2.09 ms over fork+exec,
    // same run), so rows would otherwise compare how their files were
    // written. An installed wheel's launcher is such a copy.
    let bin_dir = target.join("bench/bin");
    std::fs::create_dir_all(&bin_dir)?;
    let nodecell = fresh_copy(&nodecell, &bin_dir.join("nodecell"))?;
    let static_bin = match static_bin {
        Some(s) => Some(fresh_copy(&s, &bin_dir.join("nodecell-static"))?),
        None => None,
    };
    let compare: Vec<PathBuf> = args
        .compare
        .iter()
        .enumerate()
        .map(|(i, p)| fresh_copy(p, &bin_dir.join(format!("compare-{i}"))))
        .collect::<Result<_>>()?;
    let n = nodecell.display().to_string();
    let b = bwrap.display().to_string();
    let mut bwrap_argv: Vec<String> = vec![
        b,
        "--unshare-all".into(),
        "--die-with-parent".into(),
        "--ro-bind".into(),
        "/usr".into(),
        "/usr".into(),
    ];
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        if std::fs::symlink_metadata(link)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            bwrap_argv.extend(["--symlink".into(), target.into(), link.into()]);
        } else if Path::new(link).exists() {
            bwrap_argv.extend(["--ro-bind".into(), link.into(), link.into()]);
        }
    }
    bwrap_argv.extend([
        "--proc".into(),
        "/proc".into(),
        "--dev".into(),
        "/dev".into(),
        "/bin/true".into(),
    ]);

    let mut cases: Vec<(&str, Vec<String>)> = vec![
        ("fork+exec /bin/true", vec!["/bin/true".into()]),
        (
            "nodecell run -- /bin/true",
            vec![n.clone(), "run".into(), "--".into(), "/bin/true".into()],
        ),
        ("bwrap --unshare-all ... /bin/true", bwrap_argv),
        (
            "nodecell run --memory --pids (cgroups)",
            vec![
                n,
                "run".into(),
                "--memory".into(),
                "256M".into(),
                "--pids".into(),
                "64".into(),
                "--".into(),
                "/bin/true".into(),
            ],
        ),
    ];
    cases.push((NAMESPACES_ONLY, vec!["/bin/true".into()]));
    if let Some(s) = &static_bin {
        cases.push((
            "nodecell run -- /bin/true (static build)",
            vec![
                s.display().to_string(),
                "run".into(),
                "--".into(),
                "/bin/true".into(),
            ],
        ));
    }
    let compare_names: Vec<String> = args
        .compare
        .iter()
        .map(|p| format!("nodecell run -- /bin/true (compare: {})", p.display()))
        .collect();
    for (p, name) in compare.iter().zip(&compare_names) {
        cases.push((
            name.as_str(),
            vec![
                p.display().to_string(),
                "run".into(),
                "--".into(),
                "/bin/true".into(),
            ],
        ));
    }
    let prepared: Vec<(String, Vec<CString>)> = cases
        .into_iter()
        .map(|(name, argv)| {
            (
                name.to_string(),
                argv.into_iter().map(|a| CString::new(a).unwrap()).collect(),
            )
        })
        .collect();

    // Orphans (a sandbox's init outliving its launcher) come back to us, so
    // their CPU time is counted and none is left behind.
    // SAFETY: plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    let run = |name: &str, argv: &[CString]| -> Result<i32> {
        let code = if name == NAMESPACES_ONLY {
            spawn_wait_namespaces(argv)?
        } else {
            spawn_wait(argv)?
        };
        reap_orphans();
        Ok(code)
    };
    // Each must work before it is timed.
    for (name, argv) in &prepared {
        let code = run(name, argv)?;
        if code != 0 {
            bail!("{name}: exited with {code}");
        }
    }
    for _ in 0..args.warmup {
        for (name, argv) in &prepared {
            run(name, argv)?;
        }
    }
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(args.iterations); prepared.len()];
    let mut cpu: Vec<Vec<u64>> = vec![Vec::with_capacity(args.iterations); prepared.len()];
    // Each round runs the rows in a fresh random order: what a launch leaves
    // running after it returns (a network namespace's teardown in a kernel
    // thread, ~0.7 ms of CPU) would otherwise always land on the same next
    // row.
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    for _ in 0..args.iterations {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            let (name, argv) = &prepared[i];
            let c0 = children_cpu_ns();
            let t = Instant::now();
            if name == NAMESPACES_ONLY {
                spawn_wait_namespaces(argv)?;
            } else {
                spawn_wait(argv)?;
            }
            samples[i].push(t.elapsed().as_nanos() as u64);
            reap_orphans();
            cpu[i].push(children_cpu_ns().saturating_sub(c0));
        }
    }
    let rows: Vec<Row> = prepared
        .iter()
        .zip(samples.iter_mut().zip(cpu.iter_mut()))
        .map(|((name, _), (s, c))| {
            s.sort_unstable();
            c.sort_unstable();
            Row {
                name: name.clone(),
                median_ns: percentile(s, 0.5),
                p90_ns: percentile(s, 0.9),
                cpu_median_ns: percentile(c, 0.5),
            }
        })
        .collect();

    let base = rows[0].median_ns as f64;
    println!("launch cost, {} runs per row, interleaved", args.iterations);
    let cpu_base = rows[0].cpu_median_ns as f64;
    println!(
        "{:<40} {:>10} {:>10} {:>12} {:>8} {:>10} {:>12}",
        "ROW", "MEDIAN", "P90", "VS FORK+EXEC", "RATIO", "CPU", "CPU VS F+E"
    );
    for r in &rows {
        println!(
            "{:<40} {:>8.2}ms {:>8.2}ms {:>+10.2}ms {:>7.2}x {:>8.2}ms {:>+10.2}ms",
            r.name,
            r.median_ns as f64 / 1e6,
            r.p90_ns as f64 / 1e6,
            (r.median_ns as f64 - base) / 1e6,
            r.median_ns as f64 / base,
            r.cpu_median_ns as f64 / 1e6,
            (r.cpu_median_ns as f64 - cpu_base) / 1e6,
        );
    }
    println!("(CPU: user + system time of the row's whole process tree, median)");
    println!();
    let bwrap_row = &rows[2];
    let goal = |label: &str, r: &Row| {
        let delta = (r.median_ns as f64 - base) / 1e6;
        let vs_bwrap = r.median_ns as f64 / bwrap_row.median_ns as f64;
        println!(
            "goal ({label}): nodecell within 3 ms of fork+exec: {:+.2} ms -> {}",
            delta,
            if delta <= 3.0 { "met" } else { "NOT met" }
        );
        println!(
            "goal ({label}): nodecell no slower than bwrap: {:.2}x bwrap -> {}",
            vs_bwrap,
            if vs_bwrap <= 1.0 { "met" } else { "NOT met" }
        );
    };
    goal("target/release/nodecell", &rows[1]);
    if let Some(r) = rows.iter().find(|r| r.name.contains("static build")) {
        goal("static build, the launcher the wheel ships", r);
    }
    if let Some(r) = rows.iter().find(|r| r.name == NAMESPACES_ONLY) {
        println!(
            "floor: the six namespaces alone cost {:+.2} ms wall, {:+.2} ms CPU over fork+exec",
            (r.median_ns as f64 - base) / 1e6,
            (r.cpu_median_ns as f64 - cpu_base) / 1e6
        );
    }

    let dir = target.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("launch.json");
    std::fs::write(&path, serde_json::to_string_pretty(&Report { rows })?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Name of the row that measures the namespaces alone.
const NAMESPACES_ONLY: &str = "namespaces only: clone(6 ns) + exec";

/// User + system CPU time of this process and every descendant reaped so
/// far (the bench's own share is the `fork`/`clone` it makes for the row).
fn children_cpu_ns() -> u64 {
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            // SAFETY: rusage is plain data; zeroed is valid.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `ru` is a valid rusage for the kernel to fill.
            unsafe { libc::getrusage(who, &mut ru) };
            ns(ru.ru_utime) + ns(ru.ru_stime)
        })
        .sum()
}

/// Waits for every descendant handed to us as a subreaper (a sandbox's init
/// still tearing its namespaces down after its launcher returned).
fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: waiting for any child of ours.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            break; // ECHILD: none left
        }
    }
}

/// `clone` into new user, mount, pid, net, ipc and uts namespaces, write
/// the child's uid/gid maps (our own ids), then let it exec `argv`; waits
/// for it. The namespaces' kernel cost without any of nodecell's or bwrap's
/// other walls.
fn spawn_wait_namespaces(argv: &[CString]) -> Result<i32> {
    let ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    // SAFETY: our uid/gid, no arguments.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut go = [0 as libc::c_int; 2];
    // SAFETY: `go` is a valid array of two ints.
    if unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD;
    // SAFETY: single-threaded; no CLONE_VM and a NULL stack: clone copies the process as
    // fork does; the child only reads, execs and _exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        bail!("clone: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into `b`; then execv with a
        // NULL-terminated array of valid strings.
        unsafe {
            libc::close(go[1]);
            if libc::read(go[0], b.as_mut_ptr().cast(), 1) == 1 {
                libc::execv(ptrs[0], ptrs.as_ptr());
            }
            libc::_exit(127);
        }
    }
    let pid = pid as libc::pid_t;
    // SAFETY: closing our copy of the read end.
    unsafe { libc::close(go[0]) };
    let maps = std::fs::write(format!("/proc/{pid}/uid_map"), format!("{uid} {uid} 1\n"))
        .and_then(|()| std::fs::write(format!("/proc/{pid}/setgroups"), "deny"))
        .and_then(|()| std::fs::write(format!("/proc/{pid}/gid_map"), format!("{gid} {gid} 1\n")));
    // SAFETY: one byte from a valid buffer; then closing our write end.
    unsafe {
        if maps.is_ok() {
            libc::write(go[1], b"g".as_ptr().cast(), 1);
        }
        libc::close(go[1]);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    maps.context("writing the uid/gid maps")?;
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

/// Copies `src` to `dst` (replacing it), executable.
fn fresh_copy(src: &Path, dst: &Path) -> Result<PathBuf> {
    if !src.is_file() {
        bail!("{}: no such file", src.display());
    }
    let _ = std::fs::remove_file(dst);
    std::fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    std::fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(dst.to_path_buf())
}

/// Fisher-Yates shuffle with a xorshift64 generator (no need for a crate:
/// the order only has to vary between rounds).
fn shuffle(v: &mut [usize], seed: &mut u64) {
    for i in (1..v.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// fork + execv + waitpid; returns the exit code. stdout/stderr inherited.
fn spawn_wait(argv: &[CString]) -> Result<i32> {
    let ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    // SAFETY: this task is single-threaded; the child only calls execv and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: `ptrs` is a NULL-terminated array of valid strings.
        unsafe {
            libc::execv(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}
