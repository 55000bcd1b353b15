//! What the kernel says about a cell: CPU time, RSS and PSS of its processes
//! (`/proc/<pid>/stat`, `/proc/<pid>/smaps_rollup`) and its memory cgroup's
//! usage and limit (cgroup v2 `memory.current`/`memory.max`, or v1
//! `memory.usage_in_bytes`/`memory.limit_in_bytes`).
//!
//! A cell's processes are its launcher and every descendant of it (the
//! sandbox's init, the zygote, the workers), found through
//! `/proc/<pid>/task/<tid>/children`. Values that cannot be read (a process
//! that just exited, a file this user may not read) are left out, never
//! guessed.

use std::fs;
use std::path::Path;

use serde::Serialize;

/// One process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcInfo {
    /// Host pid.
    pub pid: u32,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, bytes.
    pub rss: u64,
    /// Proportional set size, bytes (`None` when smaps_rollup is unreadable).
    pub pss: Option<u64>,
}

/// A memory cgroup's usage and limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupMemory {
    /// Bytes charged to the cgroup now.
    pub usage: u64,
    /// Its limit in bytes (`None`: unlimited).
    pub limit: Option<u64>,
}

/// One cell at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CellSample {
    /// Its processes.
    pub procs: Vec<ProcInfo>,
    /// Its memory cgroup, when it has one that can be read.
    pub memory: Option<CgroupMemory>,
}

impl CellSample {
    /// CPU time of all processes, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let t: u64 = self.procs.iter().map(|p| p.cpu_ticks).sum();
        t as f64 / clock_ticks() as f64
    }

    /// Total RSS (counts shared pages once per process).
    pub fn rss(&self) -> u64 {
        self.procs.iter().map(|p| p.rss).sum()
    }

    /// Total PSS (shared pages split between their users), when every process's was readable.
    pub fn pss(&self) -> Option<u64> {
        self.procs.iter().map(|p| p.pss).sum()
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 when unknown).
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .map_or(100, |t| t as u64)
}

/// `root` and all its descendants that exist now (root first).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if out.contains(&pid) || out.len() > 4096 {
            continue;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        out.push(pid);
        for t in tasks.flatten() {
            if let Ok(kids) = fs::read_to_string(t.path().join("children")) {
                todo.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// Parse the utime + stime fields of a `/proc/<pid>/stat` line.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` field of smaps_rollup or status, in bytes.
pub fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// One process's CPU time, RSS and PSS; `None` when it is gone.
pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    let cpu_ticks = parse_stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok();
    let rss = match rollup.as_deref().and_then(|r| kb_field(r, "Rss")) {
        Some(r) => r,
        None => kb_field(
            &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
            "VmRSS",
        )
        .unwrap_or(0),
    };
    let pss = rollup.as_deref().and_then(|r| kb_field(r, "Pss"));
    Some(ProcInfo {
        pid,
        cpu_ticks,
        rss,
        pss,
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The usage and limit of the memory cgroup at `dir` (v2 or v1).
pub fn cgroup_memory(dir: &Path) -> Option<CgroupMemory> {
    if let Some(usage) = read_u64(&dir.join("memory.current")) {
        let limit = fs::read_to_string(dir.join("memory.max"))
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok());
        return Some(CgroupMemory { usage, limit });
    }
    let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
    // v1 spells "unlimited" as a page-rounded i64::MAX.
    let limit = read_u64(&dir.join("memory.limit_in_bytes")).filter(|&l| l < 1 << 62);
    Some(CgroupMemory { usage, limit })
}

/// Sample the cell whose launcher is `root` and whose cgroup (if any) is `cgroup`.
pub fn sample_cell(root: u32, cgroup: Option<&Path>) -> CellSample {
    CellSample {
        procs: descendants(root)
            .into_iter()
            .filter_map(proc_info)
            .collect(),
        memory: cgroup.and_then(cgroup_memory),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_odd_command_names() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu(line), Some(12));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn kb_fields() {
        let t = "Rss:                1024 kB\nPss:                 512 kB\n";
        assert_eq!(kb_field(t, "Rss"), Some(1 << 20));
        assert_eq!(kb_field(t, "Pss"), Some(512 << 10));
        assert_eq!(kb_field(t, "Swap"), None);
    }

    #[test]
    fn this_process_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        // /proc/<pid>/task/<tid>/children can miss a child while other tests of this
        // process create or reap theirs (the kernel walks a list that changes under it):
        // look again a few times before concluding the child is not seen.
        let mut all = descendants(me);
        let mut s = sample_cell(me, None);
        for _ in 0..100 {
            if all.contains(&child.id()) && s.procs.iter().any(|p| p.pid == child.id()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            all = descendants(me);
            s = sample_cell(me, None);
        }
        assert_eq!(all[0], me);
        assert!(all.contains(&child.id()), "{all:?}");
        assert!(s.rss() > 1 << 20, "{s:?}");
        assert!(s.procs.iter().any(|p| p.pid == child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn cgroup_files_v1_and_v2() {
        let t = tempfile::tempdir().unwrap();
        let v2 = t.path().join("v2");
        fs::create_dir(&v2).unwrap();
        fs::write(v2.join("memory.current"), "1000\n").unwrap();
        fs::write(v2.join("memory.max"), "max\n").unwrap();
        assert_eq!(
            cgroup_memory(&v2),
            Some(CgroupMemory {
                usage: 1000,
                limit: None
            })
        );
        fs::write(v2.join("memory.max"), "4096\n").unwrap();
        assert_eq!(cgroup_memory(&v2).unwrap().limit, Some(4096));
        let v1 = t.path().join("v1");
        fs::create_dir(&v1).unwrap();
        fs::write(v1.join("memory.usage_in_bytes"), "2000\n").unwrap();
        fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(cgroup_memory(&v1).unwrap().limit, None);
        fs::write(v1.join("memory.limit_in_bytes"), "512000000\n").unwrap();
        assert_eq!(cgroup_memory(&v1).unwrap().limit, Some(512_000_000));
        assert_eq!(cgroup_memory(t.path()), None);
    }
}
