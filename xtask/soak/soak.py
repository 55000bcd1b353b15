"""`cargo xtask soak`: the Python API under a long fault soak, with leak accounting.

Phases (each counted against the host's resources before and after):
  calls   N calls (a quarter sequential, the rest 64 in flight), every answer checked
  crashes M worker deaths (exit, segfault, SIGKILL from inside and outside, memory
          limit), each followed by a call on a fresh worker; every exception kept
  churn   K load / call / stop cycles of a whole sandbox
Resources: open fds, nodecell memfds, their mappings, descendant processes, nodecell
cgroups, RSS. Prints a JSON report (and writes it with --out); exit 1 on any leak,
wrong answer or unexpected exception type.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


#: Pids of the launchers this process started (its direct children): the cgroups it is
#: accountable for are named after them (other processes on the machine make theirs).
LAUNCHERS: set = set()


def descendants() -> int:
    me = os.getpid()
    parent = {}
    for d in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.split("/")[2])] = int(fields[1])
    n = 0
    for pid, pp in parent.items():
        if pp == me:
            LAUNCHERS.add(pid)
        p = pid
        while p in parent and p > 1:
            p = parent[p]
            if p == me:
                n += 1
                break
    return n


def cgroups() -> int:
    """nodecell cgroups (every hierarchy) of the launchers this process started."""
    names = {f"nodecell-{p}" for p in LAUNCHERS}
    n = 0
    for hier in ("memory", "pids", "cpu", "cpu,cpuacct", "unified"):
        for _root, dirs, _ in os.walk(f"/sys/fs/cgroup/{hier}"):
            n += sum(1 for d in dirs if d in names)
    return n


def resources() -> dict:
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
    rss = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                rss = int(line.split()[1]) // 1024
    return {"fds": len(fds), "memfds": memfds, "mappings": maps, "processes": descendants(),
            "cgroups": cgroups(), "rss_mb": rss}


async def settle(base: dict) -> dict:
    """Resources once the host has let go of what it let go of (up to 5 s)."""
    now = resources()
    for _ in range(100):
        gc.collect()
        now = resources()
        if all(now[k] <= base[k] for k in base if k != "rss_mb"):
            break
        await asyncio.sleep(0.05)
    return now


def leaks(base: dict, now: dict) -> dict:
    return {k: now[k] - base[k] for k in base if k != "rss_mb" and now[k] > base[k]}


async def main(a: argparse.Namespace) -> int:
    import nodecell
    import soak_ext

    work = tempfile.mkdtemp(prefix="nodecell-soak-", dir="/var/tmp")
    os.chmod(work, 0o755)
    pack = os.path.join(work, "pack")
    shutil.copytree(os.path.join(HERE, "pack"), pack)
    for root, dirs, files in os.walk(work):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    venvs = os.environ.get("NODECELL_SOAK_VENV_ROOT", "/var/tmp/nodecell-tests/venvs")
    os.makedirs(venvs, exist_ok=True)
    mgr = nodecell.ExtensionManager(soak_ext.SoakExt, nodecell.ExtensionManagerConfig(venv_root_path=venvs))
    report: dict = {"phases": {}, "ok": True}
    problems: list = []

    def cfg(name: str, **kw):
        return nodecell.ExtensionConfig(name=name, module_path=pack, **kw)

    # -- calls -------------------------------------------------------------------------
    ext = await mgr.load_extension(cfg("soak-calls", timeout=60))
    await ext.echo(0)
    base = await settle({k: 10**9 for k in resources()})
    mismatches = 0
    seq = a.calls // 4
    t0 = time.perf_counter()
    for i in range(seq):
        v = ("s", i, [i, str(i)])
        if await ext.echo(v) != v:
            mismatches += 1
    t_seq = time.perf_counter() - t0
    conc = a.calls - seq
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> bool:
        async with sem:
            v = {"i": i, "b": b"x" * (i % 97)}
            r = await (ext.aecho(v) if i % 2 else ext.echo(v))
            return r == v

    t0 = time.perf_counter()
    res = await asyncio.gather(*(one(i) for i in range(conc)))
    t_conc = time.perf_counter() - t0
    mismatches += res.count(False)
    after = await settle(base)
    await ext.stop()
    report["phases"]["calls"] = {
        "calls": a.calls, "mismatches": mismatches,
        "sequential_per_s": round(seq / t_seq), "concurrent_64_per_s": round(conc / t_conc),
        "before": base, "after": after, "leaks": leaks(base, after)}
    if mismatches:
        problems.append(f"{mismatches} wrong answers")

    # -- crashes -----------------------------------------------------------------------
    ext = await mgr.load_extension(cfg("soak-crash", timeout=30, max_memory="256MB"))
    await ext.whoami()
    kept = []
    unexpected = []

    async def crash(i: int) -> None:
        kind = i % 5
        try:
            if kind == 0:
                await ext.exit_now(7)
            elif kind == 1:
                await ext.segfault()
            elif kind == 2:
                await ext.kill_self(int(signal.SIGKILL))
            elif kind == 3:
                await ext.whoami()
                w = ext._workers[0]
                signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
                await ext.echo(b"z" * 200_000)  # may race the death: both outcomes are fine
                return
            else:
                await ext.hog(1024)
        except nodecell.WorkerCrashed as e:
            kept.append(e)
            want = ["exited", "signal", "signal", "signal", "memory"][kind]
            if e.reason != want:
                unexpected.append(f"crash {i} kind {kind}: reason {e.reason!r} ({e})")
        except Exception as e:  # noqa: BLE001
            unexpected.append(f"crash {i} kind {kind}: {type(e).__module__}.{type(e).__name__}: {e}")

    # One of each first, so everything a crash creates once exists in the baseline.
    for i in range(5):
        await crash(i)
        await ext.whoami()
    base = await settle({k: 10**9 for k in resources()})
    t0 = time.perf_counter()
    recover = []
    for i in range(a.crashes):
        await crash(i)
        descendants()  # note the launcher's pid
        t = time.perf_counter()
        if await ext.echo(i) != i:
            problems.append(f"wrong answer after crash {i}")
        recover.append(time.perf_counter() - t)
    t_crash = time.perf_counter() - t0
    after = await settle(base)
    recover.sort()
    report["phases"]["crashes"] = {
        "crashes": a.crashes, "kept_exceptions": len(kept), "unexpected": unexpected[:20],
        "restarts": ext.restarts, "per_s": round(a.crashes / t_crash, 1),
        "recovery_ms_p50": round(recover[len(recover) // 2] * 1000, 1),
        "recovery_ms_max": round(recover[-1] * 1000, 1),
        "before": base, "after": after, "leaks": leaks(base, after)}
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected exceptions")
    await ext.stop()
    kept.clear()  # drop the exceptions (and the frames they hold)

    # -- churn -------------------------------------------------------------------------
    gc.collect()
    base = await settle({k: 10**9 for k in resources()})
    t0 = time.perf_counter()
    times = []
    for i in range(a.cycles):
        t = time.perf_counter()
        e = await mgr.load_extension(cfg(f"soak-churn-{i}", max_pids=64))
        if await e.echo(i) != i:
            problems.append(f"wrong answer in cycle {i}")
        descendants()  # note the launcher's pid
        await e.stop()
        times.append(time.perf_counter() - t)
    t_churn = time.perf_counter() - t0
    after = await settle(base)
    times.sort()
    report["phases"]["churn"] = {
        "cycles": a.cycles, "per_s": round(a.cycles / t_churn, 2),
        "cycle_ms_p50": round(times[len(times) // 2] * 1000, 1), "cycle_ms_max": round(times[-1] * 1000, 1),
        "before": base, "after": after, "leaks": leaks(base, after)}

    await mgr.stop_all_extensions()
    shutil.rmtree(work, ignore_errors=True)
    for name, ph in report["phases"].items():
        if ph["leaks"]:
            problems.append(f"{name}: leaked {ph['leaks']}")
    report["problems"] = problems
    report["ok"] = not problems
    out = json.dumps(report, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out)
    print(out)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument("--crashes", type=int, default=200)
    p.add_argument("--cycles", type=int, default=300)
    p.add_argument("--out")
    args = p.parse_args()
    sys.path.insert(0, HERE)
    sys.exit(asyncio.run(main(args)))
