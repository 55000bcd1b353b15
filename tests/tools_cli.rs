//! `nodecell top` and `nodecell debug` against a scripted host on a tools
//! socket (the Python tests run them against real cells): the protocol, the
//! derived figures, the errors; and `--help` of each developer tool.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;

use nodecell_tools::hist::bucket;
use serde_json::{json, Value};

use crate::util::nodecell;

fn private_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// Serve `answers` (one per connection, each answering one request line) on
/// `<dir>/<our pid>.sock`; returns the requests seen.
fn fake_host(dir: &Path, answers: Vec<Value>) -> std::thread::JoinHandle<Vec<Value>> {
    let path = dir.join(format!("{}.sock", std::process::id()));
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for a in answers {
            loop {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    continue; // a liveness probe (`hosts()` connects and leaves)
                }
                seen.push(serde_json::from_str(&line).unwrap());
                let mut w = s;
                writeln!(w, "{a}").unwrap();
                break;
            }
        }
        seen
    })
}

fn snapshot(calls: u64, latency: Value) -> Value {
    json!({"version": 1, "pid": std::process::id(), "argv": ["host.py"], "cells": [{
        "pack": "p1", "state": "running", "launcher_pid": std::process::id(), "cgroup": null,
        "walls": [{"name": "landlock", "state": "active", "detail": ""},
                  {"name": "seccomp", "state": "missing", "detail": "no filter"}],
        "memory_limit": 1_000_000_000u64, "restarts": 2, "calls": calls, "errors": 1,
        "latency": latency, "workers": [{"wid": 1, "pid": std::process::id(), "ns_pid": 3, "inflight": 4}]}]})
}

#[test]
fn top_once_json_derives_rates_and_window_percentiles() {
    let d = private_dir();
    let (fast, slow) = (bucket(20_000), bucket(500_000)); // 20 us, 0.5 ms
    let host = fake_host(
        d.path(),
        vec![
            snapshot(100, json!([[fast, 100]])),
            snapshot(300, json!([[fast, 100], [slow, 200]])),
        ],
    );
    let out = nodecell(&["top", "--once", "--json", "--interval", "0.2"])
        .env("NODECELL_TOOLS_DIR", d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = host.join().unwrap();
    assert_eq!(seen, vec![json!({"op": "stats"}), json!({"op": "stats"})]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cell = &v["hosts"][0]["cells"][0];
    assert_eq!(cell["pack"], "p1");
    assert_eq!(cell["walls"], "1/2 missing seccomp");
    assert_eq!(cell["inflight"], 4);
    assert_eq!(cell["restarts"], 2);
    let rate = cell["calls_per_s"].as_f64().unwrap();
    assert!(rate > 200.0 && rate < 1100.0, "{rate}");
    let (p50, total) = (
        cell["p50_us"].as_f64().unwrap(),
        cell["p50_us_total"].as_f64().unwrap(),
    );
    assert!((450.0..650.0).contains(&p50), "window p50 {p50}");
    assert!((450.0..650.0).contains(&total), "lifetime p50 {total}");
    // Our own process stands in for the cell: the kernel's figures are read.
    assert!(cell["rss"].as_u64().unwrap() > 0);
    assert_eq!(cell["memory_limit"], 1_000_000_000u64);
}

#[test]
fn top_says_when_no_host_runs_or_the_dir_is_shared() {
    let d = private_dir();
    let out = nodecell(&["top", "--once"])
        .env("NODECELL_TOOLS_DIR", d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no nodecell host process found"));
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = nodecell(&["top", "--once"])
        .env("NODECELL_TOOLS_DIR", d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("group or others have access"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nodecell(&["top", "--screen", "10x2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "bad --screen is a usage error");
}

#[test]
fn debug_console_relays_a_session() {
    let d = private_dir();
    let path = d.path().join(format!("{}.sock", std::process::id()));
    let l = UnixListener::bind(path).unwrap();
    let host = std::thread::spawn(move || {
        let (mut r, mut w, mut line) = loop {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() > 0 {
                break (r, s, line);
            } // else a liveness probe
        };
        let req: Value = serde_json::from_str(&line).unwrap();
        let send = |w: &mut std::os::unix::net::UnixStream, v: Value| writeln!(w, "{v}").unwrap();
        send(
            &mut w,
            json!({"ev": "attached", "pid": 1, "packs": ["p1"], "breaks": [
            {"spec": "p1/a.py:3", "line": 3, "status": "set", "file": "/x/a.py"}]}),
        );
        send(
            &mut w,
            json!({"ev": "stop", "pack": "p1", "wid": 2, "file": "/x/a.py", "line": 3}),
        );
        send(
            &mut w,
            json!({"ev": "output", "text": "> /x/a.py(3)f()\n(Pdb) "}),
        );
        send(&mut w, json!({"ev": "input"}));
        line.clear();
        r.read_line(&mut line).unwrap();
        let input: Value = serde_json::from_str(&line).unwrap();
        send(&mut w, json!({"ev": "output", "text": "42\n"}));
        send(&mut w, json!({"ev": "resume"}));
        send(&mut w, json!({"ev": "input"}));
        line.clear();
        r.read_line(&mut line).unwrap();
        let detach: Value = serde_json::from_str(&line).unwrap();
        (req, input, detach)
    });
    let mut child = nodecell(&["debug", "--break", "p1/a.py:3, x > 1"])
        .env("NODECELL_TOOLS_DIR", d.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"p x\n").unwrap();
    // Once the answer is shown, end of input detaches.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut shown = String::new();
    while !shown.contains("--- resumed ---") {
        let mut l = String::new();
        assert!(stdout.read_line(&mut l).unwrap() > 0, "{shown}");
        shown.push_str(&l);
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let (req, input, detach) = host.join().unwrap();
    assert_eq!(
        req,
        json!({"op": "debug", "mode": "console", "pack": null,
                   "breaks": [{"spec": "p1/a.py:3", "cond": "x > 1"}]})
    );
    assert_eq!(input, json!({"input": "p x\n"}));
    assert_eq!(detach, json!({"op": "detach"}));
    let stdout = shown;
    assert!(
        stdout.contains("pack p1 worker #2 stopped at /x/a.py:3"),
        "{stdout}"
    );
    assert!(stdout.contains("(Pdb) ") && stdout.contains("42\n--- resumed ---"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("breakpoint /x/a.py:3: set"));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn each_tool_explains_itself_with_help() {
    let tools: [(&str, &[&str]); 4] = [
        (
            "top",
            &["--once", "--json", "--screen", "--interval", "--pid"],
        ),
        (
            "debug",
            &["--break", "--dap", "--listen", "--pack", "--pid"],
        ),
        (
            "profile",
            &["--output", "--seconds", "--start", "--stop", "--pid"],
        ),
        (
            "deps",
            &[
                "PACK_DIR",
                "--json",
                "--offline",
                "--no-resolve",
                "--strict",
                "--python",
            ],
        ),
    ];
    for (tool, options) in tools {
        let out = nodecell(&[tool, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{tool} --help: {text}");
        assert!(text.contains(&format!("Usage: nodecell {tool}")), "{text}");
        for o in options {
            assert!(
                text.contains(o),
                "{tool} --help does not mention {o}:\n{text}"
            );
        }
    }
}
