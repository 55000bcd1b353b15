"""Issue 17: a dying or hostile worker never stalls, wedges or leaks into the host.

Every test watches the host's event loop while the worker attacks (a ticker that
measures how late 5 ms sleeps wake up) and checks the error type the caller sees:
only nodecell errors, with the reason as it really was, and a fresh worker next.
"""
from __future__ import annotations

import asyncio
import gc
import glob
import logging
import os
import re
import signal
import time

import pytest

from conftest import pack

#: The host loop may wake late under load on a shared 2-core CI box, but never by the
#: seconds a blocking send (5 s) or an unbounded log drain (1.5-5 s) used to cost.
MAX_LOOP_LAG = 0.5


class Ticker:
    """Measures how late the event loop runs a 5 ms timer, while it runs."""

    def __init__(self) -> None:
        self.lags: list = []
        self._stop = False
        self._task = None

    async def _run(self) -> None:
        while not self._stop:
            t = time.monotonic()
            await asyncio.sleep(0.005)
            self.lags.append(time.monotonic() - t - 0.005)

    def start(self) -> "Ticker":
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> float:
        self._stop = True
        await self._task
        return max(self.lags, default=0.0)

    def median(self) -> float:
        s = sorted(self.lags)
        return s[len(s) // 2] if s else 0.0


@pytest.fixture(scope="module")
def hmanager(aloop, nc, support_dir, venv_root):
    import nc_hostile

    async def make():
        return nc.ExtensionManager(nc_hostile.HostileExt,
                                   nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))

    m = aloop.run(make())
    yield m

    async def stop():
        await m.stop_all_extensions()

    aloop.run(stop())


def _load(aloop, hmanager, nc, support_dir, name, **kw):
    async def load():
        return await hmanager.load_extension(nc.ExtensionConfig(
            name=name, module_path=pack(support_dir, "hostile"), **kw))

    return aloop.run(load())


@pytest.fixture(scope="module")
def hostile(aloop, hmanager, nc, support_dir):
    return _load(aloop, hmanager, nc, support_dir, "hostile", timeout=20)


@pytest.mark.parametrize("mode", ["full", "ahead", "behind", "wrapped"])
def test_rewritten_tail_poisons_the_channel_at_once(aloop, hostile, nc, mode):
    """The worker keeps rewriting the tail of the host's ring; the host notices the
    first impossible value it reads, drops the worker (reason "protocol"), never
    blocks its loop, and the next call gets a fresh worker."""

    async def go():
        pid0 = (await hostile.whoami())["pid"]
        await hostile.rewrite_tail(mode, 30.0)
        ticker = Ticker().start()
        payload = b"x" * 40_000  # inline frames of ~600 slots: the ring's space is re-read often
        err = None
        t0 = time.monotonic()
        for _ in range(2000):
            try:
                await hostile.echo(payload)
            except Exception as e:  # noqa: BLE001 - the type is what is checked
                err = e
                break
        took = time.monotonic() - t0
        lag = await ticker.stop()
        pid1 = (await hostile.whoami())["pid"]
        return err, took, lag, pid0, pid1

    err, took, lag, pid0, pid1 = aloop.run(go())
    assert isinstance(err, nc.WorkerCrashed), repr(err)
    assert err.reason == "protocol", err
    assert "tail" in str(err) or "ring 0" in str(err), err
    assert took < 10, f"took {took:.1f} s to notice"
    assert lag < MAX_LOOP_LAG, f"the host loop stalled {lag * 1000:.0f} ms"
    assert pid1 != pid0
    assert hostile.last_crash is not None and hostile.last_crash.reason == "protocol"


def test_worker_that_stops_reading_never_blocks_the_loop(aloop, hmanager, nc, support_dir, basic_ext):
    """A worker that stops reading (SIGSTOP: alive, wedged) while the host sends more
    than its ring holds: sends queue without blocking, other extensions are served,
    and the calls end at their deadline with CallTimeout (the worker is killed)."""
    ext = _load(aloop, hmanager, nc, support_dir, "hostile-wedged", timeout=3)

    async def go():
        pid0 = (await ext.whoami())["pid"]
        await ext.stop_reading_later(0.2)
        await asyncio.sleep(0.5)
        ticker = Ticker().start()
        payload = b"w" * 60_000
        calls = [asyncio.ensure_future(ext.echo(payload)) for _ in range(40)]  # ~4x the ring
        await asyncio.sleep(0)
        others = []
        t0 = time.monotonic()
        while not all(c.done() for c in calls) and time.monotonic() - t0 < 20:
            t = time.monotonic()
            assert await basic_ext.double(3) == 6
            others.append(time.monotonic() - t)
            await asyncio.sleep(0.01)
        results = await asyncio.gather(*calls, return_exceptions=True)
        lag = await ticker.stop()
        pid1 = (await ext.whoami())["pid"]
        await ext.stop()
        return results, lag, max(others), pid0, pid1

    results, lag, other_max, pid0, pid1 = aloop.run(go())
    kinds = {type(r).__name__ for r in results}
    assert kinds <= {"CallTimeout", "WorkerCrashed"}, results
    assert any(isinstance(r, nc.CallTimeout) for r in results)
    assert all(r.reason == "timeout" for r in results if isinstance(r, nc.WorkerCrashed))
    assert lag < MAX_LOOP_LAG, f"the host loop stalled {lag * 1000:.0f} ms"
    assert other_max < MAX_LOOP_LAG, f"another extension's call took {other_max * 1000:.0f} ms"
    assert pid1 != pid0


