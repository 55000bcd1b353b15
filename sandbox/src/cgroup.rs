//! The cgroup wall: memory, pids and CPU limits with cgroups-rs, on cgroup
//! v2 where its controllers are available and on the v1 hierarchies of
//! hybrid hosts. The sandbox's cgroup is always created under the
//! launcher's own cgroup in each hierarchy (what a delegated systemd
//! subtree gives a normal user), never elsewhere, and removed when the
//! sandbox ends (on v1 the remaining processes are killed first, since
//! `cgroup.kill` only exists on v2).
//!
//! Nothing here runs when no limit is asked for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::hierarchies::{self, V1, V2};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controllers, MaxValue};
use cgroups_rs::CgroupPid;

/// Limits asked for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// Fraction of one CPU.
    pub cpu: Option<f64>,
}

impl Limits {
    /// Whether any limit is asked for.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpu.is_some()
    }
}

/// A cgroup controller the sandbox can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    /// `memory`.
    Memory,
    /// `pids`.
    Pids,
    /// `cpu`.
    Cpu,
}

impl Controller {
    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
    fn v1(self) -> Controllers {
        match self {
            Controller::Memory => Controllers::Mem,
            Controller::Pids => Controllers::Pids,
            Controller::Cpu => Controllers::Cpu,
        }
    }
}

/// Which cgroup version manages the controllers on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One unified hierarchy.
    V2,
    /// Per-controller v1 hierarchies (legacy or hybrid hosts).
    V1,
}

/// The host's cgroup version for resource controllers.
pub fn version() -> Version {
    if hierarchies::is_cgroup2_unified_mode() {
        Version::V2
    } else {
        Version::V1
    }
}

