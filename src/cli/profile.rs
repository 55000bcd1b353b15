//! `nodecell profile`: record a Chrome-trace / Perfetto profile of a running
//! host process's calls — queue, encode, transfer, execute and decode spans
//! on the host's and every worker's tracks — for some seconds, through the
//! host's tools socket. The host writes the file (as the same user); open it
//! in <https://ui.perfetto.dev> or `chrome://tracing`.
//!
//! A host can also profile itself from start to exit: `NODECELL_PROFILE=trace.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use nodecell_tools::socket::{self, Client, ToolsError};
use serde_json::{json, Value};

/// Record a profile (Chrome trace / Perfetto JSON) of a running host's calls.
#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// The host process (default: the only one running as this user).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Where the host writes the trace (relative to this directory).
    #[arg(short, long, value_name = "FILE", required_unless_present = "stop")]
    pub output: Option<PathBuf>,
    /// Seconds to record.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Only start recording (stop later with --stop).
    #[arg(long, conflicts_with = "stop")]
    pub start: bool,
    /// Stop the profile being recorded and write it.
    #[arg(long)]
    pub stop: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected seconds between 0.01 and 86400, got {s:?}"
        )),
    }
}

fn request(path: &Path, msg: Value, wait: Duration) -> Result<Value, ToolsError> {
    let mut c = Client::connect(path)?;
    c.set_timeout(Some(wait))?;
    c.request(&msg)
}

fn stop(path: &Path) -> Result<(), ToolsError> {
    let r = request(
        path,
        json!({"op": "profile", "action": "stop"}),
        Duration::from_secs(120),
    )?;
    println!(
        "nodecell profile: written to {} (open it in https://ui.perfetto.dev)",
        r["path"].as_str().unwrap_or("?")
    );
    if let Some(t) = r["table"].as_str().filter(|t| !t.is_empty()) {
        print!("per workflow node (ms):\n{t}");
    }
    Ok(())
}

fn run(args: &ProfileArgs) -> Result<(), ToolsError> {
    let host = socket::pick_host(&socket::socket_dir(), args.pid)?;
    if args.stop {
        return stop(&host.path);
    }
    let out = args.output.as_ref().expect("clap requires --output");
    let out = std::path::absolute(out).map_err(|source| ToolsError::Io {
        path: out.clone(),
        source,
    })?;
    request(
        &host.path,
        json!({"op": "profile", "action": "start", "path": out}),
        Duration::from_secs(30),
    )?;
    if args.start {
        eprintln!(
            "nodecell profile: recording in process {}; stop with: nodecell profile --pid {} --stop",
            host.pid, host.pid
        );
        return Ok(());
    }
    eprintln!(
        "nodecell profile: recording process {} for {} s",
        host.pid, args.seconds
    );
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop(&host.path)
}

/// Run `nodecell profile`.
pub fn main(args: ProfileArgs) -> i32 {
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nodecell profile: {e}");
            1
        }
    }
}
