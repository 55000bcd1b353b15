"""The nodecell demo: a Studio-style workflow across four isolated packs.

    python -m nodecell.studio.demo [--packs examples/packs] [--workflow examples/workflow.json]

Provisions the packs (progress shown), loads them into cells, runs the
workflow, and prints one row per node: its pack, the numpy/torch it saw, its
time, the walls around it, and what happened (for the misbehaving pack: what
each attempt met). Exits 0 when the host survived and the good nodes gave the
right outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

from .. import _find_launcher
from . import StudioHost, run_workflow


def _provision_with_progress(packs: List[str], venv_root: str) -> None:
    launcher = _find_launcher.find_launcher()
    env = dict(os.environ, NODECELL_VENV_ROOT=venv_root)
    print(f"\n== provisioning {len(packs)} packs ({launcher} provision)")
    r = subprocess.run([launcher, "provision", *packs], env=env)
    if r.returncode != 0:
        raise SystemExit(f"provisioning failed (exit {r.returncode})")


def _serve_loopback() -> int:
    """A host-only TCP service on 127.0.0.1 that a sandboxed pack must not reach."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def loop() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.sendall(b"host-secret-service\n")
            c.close()

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1]


def _fmt_versions(v: Dict[str, str]) -> str:
    parts = []
    if "numpy" in v:
        parts.append(f"numpy {v['numpy']}")
    if "torch" in v:
        parts.append(f"torch {v['torch'].split('+')[0]}")
    return ", ".join(parts) or "-"


def _short(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


async def main_async(args: argparse.Namespace) -> int:
    packs_dir = os.path.abspath(args.packs)
    packs = sorted(os.path.join(packs_dir, d) for d in os.listdir(packs_dir)
                   if os.path.isfile(os.path.join(packs_dir, d, "manifest.yaml")))
    venv_root = os.path.abspath(args.venv_root)
    os.makedirs(venv_root, exist_ok=True)
    if not args.no_provision:
        _provision_with_progress(packs, venv_root)

    # A secret the misbehaving pack will look for, and a host-only service.
    os.environ["NODECELL_DEMO_SECRET"] = "hunter2-do-not-leak"
    port = _serve_loopback()

    print("\n== nodecell check")
    subprocess.run([_find_launcher.find_launcher(), "check"])

    host = StudioHost(venv_root)
    mappings: Dict[str, Any] = {}
    display: Dict[str, str] = {}
    t0 = time.perf_counter()
    print("\n== loading packs into cells")
    for p in packs:
        t = time.perf_counter()
        names = await host.load_custom_node(p, mappings, display)
        print(f"   {os.path.basename(p):<14} {len(names)} node(s) in {time.perf_counter() - t:.2f}s: {', '.join(names)}")
    with open(args.workflow) as f:
        graph = json.load(f)
    for node in graph.values():
        if node["class_type"] == "OpenSocket":
            node["inputs"]["host_port"] = port

    print("\n== running the workflow")
    result = await run_workflow(graph, mappings)

    versions: Dict[str, Dict[str, str]] = {}
    walls: Dict[str, str] = {}
    for name, ext in host.packs.items():
        try:
            versions[name] = await ext.versions_seen()
        except Exception:  # noqa: BLE001 - a crashed pack restarts on this call; still report
            versions[name] = ext.versions
        active = [w["name"] for w in ext.walls if w.get("state") == "active"]
        missing = [w["name"] for w in ext.walls if w.get("state") == "missing"]
        walls[name] = f"{len(active)} active" + (f", missing: {','.join(missing)}" if missing else "")

    rows = []
    for nid in sorted(graph, key=lambda x: int(x) if x.isdigit() else x):
        rec = result.nodes[nid]
        pack = rec.pack or "host"
        if rec.error is not None:
            outcome = "ERROR " + _short(str(rec.error).split(": ", 1)[-1], 70)
        else:
            outs = rec.outputs or ()
            shown = []
            for o in outs:
                if hasattr(o, "shape"):
                    shown.append(f"tensor{tuple(o.shape)}")
                else:
                    shown.append(_short(repr(o) if not isinstance(o, str) else o, 200))
            outcome = "; ".join(shown)
        rows.append((nid, rec.class_type, pack, _fmt_versions(versions.get(pack, {})),
                     f"{rec.seconds * 1000:.0f} ms", walls.get(pack, "-"), outcome))

    headers = ("id", "node", "pack", "seen", "time", "walls", "outcome")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)) + "  outcome")
    print("  ".join("-" * w for w in widths) + "  " + "-" * 40)
    for r in rows:
        head = "  ".join(c.ljust(w) for c, w in zip(r, widths))
        out = r[-1]
        first, rest = out[:100], out[100:]
        print(f"{head}  {first}")
        while rest:
            print(" " * (len(head) + 2) + rest[:100])
            rest = rest[100:]

    # Checks: the good path gave the right answers, the bad pack was contained.
    ok = True
    problems = []
    for nid in ("1", "2", "3", "4", "5"):
        if result.nodes.get(nid) is None or result.nodes[nid].error is not None:
            problems.append(f"node {nid} failed: {result.nodes[nid].error}")
    if not problems:
        blurred = result.output("2")
        expect = float(blurred.double().mean())
        v_old, m_old = result.nodes["4"].outputs
        v_new, m_new = result.nodes["5"].outputs
        if not v_old.startswith("1.26"):
            problems.append(f"numpy_legacy saw numpy {v_old}, expected 1.26.x")
        if not v_new.startswith("2."):
            problems.append(f"numpy_modern saw numpy {v_new}, expected 2.x")
        for m in (m_old, m_new):
            if abs(m - expect) > 1e-4:
                problems.append(f"image mean {m} differs from the host's {expect}")
    secrets = result.nodes["6"].outputs[0] if result.nodes["6"].error is None else ""
    if "ALLOWED" in secrets or "hunter2" in secrets:
        problems.append("the misbehaving pack read a secret")
    net = result.nodes["7"].outputs[0] if result.nodes["7"].error is None else ""
    if "ALLOWED" in net:
        problems.append("the misbehaving pack reached the network")
    if result.nodes["8"].error is None:
        problems.append("the memory hog was not stopped")
    if result.nodes["9"].error is None:
        problems.append("the crash did not crash")
    print()
    if problems:
        ok = False
        for p in problems:
            print(f"FAIL: {p}")
    else:
        print(f"host alive (pid {os.getpid()}); good nodes correct; misbehaviour contained; "
              f"workflow took {result.seconds:.2f}s, {time.perf_counter() - t0:.2f}s with loading")
    await host.stop()
    return 0 if ok else 1


def main(argv: Any = None) -> None:
    here = os.getcwd()
    p = argparse.ArgumentParser(prog="nodecell-demo", description=__doc__)
    p.add_argument("--packs", default=os.path.join(here, "examples", "packs"))
    p.add_argument("--workflow", default=os.path.join(here, "examples", "workflow.json"))
    p.add_argument("--venv-root", default=os.environ.get("NODECELL_VENV_ROOT", "/var/cache/nodecell/venvs"))
    p.add_argument("--no-provision", action="store_true", help="skip the provisioning step (venvs exist)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="  [%(name)s] %(message)s")
    _ = shutil
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