/// The launcher's own cgroup paths from `/proc/self/cgroup` text: v1
/// controller name → path, and the v2 path under the key `""`.
pub fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert(String::new(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

/// Relative path of a child `name` of `own` inside a hierarchy mounted with
/// root `mount_root`.
pub fn child_path(own: &str, mount_root: &Path, name: &str) -> PathBuf {
    let own = Path::new(own);
    let rel = own.strip_prefix(mount_root).unwrap_or(own);
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    rel.join(name)
}

/// One controller's cgroup of a sandbox.
#[derive(Debug)]
pub struct Part {
    /// Which controller (on v2 the first of the shared cgroup).
    pub controller: Controller,
    /// The cgroup directory.
    pub dir: PathBuf,
    cg: Cgroup,
}

/// The sandbox's cgroups (one per controller on v1, one on v2).
#[derive(Debug, Default)]
pub struct SandboxCgroup {
    /// The created cgroups.
    pub parts: Vec<Part>,
    v2: bool,
}

/// What happened to each controller asked for.
pub type ControllerResults = Vec<(Controller, Result<PathBuf, String>)>;

impl SandboxCgroup {
    /// Creates the cgroups for `limits` under the launcher's own cgroups and
    /// writes the limits. Returns what was created and, per controller,
    /// its directory or why it is missing.
    pub fn create(limits: &Limits, name: &str) -> (SandboxCgroup, ControllerResults) {
        let mut asked = Vec::new();
        if limits.memory.is_some() {
            asked.push(Controller::Memory);
        }
        if limits.pids.is_some() {
            asked.push(Controller::Pids);
        }
        if limits.cpu.is_some() {
            asked.push(Controller::Cpu);
        }
        let own = match std::fs::read_to_string("/proc/self/cgroup") {
            Ok(t) => parse_proc_cgroup(&t),
            Err(e) => {
                let why = format!("reading /proc/self/cgroup: {e}");
                return (
                    SandboxCgroup::default(),
                    asked.into_iter().map(|c| (c, Err(why.clone()))).collect(),
                );
            }
        };
        match version() {
            Version::V1 => Self::create_v1(limits, &asked, &own, name),
            Version::V2 => Self::create_v2(limits, &asked, &own, name),
        }
    }

    fn create_v1(
        limits: &Limits,
        asked: &[Controller],
        own: &HashMap<String, String>,
        name: &str,
    ) -> (SandboxCgroup, ControllerResults) {
        let v1 = V1::new();
        let mut sc = SandboxCgroup {
            parts: Vec::new(),
            v2: false,
        };
        let mut results = Vec::new();
        for &c in asked {
            let res = (|| -> Result<PathBuf, String> {
                let (mount, root) = v1.get_mount_point(c.v1()).ok_or_else(|| {
                    format!("no cgroup v1 hierarchy has the {} controller", c.name())
                })?;
                let own_path = own
                    .get(c.name())
                    .ok_or_else(|| format!("/proc/self/cgroup lists no {} hierarchy", c.name()))?;
                let rel = child_path(own_path, &root, name);
                let dir = mount.join(&rel);
                let cg = Cgroup::new_with_specified_controllers(
                    Box::new(V1::new()),
                    &rel,
                    Some(vec![c.name().to_string()]),
                )
                .map_err(|e| create_error(&dir, &e))?;
                let part = Part {
                    controller: c,
                    dir: dir.clone(),
                    cg,
                };
                if let Err(e) = set_limit(&part.cg, &part.dir, c, limits, false) {
                    let _ = part.cg.delete();
                    return Err(format!("{}: {e}", dir.display()));
                }
                sc.parts.push(part);
                Ok(dir)
            })();
            results.push((c, res));
        }
        (sc, results)
    }

    fn create_v2(
        limits: &Limits,
        asked: &[Controller],
        own: &HashMap<String, String>,
        name: &str,
    ) -> (SandboxCgroup, ControllerResults) {
        let mut sc = SandboxCgroup {
            parts: Vec::new(),
            v2: true,
        };
        let Some(own_path) = own.get("") else {
            let why = "/proc/self/cgroup has no cgroup v2 line".to_string();
            return (sc, asked.iter().map(|&c| (c, Err(why.clone()))).collect());
        };
        let root = PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT);
        let rel = child_path(own_path, Path::new("/"), name);
        let dir = root.join(&rel);
        let parent = dir.parent().unwrap_or(&root).to_path_buf();
        // A controller is usable only when the parent delegates it.
        let enabled =
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        let mut usable = Vec::new();
        let mut results = Vec::new();
        for &c in asked {
            if enabled.split_whitespace().any(|x| x == c.name())
                || std::fs::write(
                    parent.join("cgroup.subtree_control"),
                    format!("+{}", c.name()),
                )
                .is_ok()
            {
                usable.push(c);
            } else {
                results.push((
                    c,
                    Err(format!(
                        "the {} controller is not enabled in {}/cgroup.subtree_control (run nodecell from a delegated cgroup whose subtree_control enables memory, pids and cpu)",
                        c.name(),
                        parent.display()
                    )),
                ));
            }
        }
        if usable.is_empty() {
            return (sc, results);
        }
        let names: Vec<String> = usable.iter().map(|c| c.name().to_string()).collect();
        let cg =
            match Cgroup::new_with_specified_controllers(Box::new(V2::new()), &rel, Some(names)) {
                Ok(cg) => cg,
                Err(e) => {
                    let why = create_error(&dir, &e);
                    results.extend(usable.iter().map(|&c| (c, Err(why.clone()))));
                    return (sc, results);
                }
            };
        let mut ok = Vec::new();
        for &c in &usable {
            match set_limit(&cg, &dir, c, limits, true) {
                Ok(()) => {
                    ok.push(c);
                    results.push((c, Ok(dir.clone())));
                }
                Err(e) => results.push((c, Err(format!("{}: {e}", dir.display())))),
            }
        }
        if ok.is_empty() {
            let _ = cg.delete();
        } else {
            sc.parts.push(Part {
                controller: ok[0],
                dir,
                cg,
            });
        }
        (sc, results)
    }

    /// Whether nothing was created.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The directory to report (the memory cgroup's when there is one).
    pub fn report_path(&self) -> Option<&Path> {
        self.parts
            .iter()
            .find(|p| p.controller == Controller::Memory)
            .or_else(|| self.parts.first())
            .map(|p| p.dir.as_path())
    }

    /// Moves process `pid` (all its threads) into every part.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), String> {
        for p in &self.parts {
            p.cg.add_task_by_tgid(CgroupPid::from(pid as u64))
                .map_err(|e| format!("adding pid {pid} to {}: {e}", p.dir.display()))?;
        }
        Ok(())
    }

    /// Number of OOM kills in the memory cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        self.parts
            .iter()
            .find(|p| {
                p.controller == Controller::Memory
                    || (self.v2 && p.dir.join("memory.events").exists())
            })
            .map_or(0, |p| oom_kills_in(&p.dir))
    }

    /// Kills every process left and removes the cgroups. Returns the
    /// directories that could not be removed.
    pub fn destroy(self) -> Vec<String> {
        let mut left = Vec::new();
        for p in self.parts {
            for _ in 0..200 {
                let procs = p.cg.procs();
                if procs.is_empty() {
                    break;
                }
                for pid in procs {
                    // Errors mean it already left.
                    let _ = crate::sys::kill(pid.pid as libc::pid_t, libc::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if let Err(e) = p.cg.delete() {
                left.push(format!("{}: {e}", p.dir.display()));
            }
        }
        left
    }
}

fn create_error(dir: &Path, e: &cgroups_rs::fs::error::Error) -> String {
    // Report the underlying errno, not the wrapper's debug text.
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            let hint = if io.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    " (uid {} may not create cgroups under {}: it needs a delegated cgroup)",
                    crate::sys::geteuid(),
                    dir.parent().unwrap_or(dir).display()
                )
            } else {
                String::new()
            };
            return format!("creating {}: {io}{hint}", dir.display());
        }
        src = s.source();
    }
    format!("creating {}: {e}", dir.display())
}

