//! `nodecell debug`: attach a debugger to the cells of a running host process.
//!
//! * Console (default): breakpoints given with `--break PACK/FILE.py:LINE`
//!   (and every `breakpoint()` in pack code) open a pdb session in this
//!   terminal. Lines typed here travel to the worker over the host's tools
//!   socket and the cell's own channel — no port is opened anywhere.
//! * `--dap`: a Debug Adapter Protocol bridge on stdio, or on a unix socket
//!   with `--listen PATH` (mode 0600), for VS Code, nvim-dap and other DAP
//!   clients; breakpoints come from the client.
//!
//! While a worker is stopped, its call timeouts are suspended. Leaving (end
//! of input, Ctrl-C, the client disconnecting) removes this session's
//! breakpoints and lets stopped workers run on.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use clap::Args;
use nodecell_tools::socket::{self, Client, ToolsError};
use serde_json::{json, Value};

/// Attach a debugger (pdb console or DAP) to the cells of a running host.
#[derive(Args, Debug)]
pub struct DebugArgs {
    /// The host process (default: the only one running as this user).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only this pack's workers (default: every pack of the host).
    #[arg(long)]
    pub pack: Option<String>,
    /// A breakpoint: PACK/FILE.py:LINE (a file of the pack, relative to its
    /// folder) or /ABS/FILE.py:LINE, optionally followed by ", CONDITION".
    /// Repeatable.
    #[arg(long = "break", value_name = "PACK/FILE.py:LINE[, COND]")]
    pub breaks: Vec<String>,
    /// Speak the Debug Adapter Protocol on stdio instead of a pdb console.
    #[arg(long, conflicts_with = "breaks")]
    pub dap: bool,
    /// With --dap: serve DAP clients on this unix socket (mode 0600) instead of stdio.
    #[arg(long, requires = "dap", value_name = "PATH")]
    pub listen: Option<PathBuf>,
}

fn attach(args: &DebugArgs, mode: &str) -> Result<(Client, Value), ToolsError> {
    let host = socket::pick_host(&socket::socket_dir(), args.pid)?;
    let mut c = Client::connect(&host.path)?;
    let breaks: Vec<Value> = args
        .breaks
        .iter()
        .map(|b| match b.split_once(',') {
            Some((spec, cond)) => json!({"spec": spec.trim(), "cond": cond.trim()}),
            None => json!({"spec": b.trim(), "cond": null}),
        })
        .collect();
    c.send(&json!({"op": "debug", "mode": mode, "pack": args.pack, "breaks": breaks}))?;
    // Notes about breakpoints may come first; the session starts with "attached".
    loop {
        let Some(ev) = c.recv()? else {
            return Err(ToolsError::BadReply {
                path: c.path().to_path_buf(),
                detail: "closed the connection without attaching".into(),
            });
        };
        match ev["ev"].as_str() {
            Some("attached") => return Ok((c, ev)),
            Some("note") => eprintln!("nodecell debug: {}", ev["text"].as_str().unwrap_or("")),
            _ => {}
        }
    }
}

fn console(args: &DebugArgs) -> Result<i32, ToolsError> {
    let (mut c, hello) = attach(args, "console")?;
    let packs = hello["packs"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    eprintln!(
        "nodecell debug: attached to process {} (packs: {}); end with Ctrl-D or Ctrl-C",
        hello["pid"],
        if packs.is_empty() { "none yet" } else { &packs }
    );
    let mut bad = false;
    for b in hello["breaks"].as_array().into_iter().flatten() {
        let status = b["status"].as_str().unwrap_or("?");
        let what = match b["file"].as_str() {
            Some(f) => format!("{}:{}", f, b["line"]),
            None => b["spec"].as_str().unwrap_or("?").to_string(),
        };
        match b["message"].as_str() {
            Some(m) => eprintln!("  breakpoint {what}: {status} ({m})"),
            None => eprintln!("  breakpoint {what}: {status}"),
        }
        bad |= status == "invalid";
    }
    if bad {
        eprintln!("nodecell debug: fix the invalid breakpoints above");
        return Ok(2);
    }
    // Two sources: the host's events and the lines typed here (read all the
    // time, so end of input detaches even while no session is open).
    enum Msg {
        Host(Value),
        HostGone(Option<ToolsError>),
        Line(String),
        Eof,
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut writer = c.writer()?;
    let path = c.path().to_path_buf();
    let host_tx = tx.clone();
    std::thread::spawn(move || loop {
        match c.recv() {
            Ok(Some(v)) => {
                if host_tx.send(Msg::Host(v)).is_err() {
                    return;
                }
            }
            Ok(None) => return drop(host_tx.send(Msg::HostGone(None))),
            Err(e) => return drop(host_tx.send(Msg::HostGone(Some(e)))),
        }
    });
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        loop {
            let mut line = String::new();
            match stdin.lock().read_line(&mut line) {
                Ok(n) if n > 0 => {
                    if tx.send(Msg::Line(line)).is_err() {
                        return;
                    }
                }
                _ => return drop(tx.send(Msg::Eof)),
            }
        }
    });
    let send = |w: &mut UnixStream, v: Value| -> Result<(), ToolsError> {
        let mut line = serde_json::to_vec(&v).expect("JSON serializes");
        line.push(b'\n');
        w.write_all(&line).map_err(|source| ToolsError::Io {
            path: path.clone(),
            source,
        })
    };
    let mut out = std::io::stdout();
    let mut typed: std::collections::VecDeque<String> = Default::default();
    let mut wants_input = false;
    let mut eof = false;
    for msg in rx {
        match msg {
            Msg::Host(ev) => match ev["ev"].as_str() {
                Some("stop") => {
                    let _ = writeln!(
                        out,
                        "\n--- pack {} worker #{} stopped at {}:{} ---",
                        ev["pack"].as_str().unwrap_or("?"),
                        ev["wid"],
                        ev["file"].as_str().unwrap_or("?"),
                        ev["line"]
                    );
                }
                Some("output") => {
                    let _ = write!(out, "{}", ev["text"].as_str().unwrap_or(""));
                }
                Some("input") => match typed.pop_front() {
                    Some(line) => send(&mut writer, json!({"input": line}))?,
                    None => wants_input = true,
                },
                Some("resume") => {
                    let _ = writeln!(out, "--- resumed ---");
                }
                Some("note") => eprintln!("nodecell debug: {}", ev["text"].as_str().unwrap_or("")),
                Some("bye") => break,
                _ => {}
            },
            Msg::HostGone(err) => {
                if let Some(e) = err {
                    return Err(e);
                }
                break;
            }
            Msg::Line(line) if wants_input => {
                wants_input = false;
                send(&mut writer, json!({"input": line}))?;
            }
            Msg::Line(line) => typed.push_back(line),
            Msg::Eof => {
                if !eof {
                    eof = true;
                    send(&mut writer, json!({"op": "detach"}))?;
                }
            }
        }
        let _ = out.flush();
    }
    if !eof {
        eprintln!("nodecell debug: the host closed the session");
    }
    Ok(0)
}

