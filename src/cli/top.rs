//! `nodecell top`: every cell of the running host processes — pack, pids,
//! walls, calls/s, p50/p99 latency, CPU%, RSS/PSS, memory against the cgroup
//! limit, restarts, in-flight calls — live (a terminal view), or once as a
//! table or JSON for scripts.
//!
//! The host answers with its counters over its tools socket
//! (`nodecell_tools::socket`); CPU, memory and cgroup figures are read here
//! from `/proc` and the cgroup files (`nodecell_tools::sample`). Rates and
//! window percentiles compare two observations `--interval` apart.

use std::time::Duration;

use clap::Args;
use nodecell_tools::socket::{self, Client, HostSocket, ToolsError};
use nodecell_tools::stats::{CellView, HostStats, Observation};
use serde::Serialize;

use super::top_ui;

/// Show the cells of running nodecell host processes.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// Only this host process (default: every one running as this user).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print one observation and exit (rates over --interval).
    #[arg(long)]
    pub once: bool,
    /// With --once: print JSON instead of a table.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// Print one frame of the live view as text, COLSxROWS (e.g. 160x30), and exit.
    #[arg(long, value_name = "COLSxROWS", value_parser = parse_screen, conflicts_with = "once")]
    pub screen: Option<(u16, u16)>,
    /// Seconds between observations.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
}

fn parse_screen(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected COLSxROWS such as 160x30, got {s:?}");
    let (c, r) = s.split_once('x').ok_or_else(bad)?;
    match (c.parse::<u16>(), r.parse::<u16>()) {
        (Ok(c), Ok(r)) if (40..=1000).contains(&c) && (12..=1000).contains(&r) => Ok((c, r)),
        _ => Err(bad()),
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.05..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("expected seconds between 0.05 and 3600, got {s:?}")),
    }
}

/// One host as `--once --json` prints it.
#[derive(Serialize)]
pub struct HostView {
    /// The host's pid.
    pub pid: u32,
    /// Its command line.
    pub argv: Vec<String>,
    /// The profile it is recording, if any.
    pub profile: Option<String>,
    /// Its cells.
    pub cells: Vec<CellView>,
}

/// Ask one host for its stats and sample the kernel's figures.
pub fn observe(h: &HostSocket) -> Result<Observation, ToolsError> {
    let mut c = Client::connect(&h.path)?;
    c.set_timeout(Some(Duration::from_secs(5)))?;
    let v = c.request(&serde_json::json!({"op": "stats"}))?;
    let stats: HostStats = serde_json::from_value(v).map_err(|e| ToolsError::BadReply {
        path: h.path.clone(),
        detail: format!("not a stats snapshot: {e}"),
    })?;
    Ok(Observation::take(stats))
}

/// The hosts to watch: `--pid`, or all of this user's.
pub fn hosts(pid: Option<u32>) -> Result<Vec<HostSocket>, ToolsError> {
    let dir = socket::socket_dir();
    match pid {
        Some(p) => Ok(vec![socket::pick_host(&dir, Some(p))?]),
        None => {
            let all = socket::hosts(&dir)?;
            if all.is_empty() {
                return Err(ToolsError::NoHost { dir });
            }
            Ok(all)
        }
    }
}

/// Observe every host twice, `interval` apart, and return the views.
fn once(pid: Option<u32>, interval: f64) -> Result<Vec<HostView>, ToolsError> {
    let hs = hosts(pid)?;
    let first: Vec<Option<Observation>> = hs.iter().map(|h| observe(h).ok()).collect();
    std::thread::sleep(Duration::from_secs_f64(interval));
    let mut out = Vec::new();
    for (h, before) in hs.iter().zip(first) {
        let now = match observe(h) {
            Ok(o) => o,
            Err(e) if pid.is_some() => return Err(e),
            Err(_) => continue, // a host that exited meanwhile
        };
        out.push(HostView {
            pid: now.host.pid,
            argv: now.host.argv.clone(),
            profile: now.host.profile.clone(),
            cells: now.views(before.as_ref()),
        });
    }
    Ok(out)
}

/// `1.2 GiB`, `340 MiB`, `12.0 KiB` (nodecell's table format for sizes).
pub fn bytes(n: u64) -> String {
    nodecell_units::approx_size(n)
}

/// `850 us`, `12.3 ms`, `2.1 s`.
pub fn micros(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(u) if u < 1000.0 => format!("{u:.0} us"),
        Some(u) if u < 1_000_000.0 => format!("{:.1} ms", u / 1000.0),
        Some(u) => format!("{:.1} s", u / 1_000_000.0),
    }
}

/// `312 MiB / 1.0 GiB (31%)`, or the usage alone when there is no limit.
pub fn memory(v: &CellView) -> String {
    match (v.memory, v.memory_limit) {
        (Some(m), Some(l)) if l > 0 => format!(
            "{} / {} ({:.0}%)",
            bytes(m),
            bytes(l),
            m as f64 * 100.0 / l as f64
        ),
        (Some(m), None) => format!("{} / -", bytes(m)),
        (None, Some(l)) => format!("- / {}", bytes(l)),
        _ => "-".into(),
    }
}

/// The table's header and one row per cell (shared by `--once` and the live view).
pub fn columns() -> [&'static str; 14] {
    [
        "HOST",
        "PACK",
        "STATE",
        "PIDS",
        "WALLS",
        "CALLS/S",
        "P50",
        "P99",
        "CPU%",
        "RSS",
        "PSS",
        "MEM/LIMIT",
        "RESTARTS",
        "INFLIGHT",
    ]
}

/// One cell's cells of the table.
pub fn row(v: &CellView) -> [String; 14] {
    let mut state = v.state.clone();
    if v.debugging > 0 {
        state.push_str(" (debugger)");
    }
    [
        v.host_pid.to_string(),
        v.pack.clone(),
        state,
        if v.pids.is_empty() {
            "-".into()
        } else {
            v.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
        v.walls.clone(),
        format!("{:.1}", v.calls_per_s),
        micros(v.p50_us.or(v.p50_us_total)),
        micros(v.p99_us.or(v.p99_us_total)),
        v.cpu_percent.map_or("-".into(), |c| format!("{c:.1}")),
        bytes(v.rss),
        v.pss.map_or("-".into(), bytes),
        memory(v),
        v.restarts.to_string(),
        v.inflight.to_string(),
    ]
}

/// Plain-text table of `views` (as `--once` prints it).
pub fn table(hosts: &[HostView]) -> String {
    let rows: Vec<[String; 14]> = hosts.iter().flat_map(|h| h.cells.iter().map(row)).collect();
    let head = columns();
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(head.to_vec());
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no cells: the host has no extensions loaded)\n");
    }
    out
}

/// Run `nodecell top`.
pub fn main(args: TopArgs) -> i32 {
    if args.once {
        return match once(args.pid, args.interval) {
            Ok(hs) if args.json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"hosts": hs}))
                        .expect("views serialize")
                );
                0
            }
            Ok(hs) => {
                print!("{}", table(&hs));
                0
            }
            Err(e) => {
                eprintln!("nodecell top: {e}");
                1
            }
        };
    }
    let interval = Duration::from_secs_f64(args.interval);
    if let Some((cols, rows)) = args.screen {
        return match top_ui::screen(args.pid, interval, cols, rows) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("nodecell top: {e}");
                1
            }
        };
    }
    match top_ui::run(args.pid, interval) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nodecell top: {e}");
            1
        }
    }
}
