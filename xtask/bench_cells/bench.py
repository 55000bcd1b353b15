"""`cargo xtask bench cells`: how fast a pack of a host app is ready, and what an extra worker costs.

The stand-in app (tests/fixtures/studio_app, laid out like ComfyUI) with its two packs and
copies of them under other names (so there are several "later" packs), measured three ways
in one run:

* direct: the app's own loader (``nodes.load_custom_node``) in this process, which has
  imported the app and torch (the baseline of the targets);
* own cell: ``StudioHost`` today, one sandbox + zygote per pack;
* app cell: ``StudioHost(app_cell=True, app_preload=["nodes", "server", "numpy"])`` starts the
  app cell (sandbox + zygote importing torch and the app) in the background as it is made
  (timed: "app cell cold start"); every pack, the first included, is then fork + pack import,
  each walled off in its own uid and Landlock domain; warm reload = ``ext.restart()`` (stop the
  pack's worker, fork a new one).
* direct cold: a fresh interpreter importing torch and the app (``utils``, ``nodes``,
  ``server``, ``numpy``) as the app's own start does: what the cold start is compared with.

Memory: USS (private pages) and PSS of one pack's worker, from /proc/PID/smaps_rollup.
Venvs are provisioned before anything is timed. Writes the rows to --out (JSON) and prints
the table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
VENV_ROOT = Path(os.environ.get("NODECELL_TEST_VENV_ROOT", "/var/tmp/nodecell-tests/venvs"))
PACKS = ("NC-Showcase", "NC-Entry")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for d, dirs, files in os.walk(dst):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    return dst


def host_pid(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise RuntimeError("no pid")


def memory(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                out[k] = int(v.split()[0]) * 1024
    return {"uss": out["Private_Clean"] + out["Private_Dirty"], "pss": out["Pss"], "rss": out["Rss"]}


def worker_memory(ext) -> dict:
    w = [w for w in ext._workers if w.alive][0]
    return memory(host_pid(w.pidfd))


def ms(s: float) -> float:
    return round(s * 1000, 1)


async def main_async(a) -> dict:
    d = Path(tempfile.mkdtemp(prefix="nodecell-bench-cells-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    root = copy_tree(FIXTURES / "studio_app", d / "ComfyUI")
    names = []
    for i in range(a.copies):
        for p in PACKS:
            name = p if i == 0 else f"{p}-{i}"
            dst = copy_tree(FIXTURES / "packs" / p, root / "custom_nodes" / name)
            man = dst / "manifest.yaml"
            man.write_text(man.read_text().replace("name: nc-", f"name: nc{i}-" if i else "name: nc-", 1))
            names.append(name)
    direct = d / "direct"
    for n in names:
        copy_tree(root / "custom_nodes" / n, direct / n)
    for sub in ("output", "temp", "input", "user"):
        (root / sub).mkdir(mode=0o755)
    sys.path.insert(0, str(root))
    import utils  # noqa: F401 - first, as the app's main.py (its nodes.py puts comfy/ first on sys.path)
    import comfy.cli_args
    import nodes
    import server

    comfy.cli_args.args.cpu = True
    from nodecell import studio

    srv = server.PromptServer(asyncio.get_running_loop())  # packs register routes at import
    rows = {"meta": {"packs": names, "python": sys.version.split()[0]}}
    try:
        # provision every venv first (not timed)
        prov = studio.StudioHost(str(VENV_ROOT), state=False)
        await prov.provision([str(root / "custom_nodes" / n) for n in names])

        # direct: the app's own loader, in this process
        t_direct = []
        for n in names:
            t0 = time.perf_counter()
            assert await nodes.load_custom_node(str(direct / n), set(nodes.NODE_CLASS_MAPPINGS))
            t_direct.append(time.perf_counter() - t0)
        rows["direct"] = {"first_ms": ms(t_direct[0]), "median_ms": ms(statistics.median(t_direct)),
                          "max_ms": ms(max(t_direct))}
        # direct cold: a fresh interpreter importing torch and the app (median of 3)
        cold = []
        code = ("import sys, time; t0 = time.perf_counter(); sys.path.insert(0, sys.argv[1]); import torch, numpy; "
                "import utils, nodes, server; print(time.perf_counter() - t0)")
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
            cold.append(float(out.stdout.split()[-1]))
        rows["direct"]["cold_import_ms"] = ms(statistics.median(cold))
        base = dict(nodes.NODE_CLASS_MAPPINGS)

        async def load_all(host, which):
            mappings, times = dict(base), []
            for n in which:
                t0 = time.perf_counter()
                await host.load_custom_node(str(root / "custom_nodes" / n), mappings, {})
                times.append(time.perf_counter() - t0)
            return times

        async def reloads(ext, k):
            times = []
            for _ in range(k):
                t0 = time.perf_counter()
                await ext.restart()
                times.append(time.perf_counter() - t0)
            return times

        # own cell per pack (today's path)
        own = studio.StudioHost(str(VENV_ROOT), state=str(d / "state-own"))
        try:
            t_own = await load_all(own, names[:a.own])
            # NC-Entry: a pack that does not write into its folder (a restarted own cell runs as a
            # newly leased uid, which cannot rewrite the files the last one wrote into its layer)
            ext = [e for n, e in own.packs.items() if "entry" in n][0]
            m_own = worker_memory(ext)
            r_own = await reloads(ext, a.reloads)
        finally:
            await own.stop()
        rows["own_cell"] = {"first_ms": ms(t_own[0]), "later_median_ms": ms(statistics.median(t_own[1:])),
                            "reload_median_ms": ms(statistics.median(r_own)), "worker": m_own}

        # app cell
        t0 = time.perf_counter()
        app = studio.StudioHost(str(VENV_ROOT), state=str(d / "state-app"), app_cell=True,
                                app_preload=["nodes", "server", "numpy"])
        try:
            await app.manager._app_cells.wait_prewarmed()  # the app's own start-up would run meanwhile
            t_cold = time.perf_counter() - t0
            t_app = await load_all(app, names)
            walls = {n: [w["state"] for w in e.walls if w["name"] == "pack-separation"] for n, e in app.packs.items()}
            exts = list(app.packs.values())
            shared = [e for e in exts if type(e._cell).__name__ == "PackView"]
            ext = [e for e in exts if "entry" in e.name][-1]
            m_app = worker_memory(ext)
            r_app = await reloads(ext, a.reloads)
        finally:
            await app.stop()
        rows["app_cell"] = {"first_ms": ms(t_app[0]), "later_median_ms": ms(statistics.median(t_app[1:])),
                            "later_max_ms": ms(max(t_app[1:])), "reload_median_ms": ms(statistics.median(r_app)),
                            "worker": m_app, "packs_in_app_cell": len(shared), "packs": len(exts),
                            "cold_start_ms": ms(t_cold),
                            "separated": sum(1 for v in walls.values() if v == ["active"])}
    finally:
        _ = srv
        sys.path.remove(str(root))
        shutil.rmtree(d, ignore_errors=True)
    return rows


def table(r: dict) -> str:
    mib = 1 << 20
    d, o, p = r["direct"], r["own_cell"], r["app_cell"]
    lines = [
        "| row | direct (app's loader, in process) | own cell per pack (today) | app cell | target (issue 10) |",
        "|---|---|---|---|---|",
        f"| cold start (fresh interpreter importing torch + the app / app cell started by StudioHost()) | "
        f"{d['cold_import_ms']} ms | - | {p['cold_start_ms']} ms (in the background) | - |",
        f"| first pack ready | {d['first_ms']} ms | {o['first_ms']} ms | {p['first_ms']} ms (after the cold start) "
        f"| <= direct + 1000 ms |",
        f"| cold start + first pack - direct cold import | - | - | "
        f"{round(p['cold_start_ms'] + p['first_ms'] - d['cold_import_ms'] - d['first_ms'], 1)} ms | <= 1000 ms |",
        f"| later packs ready (median) | {d['median_ms']} ms | {o['later_median_ms']} ms | "
        f"{p['later_median_ms']} ms (max {p['later_max_ms']}) | <= 1000 ms |",
        f"| warm reload (ext.restart, median) | - | {o['reload_median_ms']} ms | {p['reload_median_ms']} ms | <= 100 ms |",
        f"| extra worker USS | - | {o['worker']['uss'] / mib:.1f} MiB | {p['worker']['uss'] / mib:.1f} MiB | <= 100 MB |",
        f"| extra worker PSS | - | {o['worker']['pss'] / mib:.1f} MiB | {p['worker']['pss'] / mib:.1f} MiB | <= 100 MB |",
    ]
    return "\n".join(lines) + (f"\n\n{p['packs_in_app_cell']}/{p['packs']} packs in the app cell, "
                               f"{p['separated']} with pack-separation active; "
                               f"packs: {', '.join(r['meta']['packs'])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--copies", type=int, default=3, help="copies of the two packs (2 x copies packs)")
    ap.add_argument("--own", type=int, default=3, help="packs loaded the own-cell way")
    ap.add_argument("--reloads", type=int, default=5)
    a = ap.parse_args()
    rows = asyncio.run(main_async(a))
    Path(a.out).write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
