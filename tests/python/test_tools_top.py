"""nodecell top against a running host: `--once --json` figures, the table, the live view
in a pty, and the tools socket's privacy and off switch."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time

import pytest

from tools_support import Host, Pty, env_with, launcher, tools_dir


@pytest.fixture(scope="module")
def busy_host(support_dir, venv_root):
    tools = tools_dir()
    h = Host(support_dir, venv_root, tools, "--max-memory", "800MB")
    h.tools = tools
    yield h
    h.close()


def top(h, *args, timeout=120):
    return subprocess.run([launcher(), "top", "--pid", str(h.pid), *args], env=env_with(h.tools),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_top_once_json_against_a_running_host(busy_host):
    h = busy_host
    assert h.call("crash 3").startswith("ERROR crash WorkerCrashed"), "the crash test needs a crash"
    assert h.call("add 1 2") == "RESULT add 6"
    h.send("spawn sleep 30")  # one call in flight while top looks
    # calls that each burn 5 ms of the worker's CPU: on a loaded machine a loop of tiny calls could
    # stay under one clock tick (10 ms) of worker CPU over the interval
    h.send("loop busy 0.005")
    h.expect("LOOPING")
    time.sleep(0.5)
    r = top(h, "--once", "--json", "--interval", "1.5")
    h.send("stop")
    h.expect("STOPPED")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (host,) = out["hosts"]
    assert host["pid"] == h.pid and any("tools_host.py" in a for a in host["argv"])
    (cell,) = host["cells"]
    assert cell["pack"] == "dbgpack" and cell["state"] == "running"
    # One worker, a real process of the sandbox, as the host sees it.
    (pid,) = cell["pids"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"python" in f.read()
    assert re.fullmatch(r"\d+/\d+( missing .*)?", cell["walls"]), cell["walls"]
    names = {w["name"]: w["state"] for w in cell["wall_list"]}
    assert names.get("pid-namespace") == "active" and "landlock" in names and "memory-limit" in names
    # Calls: the loop keeps the worker busy; the crash counted as an error and a restart.
    assert cell["calls_per_s"] > 5, cell
    assert cell["calls"] > 10 and cell["errors"] >= 1
    assert 0 < cell["p50_us"] <= cell["p99_us"], cell
    assert 0 < cell["p50_us_total"] <= cell["p99_us_total"], cell
    assert cell["restarts"] == 1 and "exited with status 3" in cell["last_crash"]
    assert cell["inflight"] >= 1
    # The kernel's figures: CPU over the interval, RSS/PSS of every process, the cgroup.
    assert cell["cpu_percent"] is not None and cell["cpu_percent"] > 0
    assert cell["processes"] >= 3  # launcher, sandbox init, zygote, worker
    assert cell["rss"] > 20 << 20
    assert cell["pss"] is not None and 0 < cell["pss"] <= cell["rss"]
    assert cell["memory_limit"] is not None and abs(cell["memory_limit"] - 800_000_000) < 800_000_000 * 0.01
    assert cell["memory"] is not None and 0 < cell["memory"] < cell["memory_limit"]
    assert cell["debugging"] == 0


def test_top_table_and_one_frame_of_the_live_view(busy_host):
    r = top(busy_host, "--once", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    head, row = r.stdout.splitlines()[:2]
    for col in ("PACK", "PIDS", "WALLS", "CALLS/S", "P50", "P99", "CPU%", "RSS", "PSS", "MEM/LIMIT", "RESTARTS",
                "INFLIGHT"):
        assert col in head
    assert "dbgpack" in row and "running" in row
    r = top(busy_host, "--screen", "170x20", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    assert "nodecell top" in r.stdout and "dbgpack" in r.stdout and "walls:" in r.stdout, r.stdout


def test_live_view_in_a_pty(busy_host):
    p = Pty([launcher(), "top", "--pid", str(busy_host.pid), "--interval", "0.3"], env_with(busy_host.tools))
    try:
        p.expect("dbgpack", 60)
        p.send("q")
        assert p.wait(30) == 0
    finally:
        p.kill()


def test_no_host_and_stale_sockets(busy_host):
    empty = tools_dir()
    r = subprocess.run([launcher(), "top", "--once"], env=env_with(empty), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "no nodecell host process found" in r.stderr, r
    # A socket left by a process that is gone is removed; the live host is listed.
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(busy_host.tools, f"{dead.pid}.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    r = subprocess.run([launcher(), "top", "--once", "--json", "--interval", "0.1"], env=env_with(busy_host.tools),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [h["pid"] for h in json.loads(r.stdout)["hosts"]] == [busy_host.pid]
    assert not os.path.exists(stale)


def test_socket_is_private_and_can_be_turned_off(busy_host):
    path = os.path.join(busy_host.tools, f"{busy_host.pid}.sock")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(busy_host.tools).st_mode) == 0o700
    probe = "import nodecell; m = nodecell.ExtensionManager(); print(nodecell.tools.socket_path())"
    tools = tools_dir()
    on = subprocess.run([sys.executable, "-c", probe], env=env_with(tools), capture_output=True, text=True)
    assert on.stdout.strip().startswith(tools + "/"), on
    off = subprocess.run([sys.executable, "-c", probe], env=env_with(tools, NODECELL_TOOLS="0"),
                         capture_output=True, text=True)
    assert off.stdout.strip() == "None", off
    # A directory others can write to is refused, never used.
    shared = tools_dir()
    os.chmod(shared, 0o777)
    bad = subprocess.run([sys.executable, "-c", probe], env=env_with(shared), capture_output=True, text=True)
    assert bad.stdout.strip() == "None" and "group or others have access" in bad.stderr, bad
    os.rmdir(shared)
