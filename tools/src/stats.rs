//! The stats snapshot a host answers to `{"op": "stats"}`, and what `nodecell
//! top` derives from two of them taken a moment apart.
//!
//! The host reports what only it knows (packs, workers, call counters, the
//! latency histogram, walls, restarts, in-flight calls); the kernel's figures
//! (CPU, RSS/PSS, cgroup memory) are read by the client ([`crate::sample`]),
//! so a snapshot costs the host nothing but a walk over its cells.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::hist::Counts;
use crate::sample::{sample_cell, CellSample};

/// The snapshot format version this crate reads.
pub const VERSION: u32 = 1;

/// One host process.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HostStats {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The host's pid.
    pub pid: u32,
    /// Its command line.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Where it writes its profile, when profiling.
    #[serde(default)]
    pub profile: Option<String>,
    /// Its cells (one per loaded extension, plus prewarmed ones).
    #[serde(default)]
    pub cells: Vec<CellStats>,
}

/// A sandbox wall and its state, as the launcher reported it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Wall {
    /// Its name (`landlock`, `memory-limit`, ...).
    pub name: String,
    /// `active`, `missing` or `off`.
    pub state: String,
    /// What it does or why it is missing.
    #[serde(default)]
    pub detail: String,
}

/// One worker of a cell.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct WorkerStats {
    /// The worker's number within its cell.
    pub wid: u32,
    /// Host pid (`None` while starting).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Pid inside the sandbox's pid namespace.
    #[serde(default)]
    pub ns_pid: Option<u32>,
    /// Calls waiting for this worker's reply.
    #[serde(default)]
    pub inflight: u64,
    /// Whether it is stopped in a debugger (its call timeouts are suspended).
    #[serde(default)]
    pub debugging: bool,
}

/// One cell (one extension's sandbox).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CellStats {
    /// The extension (pack) name.
    pub pack: String,
    /// `running`, `starting`, `warm` (prewarmed, no extension yet), `stopped` or `crashed`.
    pub state: String,
    /// Host pid of the launcher (`nodecell run`), the root of the cell's processes.
    #[serde(default)]
    pub launcher_pid: Option<u32>,
    /// The cell's cgroup directory, when it has one.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The walls.
    #[serde(default)]
    pub walls: Vec<Wall>,
    /// Configured memory limit, bytes.
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// Configured call timeout, seconds.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Workers that died and were replaced.
    #[serde(default)]
    pub restarts: u64,
    /// The last crash, as text.
    #[serde(default)]
    pub last_crash: Option<String>,
    /// Calls finished since the extension was loaded.
    #[serde(default)]
    pub calls: u64,
    /// Of those, calls that raised.
    #[serde(default)]
    pub errors: u64,
    /// Call latency histogram, sparse `(bucket, count)` ([`crate::hist`]).
    #[serde(default)]
    pub latency: Vec<(u32, u64)>,
    /// The workers.
    #[serde(default)]
    pub workers: Vec<WorkerStats>,
}

impl CellStats {
    /// Calls waiting for a reply now.
    pub fn inflight(&self) -> u64 {
        self.workers.iter().map(|w| w.inflight).sum()
    }

    /// `"15/15"` walls active, or the missing ones named.
    pub fn walls_summary(&self) -> String {
        let asked: Vec<&Wall> = self.walls.iter().filter(|w| w.state != "off").collect();
        let missing: Vec<&str> = asked
            .iter()
            .filter(|w| w.state == "missing")
            .map(|w| w.name.as_str())
            .collect();
        if self.walls.is_empty() {
            return "none".into();
        }
        if missing.is_empty() {
            format!("{}/{}", asked.len(), asked.len())
        } else {
            format!(
                "{}/{} missing {}",
                asked.len() - missing.len(),
                asked.len(),
                missing.join(",")
            )
        }
    }
}

/// One cell as `nodecell top` shows it: the host's counters and the kernel's
/// figures, with rates and percentiles over the last interval.
#[derive(Clone, Debug, Serialize)]
pub struct CellView {
    /// Host pid.
    pub host_pid: u32,
    /// Pack name.
    pub pack: String,
    /// Cell state.
    pub state: String,
    /// Host pids of the workers.
    pub pids: Vec<u32>,
    /// Walls summary (`"13/13"`, or which are missing).
    pub walls: String,
    /// The walls themselves.
    pub wall_list: Vec<Wall>,
    /// Calls per second over the interval.
    pub calls_per_s: f64,
    /// Median call latency over the interval, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile call latency over the interval, microseconds.
    pub p99_us: Option<f64>,
    /// Median since the extension was loaded, microseconds.
    pub p50_us_total: Option<f64>,
    /// 99th percentile since the extension was loaded, microseconds.
    pub p99_us_total: Option<f64>,
    /// Calls since the extension was loaded.
    pub calls: u64,
    /// Of those, calls that raised.
    pub errors: u64,
    /// CPU use of all the cell's processes over the interval (100 = one core).
    pub cpu_percent: Option<f64>,
    /// Total RSS of the cell's processes, bytes.
    pub rss: u64,
    /// Total PSS, bytes.
    pub pss: Option<u64>,
    /// Memory charged to the cell's cgroup, bytes.
    pub memory: Option<u64>,
    /// The cgroup's memory limit, bytes.
    pub memory_limit: Option<u64>,
    /// Processes in the cell (launcher, init, zygote, workers).
    pub processes: usize,
    /// Worker restarts.
    pub restarts: u64,
    /// Calls waiting for a reply.
    pub inflight: u64,
    /// Workers stopped in a debugger.
    pub debugging: usize,
    /// The last crash.
    pub last_crash: Option<String>,
}

