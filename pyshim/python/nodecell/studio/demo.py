"""The nodecell demo: a Studio-style workflow across four isolated node packs.

    python -m nodecell.studio.demo [--packs examples/packs] [--workflow examples/workflow.json] [--ray]

Provisions the packs' venvs (progress shown), loads each pack into its own
cell, runs the workflow and prints one row per node: its pack, the numpy/torch
it saw, its time, the walls around it and what happened; for the misbehaving
pack, what each attempt met. A pack whose worker died is given a fresh worker
and its nodes that did not run are run again ("run 2"). The outputs of the
well-behaved nodes are checked against the same nodes run in the host without
isolation. Exits 0 when the host survived, the outputs are right and every
misbehaviour was contained; 1 otherwise. With ``--ray`` the packs are spread
over a local Ray cluster of several raylets (``nodecell[ray]``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import is_shared
from ..errors import NodecellError
from . import StudioHost, WorkflowResult, run_workflow

_BAR = 24
_STAGES = {"waiting": (0.05, "waiting for another build"), "resolving": (0.15, "resolving"),
           "downloading": (0.4, "downloading"), "download": (0.5, "downloading"),
           "installing": (0.8, "installing"), "done": (1.0, "ready"), "failed": (1.0, "FAILED")}


def _default_venv_root() -> str:
    env = os.environ.get("NODECELL_VENV_ROOT")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/cache/nodecell/venvs"
    return os.path.join(os.path.expanduser("~"), ".cache", "nodecell", "venvs")


class _Progress:
    """One progress bar per pack, redrawn in place on a terminal, one line per stage otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last: Dict[str, str] = {}
        self.downloads: Dict[str, List[str]] = {}

    def __call__(self, ev: Dict[str, Any]) -> None:
        pack, kind = str(ev.get("pack", "?")), str(ev.get("event", "?"))
        frac, label = _STAGES.get(kind, (0.0, kind))
        if kind == "download":
            self.downloads.setdefault(pack, []).append(f"{ev.get('package')} {ev.get('size') or ''}".strip())
            label = f"downloading {', '.join(self.downloads[pack][-2:])}"
        elif kind == "done":
            secs = (ev.get("resolve_ms", 0) + ev.get("download_ms", 0) + ev.get("install_ms", 0)) / 1000
            label = ("cached venv" if ev.get("cache_hit") else
                     f"built: {ev.get('installed', 0)} package(s) installed in {secs:.1f}s")
            label += f" ({ev.get('packages', 0)} in venv)"
        elif kind == "failed":
            label = f"FAILED: {str(ev.get('message', ''))[:200]}"
        elif kind == "resolving":
            label = f"resolving {ev.get('requirements', 0)} requirement(s)"
        filled = int(frac * _BAR)
        line = f"   {pack:<14} [{'#' * filled}{'.' * (_BAR - filled)}] {label}"
        if self.tty:
            end = "\n" if kind in ("done", "failed") else ""
            sys.stdout.write("\r\033[K" + line + end)
            sys.stdout.flush()
        elif self.last.get(pack) != label:
            print(line, flush=True)
        self.last[pack] = label


def _serve_loopback() -> Tuple[socket.socket, int]:
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
            try:
                c.sendall(b"host-only-service\n")
            finally:
                c.close()

    threading.Thread(target=loop, daemon=True).start()
    return srv, srv.getsockname()[1]


def _host_can_reach(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(64).startswith(b"host-only")
    except OSError:
        return False


def _fmt_versions(v: Dict[str, str]) -> str:
    parts = []
    if "numpy" in v:
        parts.append(f"numpy {v['numpy']}")
    if "torch" in v:
        parts.append(f"torch {v['torch'].split('+')[0]}")
    if not parts and "python" in v:
        parts.append(f"python {v['python']}")
    return ", ".join(parts) or "-"


def _short(s: Any, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _rss_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


def _describe_outputs(outs: Tuple[Any, ...]) -> List[str]:
    lines: List[str] = []
    for o in outs:
        if hasattr(o, "shape") and hasattr(o, "dtype"):
            lines.append(f"{type(o).__name__}{tuple(o.shape)} {str(o.dtype).replace('torch.', '')}"
                         f"{' (shared arena)' if is_shared(o) else ''}")
        elif isinstance(o, str):
            lines.extend(o.splitlines() or [""])
        elif isinstance(o, float):
            lines.append(f"{o:.6f}")
        else:
            lines.append(_short(repr(o), 90))
    return lines


async def _reference_outputs(packs: Dict[str, str], graph: Dict[str, Any], node_ids: List[str]) -> WorkflowResult:
    """The same nodes, run in this process without isolation (the packs imported here)."""
    host = StudioHost()
    mappings: Dict[str, Any] = {}
    for name in ("torch_filters", "numpy_modern", "numpy_legacy"):
        if name in packs:
            await host.load_custom_node(packs[name], mappings, isolated=False)
    sub = {nid: graph[nid] for nid in node_ids if graph[nid]["class_type"] in mappings}
    return await run_workflow(sub, mappings)


def _table(rows: List[Tuple[str, ...]], headers: Tuple[str, ...]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    term = shutil.get_terminal_size((160, 24)).columns
    width = max(60, min(90, term - sum(widths) - 2 * len(widths)))
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)) + "  " + headers[-1])
    print("  ".join("-" * w for w in widths) + "  " + "-" * width)
    for r in rows:
        head = "  ".join(c.ljust(w) for c, w in zip(r, widths))
        pad = " " * (len(head) + 2)
        lines: List[str] = []
        for ln in r[-1].split("\n"):
            lines.extend(textwrap.wrap(ln, width, subsequent_indent="  ", break_on_hyphens=False) or [""])
        print(f"{head}  {lines[0]}")
        for ln in lines[1:]:
            print(pad + ln)