fn set_limit(
    cg: &Cgroup,
    dir: &Path,
    c: Controller,
    limits: &Limits,
    v2: bool,
) -> Result<(), String> {
    match c {
        Controller::Memory => {
            let bytes = limits.memory.unwrap_or(0) as i64;
            let m = cg
                .controller_of::<MemController>()
                .ok_or("no memory controller in the cgroup")?;
            m.set_limit(bytes)
                .map_err(|e| format!("memory limit: {e}"))?;
            // No swapping around the limit: on v1 memsw = limit, on v2 swap.max = 0.
            let swap = if v2 { 0 } else { bytes };
            let swap_file = if v2 {
                "memory.swap.max"
            } else {
                "memory.memsw.limit_in_bytes"
            };
            if dir.join(swap_file).exists() {
                m.set_memswap_limit(swap)
                    .map_err(|e| format!("swap limit: {e}"))?;
            }
            Ok(())
        }
        Controller::Pids => {
            let n = limits.pids.unwrap_or(1) as i64;
            let p = cg
                .controller_of::<PidController>()
                .ok_or("no pids controller in the cgroup")?;
            p.set_pid_max(MaxValue::Value(n))
                .map_err(|e| format!("pids limit: {e}"))
        }
        Controller::Cpu => {
            let (quota, period) = cpu_quota(limits.cpu.unwrap_or(1.0));
            let cpu = cg
                .controller_of::<CpuController>()
                .ok_or("no cpu controller in the cgroup")?;
            cpu.set_cfs_quota_and_period(Some(quota), Some(period))
                .map_err(|e| format!("cpu quota: {e}"))
        }
    }
}

/// CFS quota and period (microseconds) for a CPU fraction: 100 ms periods,
/// quota at least 1 ms.
pub fn cpu_quota(fraction: f64) -> (i64, u64) {
    let period: u64 = 100_000;
    let quota = ((fraction * period as f64).round() as i64).max(1000);
    (quota, period)
}