/// A host's snapshot together with the kernel's figures, at one moment.
#[derive(Clone, Debug)]
pub struct Observation {
    /// The host's answer.
    pub host: HostStats,
    /// One sample per cell, in the same order.
    pub samples: Vec<CellSample>,
    /// When it was taken.
    pub at: std::time::Instant,
}

impl Observation {
    /// Sample the kernel's figures for every cell of `host`.
    pub fn take(host: HostStats) -> Self {
        let samples = host
            .cells
            .iter()
            .map(|c| match c.launcher_pid {
                Some(pid) => sample_cell(pid, c.cgroup.as_deref().map(Path::new)),
                None => CellSample::default(),
            })
            .collect();
        Self {
            host,
            samples,
            at: std::time::Instant::now(),
        }
    }

    /// The rows of this observation, with rates against `earlier` (the same
    /// host a moment before; `None` for the first observation).
    pub fn views(&self, earlier: Option<&Observation>) -> Vec<CellView> {
        let secs = earlier.map(|e| self.at.duration_since(e.at).as_secs_f64());
        self.host
            .cells
            .iter()
            .zip(&self.samples)
            .map(|(c, s)| {
                let before = earlier.and_then(|e| {
                    e.host
                        .cells
                        .iter()
                        .zip(&e.samples)
                        .find(|(p, _)| p.pack == c.pack && p.launcher_pid == c.launcher_pid)
                });
                let total = Counts(c.latency.clone());
                let window = match before {
                    Some((p, _)) => total.since(&Counts(p.latency.clone())),
                    None => Counts::default(),
                };
                let us = |v: Option<u64>| v.map(|ns| ns as f64 / 1000.0);
                let calls_per_s = match (before, secs) {
                    (Some((p, _)), Some(t)) if t > 0.0 => {
                        c.calls.saturating_sub(p.calls) as f64 / t
                    }
                    _ => 0.0,
                };
                let cpu_percent = match (before, secs) {
                    (Some((_, ps)), Some(t)) if t > 0.0 && !s.procs.is_empty() => {
                        Some(((s.cpu_seconds() - ps.cpu_seconds()) / t * 100.0).max(0.0))
                    }
                    _ => None,
                };
                CellView {
                    host_pid: self.host.pid,
                    pack: c.pack.clone(),
                    state: c.state.clone(),
                    pids: c.workers.iter().filter_map(|w| w.pid).collect(),
                    walls: c.walls_summary(),
                    wall_list: c.walls.clone(),
                    calls_per_s,
                    p50_us: us(window.quantile(0.5)),
                    p99_us: us(window.quantile(0.99)),
                    p50_us_total: us(total.quantile(0.5)),
                    p99_us_total: us(total.quantile(0.99)),
                    calls: c.calls,
                    errors: c.errors,
                    cpu_percent,
                    rss: s.rss(),
                    pss: s.pss(),
                    memory: s.memory.map(|m| m.usage),
                    memory_limit: s.memory.and_then(|m| m.limit).or(c.memory_limit),
                    processes: s.procs.len(),
                    restarts: c.restarts,
                    inflight: c.inflight(),
                    debugging: c.workers.iter().filter(|w| w.debugging).count(),
                    last_crash: c.last_crash.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(calls: u64, lat: Vec<(u32, u64)>) -> CellStats {
        serde_json::from_value(serde_json::json!({
            "pack": "p", "state": "running", "launcher_pid": null, "calls": calls,
            "latency": lat, "walls": [
                {"name": "landlock", "state": "active"},
                {"name": "seccomp", "state": "missing", "detail": "x"},
                {"name": "pids-limit", "state": "off"}],
            "workers": [{"wid": 1, "pid": 10, "inflight": 2}, {"wid": 2, "inflight": 1, "debugging": true}]
        }))
        .unwrap()
    }

    #[test]
    fn snapshots_parse_leniently_and_summarize() {
        let c = cell(3, vec![(40, 3)]);
        assert_eq!(c.inflight(), 3);
        assert_eq!(c.walls_summary(), "1/2 missing seccomp");
        let h: HostStats = serde_json::from_value(serde_json::json!({
            "version": 1, "pid": 5, "cells": [], "future_field": 1}))
        .unwrap();
        assert_eq!(h.pid, 5);
    }

    #[test]
    fn rates_and_window_percentiles() {
        let host = |c: CellStats| HostStats {
            version: VERSION,
            pid: 1,
            argv: vec![],
            profile: None,
            cells: vec![c],
        };
        let a = Observation::take(host(cell(10, vec![(40, 10)])));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = Observation::take(host(cell(30, vec![(40, 10), (80, 20)])));
        let v = &b.views(Some(&a))[0];
        assert!(v.calls_per_s > 100.0, "{}", v.calls_per_s);
        let mid80 = crate::hist::middle(80) as f64 / 1000.0;
        assert_eq!(v.p50_us, Some(mid80));
        assert_eq!(v.p99_us, Some(mid80));
        assert!(v.p50_us_total.unwrap() == mid80);
        assert_eq!(v.debugging, 1);
        assert_eq!(b.views(None)[0].p50_us, None);
    }
}
