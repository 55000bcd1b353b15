"""Starting, parallel workers, progress events, stopping without leftovers, the installed wheel."""
from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import time

import pytest

from conftest import REPO, pack


def _children() -> set:
    me = str(os.getpid())
    out = set()
    for d in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.add(int(d.split("/")[2]))
    return out


def _cgroups() -> list:
    found = []
    for hier in ("memory", "pids", "cpu", "cpu,cpuacct", "unified"):
        base = f"/sys/fs/cgroup/{hier}"
        if not os.path.isdir(base):
            continue
        for root, dirs, _ in os.walk(base):
            found += [os.path.join(root, d) for d in dirs if d.startswith("nodecell-")]
    return found


def _memfds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:nodecell"):
                n += 1
        except OSError:
            pass
    return n


def test_stop_leaves_no_processes_cgroups_or_memfds(aloop, nc, testext, support_dir, venv_root):
    torch = pytest.importorskip("torch")
    kids0, cg0, fds0 = _children(), _cgroups(), _memfds()

    async def go():
        m = nc.ExtensionManager(testext.TestExt, nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))
        ext = await m.load_extension(nc.ExtensionConfig(
            name="lifecycle", module_path=pack(support_dir, "basic"), share_torch=True, workers=2,
            max_memory="1GB", max_pids=100))
        t = torch.randn(1 << 20)
        await ext.echo(t)
        during = (_children() - kids0, _cgroups(), _memfds())
        await m.stop_all_extensions()
        return during, ext

    (kids, cgs, fds), ext = aloop.run(go())
    assert kids, "the sandbox launcher was running"
    # Only the cgroups of this test's own launchers (named nodecell-<launcher pid>): other
    # sandboxes on the machine may come and go meanwhile.
    ours = [c for c in cgs if c not in cg0 and os.path.basename(c) in {f"nodecell-{p}" for p in kids}]
    assert ours, "a cgroup was made for the limits"
    for _ in range(100):
        if not (_children() - kids0) and not any(os.path.isdir(c) for c in ours):
            break
        time.sleep(0.05)
    import gc

    gc.collect()
    assert _children() - kids0 == set(), "processes left behind"
    assert [c for c in ours if os.path.isdir(c)] == [], "cgroups left behind"
    assert _memfds() <= fds0, "channel/arena memfds left open"
    with pytest.raises(nc.ExtensionStopped):
        aloop.run(ext.noop())


def test_parallel_workers(aloop, manager, nc, support_dir):
    async def go():
        ext = await manager.load_extension(nc.ExtensionConfig(
            name="parallel", module_path=pack(support_dir, "basic"), workers=2))
        pids = set()
        t0 = time.perf_counter()
        res = await asyncio.gather(ext.sleep(0.5), ext.sleep(0.5))
        took = time.perf_counter() - t0
        for _ in range(8):
            pids.add((await ext.whoami())["pid"])
        await ext.stop()
        return res, took, pids

    res, took, pids = aloop.run(go())
    assert res == [0.5, 0.5]
    assert len(pids) == 2, "calls are spread over both workers"
    assert took < 0.9, f"two 0.5 s calls on two workers took {took:.2f} s"


def test_long_sync_calls_do_not_block_others_on_one_worker(aloop, basic_ext):
    """One thread runs calls inline; when a call runs long, another thread takes over
    receiving, so a second call is not stuck behind the first."""

    async def go():
        t0 = time.perf_counter()
        slow = asyncio.ensure_future(basic_ext.sleep(0.6))
        await asyncio.sleep(0.05)
        fast_t = time.perf_counter()
        assert await basic_ext.double(21) == 42
        fast = time.perf_counter() - fast_t
        await slow
        return fast, time.perf_counter() - t0

    fast, total = aloop.run(go())
    assert fast < 0.3, f"a quick call waited {fast:.2f} s behind a slow one"
    assert total < 1.0


def test_concurrent_calls_on_one_worker(aloop, basic_ext):
    async def go():
        t0 = time.perf_counter()
        await asyncio.gather(*(basic_ext.asleep(0.3) for _ in range(10)))
        return time.perf_counter() - t0

    assert aloop.run(go()) < 1.5


def test_progress_events_and_prewarm(aloop, nc, testext, support_dir, venv_root):
    events = []

    async def go():
        m = nc.ExtensionManager(testext.TestExt, nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))
        m.on_progress(events.append)
        streamed = []

        async def consume():
            async for ev in m.progress_events():
                streamed.append(ev)
                if ev.get("event") == "done":
                    return

        consumer = asyncio.ensure_future(consume())
        await asyncio.sleep(0)
        cfg = nc.ExtensionConfig(name="warm", module_path=pack(support_dir, "basic"), share_torch=True)
        await m.prewarm(cfg)
        await asyncio.wait_for(consumer, 5)
        assert streamed and streamed[-1]["event"] == "done" and streamed[-1]["pack"] == "warm", streamed
        t0 = time.perf_counter()
        ext = await m.load_extension(cfg)
        r = await ext.double(2)
        took = time.perf_counter() - t0
        zygote_versions = ext._cell.zygote_info.get("versions", {})
        await m.stop_all_extensions()
        return r, took, zygote_versions

    r, took, zv = aloop.run(go())
    assert r == 4
    assert "torch" in zv, "the zygote preloaded torch"
    assert took < 1.0, f"load + first call from a warm zygote took {took:.2f} s"
    assert any(e.get("event") == "done" for e in events), events