def test_stalled_worker_without_deadline_is_dropped(aloop, hmanager, nc, support_dir):
    """Without a call timeout, a worker that reads nothing for the stall limit while
    the host's frames wait is dropped as hostile (reason "protocol")."""
    import nodecell.cell as cell

    old = cell.STALL_TIMEOUT
    cell.STALL_TIMEOUT = 1.5
    try:
        ext = _load(aloop, hmanager, nc, support_dir, "hostile-stalled", timeout=None)

        async def go():
            await ext.stop_reading_later(0.2)
            await asyncio.sleep(0.5)
            ticker = Ticker().start()
            t0 = time.monotonic()
            results = await asyncio.gather(*(ext.echo(b"s" * 60_000) for _ in range(40)),
                                           return_exceptions=True)
            took = time.monotonic() - t0
            lag = await ticker.stop()
            ok = await ext.double(2)
            await ext.stop()
            return results, took, lag, ok

        results, took, lag, ok = aloop.run(go())
    finally:
        cell.STALL_TIMEOUT = old
    assert all(isinstance(r, nc.WorkerCrashed) and r.reason == "protocol" for r in results), results
    assert "read nothing" in str(results[-1]), results[-1]
    assert took < 10
    assert lag < MAX_LOOP_LAG
    assert ok == 4


def test_log_flood_is_bounded_and_summarized(aloop, hostile, basic_ext, nc):
    """A worker logging as fast as it can: the host loop and another extension's
    calls stay responsive, records beyond the rate limit are counted and summarized,
    and none is lost without a trace: delivered + summarized == sent."""
    delivered = []
    summarized = []

    class H(logging.Handler):
        def emit(self, r):
            msg = r.getMessage()
            if r.name == "nodecell.hostile.flood":
                delivered.append(msg)
            m = re.match(r"(\d+) log records from the worker were suppressed", msg)
            if m:
                summarized.append(int(m.group(1)))

    h = H()
    lg = logging.getLogger("nodecell.hostile")
    lg.addHandler(h)
    try:
        async def go():
            await hostile.noop()
            ticker = Ticker().start()
            await hostile.log_flood(3.0)
            others = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3.5:
                t = time.monotonic()
                assert await basic_ext.double(5) == 10
                others.append(time.monotonic() - t)
                await asyncio.sleep(0.005)
            lag = await ticker.stop()
            med = ticker.median()
            for _ in range(100):
                n = await hostile.flooded_count()
                if n is not None:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)  # the last summary comes a second after the flood
            return n, lag, med, sorted(others)

        sent, lag, med, others = aloop.run(go())
    finally:
        lg.removeHandler(h)
    print(f"\nflood: sent {sent}, delivered {len(delivered)}, summarized {sum(summarized)} in {len(summarized)} "
          f"summaries; loop lag max {lag * 1000:.1f} ms median {med * 1000:.2f} ms; other extension "
          f"p50 {others[len(others) // 2] * 1000:.2f} ms max {others[-1] * 1000:.1f} ms over {len(others)} calls")
    assert sent and sent > 10_000, sent
    assert summarized, "no summary of suppressed records"
    assert len(delivered) + sum(summarized) == sent, (len(delivered), sum(summarized), sent)
    assert len(delivered) < 5000
    assert lag < MAX_LOOP_LAG, f"the host loop stalled {lag * 1000:.0f} ms"
    assert med < 0.02, f"median loop lag {med * 1000:.1f} ms"
    p50 = others[len(others) // 2]
    assert p50 < 0.02 and others[-1] < MAX_LOOP_LAG, f"other extension: p50 {p50 * 1000:.1f} ms, max {others[-1] * 1000:.0f} ms"


def test_kill_during_large_sends(aloop, hostile, nc):
    """SIGKILL while 8 MiB arguments are being sent: every call ends with its result or
    WorkerCrashed(reason="signal"); no transport error reaches the caller."""

    async def go():
        await hostile.noop()
        w = hostile._workers[0]
        big = b"y" * (8 << 20)
        calls = [asyncio.ensure_future(hostile.echo(big)) for _ in range(8)]
        await asyncio.sleep(0.02)
        signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
        more = [asyncio.ensure_future(hostile.echo(big)) for _ in range(4)]
        return await asyncio.gather(*calls, *more, return_exceptions=True)

    results = aloop.run(go())
    crashed = [r for r in results if isinstance(r, BaseException)]
    assert crashed, "the kill came too late to hit a call"
    for r in crashed:
        assert isinstance(r, nc.WorkerCrashed), repr(r)
        assert r.reason == "signal" and r.signal == signal.SIGKILL, r
    assert all(r == b"y" * (8 << 20) for r in results if not isinstance(r, BaseException))
    assert aloop.run(hostile.double(4)) == 8


def test_call_to_a_worker_that_died_unnoticed(aloop, hostile, nc):
    """The worker dies while the loop is busy (the death not yet seen): a call with a
    large (spilled) argument fails with WorkerCrashed and the real reason, not EOFError."""

    async def go():
        await hostile.noop()
        w = hostile._workers[0]
        signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
        time.sleep(0.3)  # block the loop: the reactor's death event waits
        try:
            await hostile.echo(b"z" * 100_000)
        except Exception as e:  # noqa: BLE001
            return e
        return None

    err = aloop.run(go())
    assert isinstance(err, nc.WorkerCrashed), repr(err)
    assert err.reason == "signal" and err.signal == signal.SIGKILL, err
    assert aloop.run(hostile.echo(b"z" * 100_000)) == b"z" * 100_000


_LAUNCHERS: set = set()


def _descendants() -> set:
    me = os.getpid()
    parent = {}
    for d in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.split("/")[2])] = int(fields[1])
    out = set()
    for pid, pp in parent.items():
        if pp == me:
            _LAUNCHERS.add(pid)  # this process's launchers: their cgroups are ours to account for
        p = pid
        while p in parent and p > 1:
            p = parent[p]
            if p == me:
                out.add(pid)
                break
    return out