/// Read one DAP message (Content-Length framing); None at end of input.
fn read_dap(r: &mut impl BufRead) -> std::io::Result<Option<Value>> {
    let mut len: Option<usize> = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l.is_empty() {
            if len.is_some() {
                break;
            }
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
        }
    }
    let n = len.unwrap_or(0).min(socket::MAX_LINE);
    let mut body = vec![0; n];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("DAP message: {e}"))
    })
}

fn write_dap(w: &mut impl Write, msg: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).expect("JSON serializes");
    write!(w, "Content-Length: {}\r\n\r\n", body.len())?;
    w.write_all(&body)?;
    w.flush()
}

/// Relay one DAP client (reader/writer) to the host until either side ends.
fn dap_session(
    args: &DebugArgs,
    mut input: impl BufRead + Send + 'static,
    mut output: impl Write,
) -> Result<(), ToolsError> {
    let (mut c, _hello) = attach(args, "dap")?;
    let mut to_host = c.writer()?;
    let path = c.path().to_path_buf();
    std::thread::spawn(move || {
        while let Ok(Some(msg)) = read_dap(&mut input) {
            let mut line = serde_json::to_vec(&json!({"dap": msg})).expect("JSON serializes");
            line.push(b'\n');
            if to_host.write_all(&line).is_err() {
                break;
            }
        }
        let _ = to_host.shutdown(std::net::Shutdown::Both);
    });
    while let Some(ev) = c.recv()? {
        if let Some(m) = ev.get("dap") {
            write_dap(&mut output, m).map_err(|source| ToolsError::Io {
                path: path.clone(),
                source,
            })?;
        } else if ev["ev"] == "bye" {
            break;
        }
    }
    Ok(())
}

fn dap(args: &DebugArgs) -> Result<i32, ToolsError> {
    let Some(listen) = &args.listen else {
        let input = BufReader::new(std::io::stdin());
        dap_session(args, input, std::io::stdout())?;
        return Ok(0);
    };
    let io = |source| ToolsError::Io {
        path: listen.clone(),
        source,
    };
    let _ = std::fs::remove_file(listen);
    let l = UnixListener::bind(listen).map_err(io)?;
    std::fs::set_permissions(listen, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    eprintln!(
        "nodecell debug: DAP clients may connect to {}",
        listen.display()
    );
    for s in l.incoming() {
        let s: UnixStream = s.map_err(io)?;
        let r = BufReader::new(s.try_clone().map_err(io)?);
        if let Err(e) = dap_session(args, r, s) {
            eprintln!("nodecell debug: {e}");
        }
    }
    Ok(0)
}

/// Run `nodecell debug`.
pub fn main(args: DebugArgs) -> i32 {
    let r = if args.dap { dap(&args) } else { console(&args) };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodecell debug: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dap_framing_round_trips() {
        let mut buf = Vec::new();
        write_dap(
            &mut buf,
            &json!({"seq": 1, "type": "request", "command": "initialize"}),
        )
        .unwrap();
        write_dap(
            &mut buf,
            &json!({"seq": 2, "type": "request", "command": "threads"}),
        )
        .unwrap();
        let mut r = std::io::Cursor::new(buf);
        assert_eq!(read_dap(&mut r).unwrap().unwrap()["command"], "initialize");
        assert_eq!(read_dap(&mut r).unwrap().unwrap()["seq"], 2);
        assert!(read_dap(&mut r).unwrap().is_none());
    }
}