def test_sandbox_walls_are_reported(aloop, basic_ext):
    walls = {w["name"]: w["state"] for w in basic_ext.walls}
    for name in ("user-namespace", "mount-namespace", "pid-namespace", "net-namespace", "landlock", "seccomp",
                 "capabilities", "no-new-privs"):
        assert walls.get(name) == "active", (name, walls)


def test_installed_wheel_in_a_fresh_venv(tmp_path):
    wheels = sorted(glob.glob(str(REPO / "target" / "wheels" / "nodecell-*.whl")))
    assert wheels, "scripts/build-wheel.sh builds the wheel before the tests"
    venv = tmp_path / "venv"
    uv = str(REPO / ".venv" / "bin" / "uv")
    subprocess.run([uv, "venv", "-q", "--python", "/usr/bin/python3.11", str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), wheels[-1]], check=True)
    code = (
        "import nodecell, json; c = nodecell.check(); "
        "print(json.dumps({'ok': bool(c), 'launcher': nodecell._find_launcher.find_launcher()}))"
    )
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import nodecell._find_launcher\n" + code],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert str(venv) in r.stdout, "the launcher comes from the installed wheel"


def test_control_messages_and_status_records_are_checked_in_rust(nc):
    """The zygote protocol and the launcher's status lines are nodecell_wire's: typed,
    versioned, and a malformed one is refused naming its field."""
    import json

    from nodecell import _nodecell as N

    data = N.encode_zygote_request({"op": "spawn", "wid": 3})
    assert json.loads(data) == {"op": "spawn", "wid": 3, "v": N.CONTROL_VERSION}
    assert N.decode_zygote_request(data) == {"op": "spawn", "wid": 3}
    setup = {"env": {"A": "1"}, "unset": [], "cwd": "/p", "drop": [], "site": ["/s"],
             "confine": {"uid": None, "ro": ["/p"], "rw": [], "tmp": "/tmp/x"}}
    spawn = N.decode_zygote_request(N.encode_zygote_request({"op": "spawn", "wid": 4, "pack": setup}))
    assert spawn["pack"] == setup
    ev = N.decode_zygote_event(N.encode_zygote_event({"op": "exited", "wid": 2, "pid": 9, "signal": 9}))
    assert ev == {"op": "exited", "wid": 2, "pid": 9, "signal": 9}
    for bad, field in [({"op": "kill", "wid": "x"}, "wid"), ({"op": "kill"}, "wid"),
                       ({"op": "spawn", "wid": 1, "pack": {"env": {"A": 1}}}, "pack.env.A"),
                       ({"op": "spawn", "wid": 1, "extra": 0}, "extra"), ({"op": "fork"}, "op")]:
        with pytest.raises(N.WireError, match=f"field `{field}`"):
            N.encode_zygote_request(bad)
    with pytest.raises(ValueError, match="pack.env.A"):
        N.encode_zygote_request({"op": "spawn", "wid": 1, "pack": {"env": {"A": object()}}})
    with pytest.raises(N.WireError, match="field `v`"):
        N.decode_zygote_event(b'{"op": "spawned", "wid": 1, "pid": 2}')
    with pytest.raises(N.WireError, match="field `op`"):
        N.decode_zygote_event(data)  # a request is no event
    with pytest.raises(N.WireError, match="not a JSON object"):
        N.decode_zygote_event(b"\xff garbage")
    kind, rec = N.decode_status_line(b'{"v": 1, "exit": {"code": 137, "reason": "memory", "detail": "x"}}\n')
    assert (kind, rec) == ("exit", {"code": 137, "reason": "memory", "detail": "x"})
    with pytest.raises(N.WireError, match="field `exit.reason`"):
        N.decode_status_line(b'{"v": 1, "exit": {"code": 1, "reason": "bored", "detail": ""}}')


def test_a_zygote_survives_malformed_control_messages(aloop, manager, nc, support_dir):
    """Garbage on the control socket is reported by the zygote (naming the field) and
    ignored; the next worker it forks serves as usual."""
    import signal

    async def go():
        ext = await manager.load_extension(nc.ExtensionConfig(
            name="ctlcheck", module_path=pack(support_dir, "basic")))
        try:
            pid0 = (await ext.whoami())["pid"]
            cell = ext._cell
            cell.ctl.send(b'{"op": "spawn", "wid": "nope", "v": 1}')
            cell.ctl.send(b"not json")
            cell.ctl.send(b'{"op": "kill", "wid": 1, "v": 99}')
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and sum("ignoring a control message" in t
                                                      for t in cell.stderr_tail) < 3:
                await asyncio.sleep(0.05)
            tail = "\n".join(cell.stderr_tail)
            for w in list(cell.workers.values()):
                signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
            for _ in range(100):  # the next call waits for the fresh worker
                try:
                    pid1 = (await ext.whoami())["pid"]
                    break
                except nc.WorkerCrashed:
                    await asyncio.sleep(0.05)
            return tail, pid0, pid1
        finally:
            await ext.stop()

    tail, pid0, pid1 = aloop.run(go())
    assert "field `wid`" in tail and "not a JSON object" in tail and "field `v`" in tail, tail
    assert pid1 != pid0, "a fresh worker, forked by the same zygote, serves"