/// Number of OOM kills recorded in the memory cgroup directory `dir`, v2
/// (`memory.events`) or v1 (`memory.oom_control`): the `oom_kill` line of
/// whichever the directory has; 0 when neither can be read. The one place
/// nodecell counts OOM kills (the launcher's report and the Python host's
/// crash reasons both use it).
pub fn oom_kills_in(dir: &Path) -> u64 {
    ["memory.events", "memory.oom_control"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .find_map(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_v2_and_v1_files() {
        let dir = std::env::temp_dir().join(format!("nodecell-oom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(oom_kills_in(&dir), 0, "no file: none");
        std::fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(oom_kills_in(&dir), 3, "v1");
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills_in(&dir), 2, "v2 first");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proc_cgroup_parses_hybrid_and_v2_lines() {
        let text = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x:y\n0::/user.slice/app.scope\n";
        let m = parse_proc_cgroup(text);
        assert_eq!(m["memory"], "/process_api/abc");
        assert_eq!(m["pids"], "/");
        assert_eq!(m["cpu"], "/x:y");
        assert_eq!(m["cpuacct"], "/x:y");
        assert_eq!(m[""], "/user.slice/app.scope");
    }

    #[test]
    fn children_go_under_our_own_cgroup() {
        assert_eq!(
            child_path("/process_api/abc", Path::new("/"), "nodecell-1"),
            PathBuf::from("process_api/abc/nodecell-1")
        );
        assert_eq!(
            child_path("/", Path::new("/"), "nodecell-1"),
            PathBuf::from("nodecell-1")
        );
        // A hierarchy mounted at a sub-root: paths are relative to it.
        assert_eq!(
            child_path("/lxc/c1/app", Path::new("/lxc/c1"), "n"),
            PathBuf::from("app/n")
        );
    }

    #[test]
    fn cpu_fractions_become_cfs_quotas() {
        assert_eq!(cpu_quota(0.5), (50_000, 100_000));
        assert_eq!(cpu_quota(2.0), (200_000, 100_000));
        assert_eq!(cpu_quota(0.001), (1000, 100_000));
    }

    #[test]
    fn no_limits_means_nothing_to_do() {
        assert!(!Limits::default().any());
        assert!(Limits {
            pids: Some(3),
            ..Limits::default()
        }
        .any());
    }

    /// The directories of our own cgroup for each controller (v1), or the
    /// one v2 directory, and whether this user may create children there.
    fn own_dirs_writable() -> bool {
        let own = parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
        match version() {
            Version::V2 => {
                let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT)
                    .join(own[""].trim_start_matches('/'));
                crate::sys::access(&dir, libc::W_OK).is_ok()
            }
            Version::V1 => {
                let v1 = V1::new();
                [Controller::Memory, Controller::Pids, Controller::Cpu]
                    .iter()
                    .all(|c| {
                        let Some((mount, root)) = v1.get_mount_point(c.v1()) else {
                            return false;
                        };
                        let dir = mount.join(child_path(&own[c.name()], &root, ""));
                        crate::sys::access(&dir, libc::W_OK).is_ok()
                    })
            }
        }
    }

    /// Reads one limit file of a created cgroup.
    fn limit(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
            .trim()
            .to_string()
    }

    /// Creates real cgroups under our own, moves a child in, checks the
    /// limits in the files of whichever version manages the controllers here
    /// (v2 where it has them; this development host is hybrid and checks
    /// v1), and removes everything. Without a writable own cgroup (rootless,
    /// no delegation) it checks that every controller is refused with a
    /// reason that says so, instead.
    #[test]
    fn create_limit_add_and_destroy() {
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(17),
            cpu: Some(0.25),
        };
        let name = format!("nodecell-unit-{}", std::process::id());
        let writable = own_dirs_writable();
        let (cg, results) = SandboxCgroup::create(&limits, &name);
        if !writable {
            assert_eq!(results.len(), 3);
            for (c, r) in &results {
                let why = r.as_ref().expect_err("created without a writable cgroup");
                assert!(
                    why.contains("delegated") || why.contains("subtree_control"),
                    "{}: {why}",
                    c.name()
                );
            }
            assert!(cg.is_empty());
            eprintln!("cgroup: own cgroup not writable: checked that every controller is refused with the reason");
            return;
        }
        for (c, r) in &results {
            let dir = r.as_ref().unwrap_or_else(|e| panic!("{}: {e}", c.name()));
            assert!(dir.is_dir());
            assert!(dir.ends_with(&name));
        }
        let dir_of = |c: Controller| {
            results
                .iter()
                .find(|(x, _)| *x == c)
                .and_then(|(_, r)| r.as_ref().ok())
                .unwrap()
                .clone()
        };
        match version() {
            Version::V2 => {
                eprintln!("cgroup: checked the limits in cgroup v2 files");
                assert_eq!(
                    limit(&dir_of(Controller::Memory), "memory.max"),
                    (64u64 << 20).to_string()
                );
                assert_eq!(limit(&dir_of(Controller::Pids), "pids.max"), "17");
                assert_eq!(limit(&dir_of(Controller::Cpu), "cpu.max"), "25000 100000");
            }
            Version::V1 => {
                eprintln!("cgroup: this host is hybrid (no v2 controllers): checked the limits in cgroup v1 files");
                assert_eq!(
                    limit(&dir_of(Controller::Memory), "memory.limit_in_bytes"),
                    (64u64 << 20).to_string()
                );
                assert_eq!(limit(&dir_of(Controller::Pids), "pids.max"), "17");
                assert_eq!(limit(&dir_of(Controller::Cpu), "cpu.cfs_quota_us"), "25000");
                assert_eq!(
                    limit(&dir_of(Controller::Cpu), "cpu.cfs_period_us"),
                    "100000"
                );
            }
        }
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("10")
            .spawn()
            .unwrap();
        cg.add(child.id() as i32).unwrap();
        for p in &cg.parts {
            let procs = std::fs::read_to_string(p.dir.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == child.id().to_string()),
                "{}",
                p.dir.display()
            );
        }
        assert_eq!(cg.oom_kills(), 0);
        let dirs: Vec<PathBuf> = cg.parts.iter().map(|p| p.dir.clone()).collect();
        assert!(cg.destroy().is_empty());
        let status = child.wait().unwrap();
        assert!(!status.success(), "destroy killed the process left inside");
        for d in dirs {
            assert!(!d.exists(), "{} removed", d.display());
        }
    }
}