def _cgroups() -> int:
    """nodecell cgroups of the launchers this test process started (others on the
    machine make their own)."""
    names = {f"nodecell-{p}" for p in _LAUNCHERS}
    n = 0
    for hier in ("memory", "pids", "cpu", "cpu,cpuacct", "unified"):
        for root, dirs, _ in os.walk(f"/sys/fs/cgroup/{hier}"):
            n += sum(1 for d in dirs if d in names)
    return n


def _resources() -> dict:
    procs = len(_descendants())
    fds = os.listdir("/proc/self/fd")
    memfds = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:nodecell"):
                memfds += 1
        except OSError:
            pass
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if "memfd:nodecell" in line)
    return {"fds": len(fds), "memfds": memfds, "mappings": maps, "processes": procs, "cgroups": _cgroups()}


def test_crash_storm_leaks_nothing_while_handles_are_kept(aloop, hmanager, nc, support_dir):
    """30 crashes with every exception (and the handle, and last_crash) kept: the
    host's fds, memfds, mappings, processes and cgroups are back to where they were."""
    ext = _load(aloop, hmanager, nc, support_dir, "hostile-storm", timeout=20, max_memory="300MB")
    kept = []

    async def crash_once():
        try:
            await ext.exit_now(3)
        except nc.WorkerCrashed as e:
            kept.append(e)
        assert await ext.double(1) == 2

    async def settle(limit):
        for _ in range(60):
            gc.collect()
            now = _resources()
            if all(now[k] <= limit[k] for k in limit):
                return now
            await asyncio.sleep(0.05)
        return now

    aloop.run(crash_once())  # warm: everything a crash creates once exists now
    base = aloop.run(settle({"fds": 10**9, "memfds": 10**9, "mappings": 10**9, "processes": 10**9,
                             "cgroups": 10**9}))
    for _ in range(30):
        aloop.run(crash_once())
    after = aloop.run(settle(base))
    assert len(kept) == 31 and all(e.reason == "exited" for e in kept)
    assert ext.last_crash is not None and ext.last_crash.__traceback__ is None
    assert after == base, f"leaked: before {base}, after {after}"
    aloop.run(ext.stop())


def test_loading_a_name_twice_is_a_nodecell_error(aloop, hmanager, hostile, nc, support_dir):
    with pytest.raises(nc.ConfigError) as e:
        hmanager.load_extension(nc.ExtensionConfig(name="hostile", module_path=pack(support_dir, "hostile")))
    assert isinstance(e.value, nc.NodecellError) and e.value.field == "name"
    assert "already loaded" in str(e.value)
