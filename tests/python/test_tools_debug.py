"""nodecell debug against real cells: pdb through a real pty, `--break`, the DAP bridge,
call timeouts suspended while stopped, breakpoints skipped when no terminal is there."""
from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tools_support import Host, Pty, env_with, host_argv, launcher, tools_dir


def _line_of(support_dir: Path, text: str) -> int:
    lines = (support_dir / "packs" / "dbgpack" / "nodes.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == text)


@pytest.fixture(scope="module")
def host(support_dir, venv_root):
    """One host on pipes (no terminal) for the attach tests; timeout 2 s per call."""
    tools = tools_dir()
    h = Host(support_dir, venv_root, tools, "--timeout", "2")
    h.tools = tools
    yield h
    h.close()


def test_breakpoint_opens_pdb_in_the_host_terminal(support_dir, venv_root):
    """breakpoint() in pack code: a pdb session on the host's own terminal (a real pty),
    carried over the cell's channel; the 2 s call timeout is suspended while stopped."""
    tools = tools_dir()
    p = Pty(host_argv(support_dir, venv_root, "--timeout", "2",
                      "--calls", "stop_here:4", "async.astop_here:3", "add:1,2"), env_with(tools))
    try:
        head = p.expect(r"\(Pdb dbgpack\) ", 300)
        bp = _line_of(support_dir, "z = y * 10")
        assert f"stopped at {support_dir}/packs/dbgpack/nodes.py:{bp}" in head, head
        assert "call timeouts suspended" in head
        assert f"nodes.py({bp})stop_here()" in head
        p.send("p y\n")
        assert "\r\n5\r\n" in p.expect(r"\(Pdb dbgpack\) ")
        time.sleep(3)  # longer than the call's timeout: stopped time does not count
        p.send("n\n")
        assert "-> return z" in p.expect(r"\(Pdb dbgpack\) ")
        p.send("p z\n")
        assert "50" in p.expect(r"\(Pdb dbgpack\) ")
        p.send("c\n")
        assert "RESULT stop_here 50" in p.expect(r"RESULT stop_here \d+")
        # The async path: breakpoint() inside a coroutine run on the worker's loop.
        out = p.expect(r"\(Pdb dbgpack\) ")
        assert "astop_here()" in out, out
        p.send("p y\n")
        assert "4" in p.expect(r"\(Pdb dbgpack\) ")
        p.send("c\n")
        p.expect(r"RESULT astop_here 40")
        p.expect(r"RESULT add 6")
        assert p.wait(120) == 0
    finally:
        p.kill()


def test_quit_in_pdb_fails_only_that_call(support_dir, venv_root):
    tools = tools_dir()
    p = Pty(host_argv(support_dir, venv_root, "--calls", "stop_here:1", "add:2,3"), env_with(tools))
    try:
        p.expect(r"\(Pdb dbgpack\) ", 300)
        p.send("q\n")
        assert "ERROR stop_here RemoteError" in p.expect(r"ERROR stop_here .*BdbQuit")
        p.expect(r"RESULT add 10")
        assert p.wait(120) == 0
    finally:
        p.kill()


def test_breakpoint_without_a_terminal_is_skipped_with_a_warning(host):
    assert host.call("stop_here 4") == "RESULT stop_here 50"
    deadline = time.monotonic() + 30
    while "breakpoint at" not in "".join(host.stderr) and time.monotonic() < deadline:
        time.sleep(0.1)
    err = "".join(host.stderr)
    assert "nodes.py:" in err and "ignored: this process has no terminal" in err, err[-2000:]
    assert f"nodecell debug --pid {host.pid}" in err


def test_break_flag_opens_pdb_in_nodecell_debug(host, support_dir):
    """`nodecell debug --break pack/file.py:LINE` in a pty attached to a host on pipes."""
    line = _line_of(support_dir, "total = total * 2")
    p = Pty([launcher(), "debug", "--pid", str(host.pid), "--break", f"dbgpack/nodes.py:{line}"],
            env_with(host.tools))
    try:
        out = p.expect(r"Ctrl-C")
        assert "attached to process" in out and "dbgpack" in out
        out = p.expect(rf"nodes.py:{line}: set")
        host.send("call add 1 2")
        out = p.expect(r"\(Pdb dbgpack\) ")
        assert re.search(rf"pack dbgpack worker #\d+ stopped at {support_dir}/packs/dbgpack/nodes.py:{line}\b", out), out
        p.send("p a, b, total\n")
        assert "(1, 2, 3)" in p.expect(r"\(Pdb dbgpack\) ")
        time.sleep(2.5)  # past the 2 s call timeout
        p.send("c\n")
        p.expect(r"--- resumed ---")
        assert host.expect("RESULT add") == "RESULT add 6"
        # breakpoint() in pack code goes to the attached debugger too.
        host.send("call stop_here 1")
        p.expect(r"\(Pdb dbgpack\) ")
        p.send("p y\n")
        assert "2" in p.expect(r"\(Pdb dbgpack\) ")
        p.send("c\n")
        assert host.expect("RESULT stop_here") == "RESULT stop_here 20"
        # End of input detaches: breakpoints are gone, calls run through.
        p.send("\x04")
        assert p.wait(30) == 0
        assert host.call("add 2 2") == "RESULT add 8"
    finally:
        p.kill()


def test_bad_breakpoints_are_refused(host):
    r = subprocess.run([launcher(), "debug", "--pid", str(host.pid), "--break", "dbgpack/nodes.py:99999"],
                       env=env_with(host.tools), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r
    assert "has no line 99999" in r.stderr
    r = subprocess.run([launcher(), "debug", "--pid", str(host.pid), "--break", "nodes.py"],
                       env=env_with(host.tools), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "PACK/FILE.py:LINE" in r.stderr, r
    r = subprocess.run([launcher(), "debug", "--pid", "1"], env=env_with(host.tools),
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "has no nodecell tools socket" in r.stderr, r


def test_timeouts_still_fire_when_nobody_debugs(host):
    r = host.call("busy 4")
    assert r.startswith("ERROR busy CallTimeout"), r
    assert host.call("add 1 1") == "RESULT add 4"  # a fresh worker


class Dap:
    """A scripted DAP client speaking Content-Length framing to `nodecell debug --dap`."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.q: "queue.Queue" = queue.Queue()
        #: Messages read but not yet waited for, in arrival order.
        self.backlog: list = []
        self.seq = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        f = self.proc.stdout
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                c = f.read(1)
                if not c:
                    self.q.put(None)
                    return
                head += c
            n = int(head.split(b":", 1)[1].split(b"\r\n")[0])
            self.q.put(json.loads(f.read(n)))

    def wait(self, pred, timeout=60):
        """The first message (read earlier or arriving within ``timeout``) matching ``pred``."""
        for i, m in enumerate(self.backlog):
            if pred(m):
                return self.backlog.pop(i)
        end = time.monotonic() + timeout
        while True:
            m = self.q.get(timeout=max(end - time.monotonic(), 0.1))
            assert m is not None, "nodecell debug --dap exited"
            if pred(m):
                return m
            self.backlog.append(m)

    def request(self, command, **args):
        self.seq += 1
        seq = self.seq
        body = json.dumps({"seq": seq, "type": "request", "command": command, "arguments": args}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()
        r = self.wait(lambda m: m.get("type") == "response" and m.get("request_seq") == seq)
        return r

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def test_dap_session_over_stdio(host, support_dir):
    """A DAP client: breakpoints, stopped event, threads, stack (host paths), scopes,
    variables, evaluate, step, continue; the 2 s timeout suspended meanwhile."""
    nodes = str(support_dir / "packs" / "dbgpack" / "nodes.py")
    line = _line_of(support_dir, "total = a + b")
    d = Dap([launcher(), "debug", "--pid", str(host.pid), "--dap"], env_with(host.tools))
    try:
        r = d.request("initialize", adapterID="nodecell", linesStartAt1=True)
        assert r["success"] and r["body"]["supportsConfigurationDoneRequest"]
        d.wait(lambda m: m.get("event") == "initialized")
        assert d.request("attach")["success"]
        r = d.request("setBreakpoints", source={"path": nodes}, breakpoints=[{"line": line}, {"line": 99999}])
        bps = r["body"]["breakpoints"]
        assert bps[0]["verified"] and not bps[1]["verified"], bps
        assert d.request("configurationDone")["success"]
        host.send("call add 5 6")
        ev = d.wait(lambda m: m.get("event") == "stopped")
        assert ev["body"]["reason"] == "breakpoint"
        tid = ev["body"]["threadId"]
        threads = d.request("threads")["body"]["threads"]
        assert any(t["id"] == tid and t["name"].startswith("dbgpack#") for t in threads), threads
        frames = d.request("stackTrace", threadId=tid)["body"]["stackFrames"]
        assert frames[0]["name"] == "add" and frames[0]["line"] == line
        assert frames[0]["source"]["path"] == nodes
        # The extension class lives in a host module: its frame names the host's file.
        assert any(f["source"]["path"] == str(support_dir / "nc_toolsext.py") for f in frames), frames
        assert not any("/run/nodecell/" in f["source"]["path"] for f in frames), frames
        scopes = d.request("scopes", frameId=frames[0]["id"])["body"]["scopes"]
        local = d.request("variables", variablesReference=scopes[0]["variablesReference"])["body"]["variables"]
        assert {v["name"]: v["value"] for v in local} == {"a": "5", "b": "6"}
        r = d.request("evaluate", expression="a * 100 + b", frameId=frames[0]["id"], context="repl")
        assert r["body"]["result"] == "506"
        r = d.request("evaluate", expression="undefined_name", frameId=frames[0]["id"], context="repl")
        assert not r["success"] and "undefined_name" in r["message"]
        time.sleep(2.5)  # past the call timeout
        assert d.request("next", threadId=tid)["success"]
        # DAP order: the response to `next` comes before the stop it leads to.
        assert not any(m.get("event") == "stopped" for m in d.backlog), d.backlog
        ev = d.wait(lambda m: m.get("event") == "stopped")
        assert ev["body"]["reason"] == "step"
        frames = d.request("stackTrace", threadId=tid)["body"]["stackFrames"]
        assert frames[0]["line"] == line + 1
        local = d.request("variables", variablesReference=d.request(
            "scopes", frameId=frames[0]["id"])["body"]["scopes"][0]["variablesReference"])["body"]["variables"]
        assert {v["name"]: v["value"] for v in local}["total"] == "11"
        assert d.request("continue", threadId=tid)["success"]
        assert host.expect("RESULT add") == "RESULT add 22"
        # breakpoint() under DAP: a stopped event with reason "breakpoint".
        host.send("call stop_here 2")
        ev = d.wait(lambda m: m.get("event") == "stopped")
        assert ev["body"]["reason"] == "breakpoint"
        assert d.request("continue", threadId=ev["body"]["threadId"])["success"]
        assert host.expect("RESULT stop_here") == "RESULT stop_here 30"
        assert d.request("disconnect")["success"]
    finally:
        d.close()
    assert host.call("add 1 2") == "RESULT add 6"  # detached: runs through


def test_dap_on_a_unix_socket_and_detach_resumes(host, support_dir):
    """`--dap --listen PATH`: a client on a unix socket (mode 0600); a client that goes
    away while a worker is stopped lets the worker run on."""
    import socket as pysocket

    nodes = str(support_dir / "packs" / "dbgpack" / "nodes.py")
    path = os.path.join(host.tools, "dap.sock")
    proc = subprocess.Popen([launcher(), "debug", "--pid", str(host.pid), "--dap", "--listen", path],
                            env=env_with(host.tools), stderr=subprocess.PIPE, text=True)
    try:
        assert "may connect" in proc.stderr.readline()
        assert os.stat(path).st_mode & 0o777 == 0o600
        s = pysocket.socket(pysocket.AF_UNIX)
        s.connect(path)
        f = s.makefile("rwb")

        def send(seq, command, **args):
            body = json.dumps({"seq": seq, "type": "request", "command": command, "arguments": args}).encode()
            f.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            f.flush()

        def read():
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += f.read(1)
            return json.loads(f.read(int(head.split(b":", 1)[1].split(b"\r\n")[0])))

        send(1, "initialize")
        send(2, "setBreakpoints", source={"path": nodes}, breakpoints=[{"line": _line_of(support_dir, "total = a + b")}])
        while True:
            m = read()
            if m.get("command") == "setBreakpoints":
                assert m["body"]["breakpoints"][0]["verified"]
                break
        host.send("call add 1 1")
        while read().get("event") != "stopped":
            pass
        f.close()  # the client vanishes while the worker is stopped
        s.close()
        assert host.expect("RESULT add", 60) == "RESULT add 4"
    finally:
        proc.terminate()
        proc.wait(30)