async def main_async(args: argparse.Namespace) -> int:
    t_demo = time.perf_counter()
    packs_dir = os.path.abspath(args.packs)
    pack_dirs = sorted(os.path.join(packs_dir, d) for d in os.listdir(packs_dir)
                       if os.path.isfile(os.path.join(packs_dir, d, "manifest.yaml")))
    packs = {os.path.basename(p): p for p in pack_dirs}
    venv_root = os.path.abspath(args.venv_root)
    os.makedirs(venv_root, mode=0o755, exist_ok=True)
    with open(args.workflow) as f:
        graph = json.load(f)

    print("nodecell demo: a Studio-style workflow, every custom-node pack in its own cell")
    try:  # a Studio host has torch loaded before any node runs; so does the demo
        import numpy
        import torch

        print(f"host: python {sys.version.split()[0]}, torch {torch.__version__.split('+')[0]}, "
              f"numpy {numpy.__version__}, pid {os.getpid()}")
    except ImportError as e:
        print(f"host: python {sys.version.split()[0]} ({e.name} is not installed here)")
    cluster = None
    if args.ray:
        from ..ray.local_cluster import LocalCluster

        t = time.perf_counter()
        cluster = LocalCluster(workers=args.ray_nodes)
        print(f"Ray: a local cluster, a head and {args.ray_nodes} raylets, up in {time.perf_counter() - t:.1f}s; "
              "the packs are spread over the raylets")
        host = StudioHost(venv_root, backend="ray", placement=cluster.spread(packs))
    else:
        host = StudioHost(venv_root)

    print("\n[1/5] what this machine can enforce (nodecell check)")
    try:
        chk = host.check()
        rows = chk.get("sandbox", []) + chk.get("ipc", [])
        walls = [r for r in rows if r.get("default_wall")]
        missing = [r["name"] for r in walls if not r.get("available")]
        print(f"   {len(walls) - len(missing)}/{len(walls)} walls of the default policy available"
              + (f"; missing: {', '.join(missing)}" if missing else "")
              + f"; {next((r['detail'] for r in rows if r['name'] == 'running as'), '')}")
        for name in ("landlock", "cgroup", "ipc: io_uring futex ops"):
            r = next((r for r in rows if r["name"] == name), None)
            if r is not None:
                print(f"   {name}: {r['detail']}")
    except NodecellError as e:
        print(f"   nodecell check failed: {e}")

    print(f"\n[2/5] provisioning {len(pack_dirs)} packs' venvs under {venv_root}")
    t = time.perf_counter()
    await host.provision(pack_dirs, on_event=_Progress())
    print(f"   all venvs ready in {time.perf_counter() - t:.1f}s")

    # A secret in the host's environment, a world-readable host file, a host-only service:
    # the misbehaving pack tries all three.
    os.environ["NODECELL_DEMO_SECRET"] = "hunter2-do-not-leak"
    decoy_dir = tempfile.mkdtemp(prefix="nodecell-demo-", dir="/var/tmp")
    os.chmod(decoy_dir, 0o755)
    decoy = os.path.join(decoy_dir, "host-notes.txt")
    with open(decoy, "w") as f:
        f.write("a world-readable host file no pack was given\n")
    os.chmod(decoy, 0o644)
    srv, port = _serve_loopback()
    home = os.path.expanduser("~")
    for node in graph.values():
        if node["class_type"] == "OpenSocket":
            node["inputs"]["host_port"] = port
        if node["class_type"] == "ReadSecrets":
            node["inputs"].update(home=home, host_file=decoy)

    try:
        print("\n[3/5] loading the packs into cells")
        mappings: Dict[str, Any] = {}
        display: Dict[str, str] = {}
        for name, p in packs.items():
            t = time.perf_counter()
            names = await host.load_custom_node(p, mappings, display)
            ext = host.packs[name]
            active = sum(1 for w in ext.walls if w.get("state") == "active")
            lim = []
            if ext.config["max_memory"]:
                lim.append(f"memory {ext.config['max_memory'] / 1e6:g} MB")
            if ext.config["timeout"]:
                lim.append(f"timeout {ext.config['timeout']:g}s")
            lim.append("network" if ext.config["sandbox"]["network"] else "no network")
            if cluster is not None:
                lim.append(f"on {cluster.node_name(getattr(ext, 'placement', {}).get('node_id'))}")
            print(f"   {name:<14} {time.perf_counter() - t:5.2f}s  {active} walls active, {', '.join(lim)}; "
                  f"nodes: {', '.join(names)}")

        print(f"\n[4/5] running the workflow ({len(graph)} nodes)")
        run1 = await run_workflow(graph, mappings)
        print(f"   run 1: {len(run1.order)}/{len(graph)} nodes succeeded in {run1.seconds:.2f}s"
              + (f"; worker died in pack(s): {', '.join(run1.crashed)}" if run1.crashed else ""))
        runs = {nid: 1 for nid in graph}
        records = dict(run1.nodes)
        again = [nid for nid, r in run1.nodes.items() if r.error is not None and r.error.exception_type == "PackCrashed"]
        if again:
            run2 = await run_workflow({nid: graph[nid] for nid in again}, mappings, cached=run1)
            for nid in again:
                records[nid] = run2.nodes[nid]
                runs[nid] = 2
            print(f"   run 2: re-ran the {len(again)} node(s) that run 1 skipped because their pack's worker "
                  f"had died, on a fresh worker: {len(run2.order)} succeeded, in {run2.seconds:.2f}s")

        versions: Dict[str, Dict[str, str]] = {}
        walls: Dict[str, str] = {}
        for name, ext in host.packs.items():
            try:
                versions[name] = await ext.versions_seen()
            except NodecellError:
                versions[name] = {}
            active = [w["name"] for w in ext.walls if w.get("state") == "active"]
            missing = [w["name"] for w in ext.walls if w.get("state") == "missing"]
            walls[name] = f"{len(active)} active" + (f", MISSING {','.join(missing)}" if missing else "")

        print("\n[5/5] results")
        rows = []
        for nid in sorted(graph, key=lambda x: (0, int(x)) if x.isdigit() else (1, x)):
            rec = records[nid]
            pack = rec.pack or "host"
            if rec.error is not None:
                outcome = "ERROR: " + _short(rec.error.message, 200)
            else:
                outcome = "\n".join(_describe_outputs(rec.outputs or ()))
            rows.append((nid, rec.class_type, pack, str(runs[nid]), _fmt_versions(versions.get(pack, {})),
                         f"{rec.seconds * 1000:.0f} ms" if rec.started is not None else "-",
                         walls.get(pack, "-"), outcome))
        print()
        _table(rows, ("id", "node", "pack", "run", "sees", "time", "walls", "outcome"))

        # -- checks ----------------------------------------------------------------------
        checks: List[Tuple[bool, str]] = []

        def ok(rec_id: str) -> bool:
            r = records.get(rec_id)
            return r is not None and r.error is None

        by_type = {graph[n]["class_type"]: n for n in graph}
        good = [n for n in graph if records[n].pack != "misbehaving"]
        checks.append((all(ok(n) for n in good),
                       f"all {len(good)} well-behaved nodes succeeded while the misbehaving pack failed"))
        ref = await _reference_outputs(packs, graph, good)
        diffs = []
        for nid, rr in ref.nodes.items():
            if rr.error is not None or not ok(nid):
                diffs.append(f"{nid}: {rr.error or records[nid].error}")
                continue
            for a, b in zip(records[nid].outputs or (), rr.outputs or ()):
                if hasattr(a, "shape"):
                    import torch

                    if not torch.equal(torch.as_tensor(a), torch.as_tensor(b)):
                        diffs.append(f"{nid}: tensors differ")
                elif isinstance(a, float):
                    if abs(a - b) > 1e-6 * max(1.0, abs(b)):
                        diffs.append(f"{nid}: {a} != {b}")
                elif graph[nid]["class_type"] in ("ImageStatsLegacy", "ImageStatsModern", "TorchInfo"):
                    pass  # version strings: the point is that they differ from the host's
                elif a != b:
                    diffs.append(f"{nid}: {a!r} != {b!r}")
        checks.append((not diffs and len(ref.nodes) > 0,
                       f"outputs equal to the same {len(ref.nodes)} nodes run in the host without isolation"
                       + (f" ({'; '.join(diffs)})" if diffs else "")))
        if "ImageStatsLegacy" in by_type and "ImageStatsModern" in by_type:
            vl = records[by_type["ImageStatsLegacy"]].outputs
            vm = records[by_type["ImageStatsModern"]].outputs
            good_np = bool(vl and vm and str(vl[0]).startswith("1.26") and str(vm[0]).startswith("2."))
            checks.append((good_np, f"two numpy versions side by side: {vl[0] if vl else '?'} and "
                                    f"{vm[0] if vm else '?'}"))
        if "GaussianBlur" in by_type and ok(by_type["GaussianBlur"]):
            img = records[by_type["GaussianBlur"]].outputs[0]
            if cluster is None:
                checks.append((is_shared(img), "the IMAGE crossed packs zero-copy (it lives in a shared, sealed arena)"))
            else:
                from ..ray import in_object_store

                checks.append((in_object_store(img), "the IMAGE crossed nodes through Ray's object store "
                                                     "(mapped on arrival, not copied)"))
        if "ReadSecrets" in by_type:
            r = records[by_type["ReadSecrets"]]
            text = r.outputs[0] if r.error is None and r.outputs else ""
            lines = text.splitlines()
            blocked = [ln for ln in lines if "blocked (" in ln]
            leaked = "ALLOWED" in text or "hunter2" in text or "world-readable host file" in text
            checks.append((bool(lines) and len(blocked) == len(lines) and not leaked,
                           f"secrets unreadable: {len(blocked)}/{len(lines)} attempts blocked "
                           f"(~/.ssh, /etc/shadow, a world-readable host file, the host's env)"))
        if "OpenSocket" in by_type:
            r = records[by_type["OpenSocket"]]
            text = r.outputs[0] if r.error is None and r.outputs else ""
            host_ok = _host_can_reach(port)
            checks.append((bool(text) and "ALLOWED" not in text and host_ok,
                           f"network unreachable from the pack (the host itself reaches its 127.0.0.1:{port}: "
                           f"{'yes' if host_ok else 'no'})"))
        if "LeakMemory" in by_type:
            r = records[by_type["LeakMemory"]]
            cause = getattr(r.error, "cause", None)
            checks.append((r.error is not None and getattr(cause, "reason", None) == "memory",
                           f"memory hog stopped by its limit: {_short(r.error.message, 90) if r.error else 'NOT stopped'}"))
        if "Crash" in by_type:
            r = records[by_type["Crash"]]
            cause = getattr(r.error, "cause", None)
            checks.append((r.error is not None and getattr(cause, "signal", None) == signal.SIGSEGV,
                           f"crash contained: {_short(r.error.message, 90) if r.error else 'did NOT crash'}"))
        if "misbehaving" in host.packs:
            try:
                after = await host.packs["misbehaving"].versions_seen()
                checks.append((bool(after), "the misbehaving pack answers again after its crashes (fresh worker)"))
            except NodecellError as e:
                checks.append((False, f"the misbehaving pack did not come back: {e}"))
        checks.append((True, f"host alive: pid {os.getpid()}, RSS {_rss_mb()} MiB"))

        print()
        for good_, text in checks:
            print(f"   {'ok  ' if good_ else 'FAIL'}  {text}")
        passed = all(g for g, _ in checks)
        print(f"\n{'PASS' if passed else 'FAIL'}: demo finished in {time.perf_counter() - t_demo:.1f}s "
              f"(workflow {run1.seconds:.2f}s)")
        return 0 if passed else 1
    finally:
        srv.close()
        shutil.rmtree(decoy_dir, ignore_errors=True)
        await host.stop()
        if cluster is not None:
            cluster.shutdown()


def main(argv: Optional[List[str]] = None) -> None:
    here = os.getcwd()
    p = argparse.ArgumentParser(prog="python -m nodecell.studio.demo",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--packs", default=os.path.join(here, "examples", "packs"), help="folder of node packs")
    p.add_argument("--workflow", default=os.path.join(here, "examples", "workflow.json"),
                   help="API-format workflow JSON")
    p.add_argument("--venv-root", default=_default_venv_root(),
                   help="venv cache (default: $NODECELL_VENV_ROOT, /var/cache/nodecell/venvs as root, "
                        "else ~/.cache/nodecell/venvs)")
    p.add_argument("--ray", action="store_true",
                   help="spread the packs over a local Ray cluster of several raylets (nodecell[ray])")
    p.add_argument("--ray-nodes", type=int, default=2, help="worker raylets for --ray (default 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the packs' log output")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="  [%(name)s] %(message)s")
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
