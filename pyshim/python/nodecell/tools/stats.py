"""The stats snapshot this host answers ``nodecell top`` with.

Only what the host alone knows: its cells, their workers, call counters and
latency histograms, walls, restarts, in-flight calls. ``nodecell top`` reads
CPU, RSS/PSS and cgroup memory from the kernel itself, so a snapshot is a
walk over a few Python objects (it runs on the tools server's thread and
never touches the event loops). The format is ``nodecell_tools::stats``'s.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from . import hooks

VERSION = 1


def _host_pid(worker: Any) -> Optional[int]:
    """The worker's pid as the host sees it (its pidfd's fdinfo), cached."""
    wt = getattr(worker, "tools", None)
    cached = getattr(wt, "host_pid", None) if wt is not None else None
    if cached:
        return cached
    fd = worker.pidfd
    if fd < 0 or worker.dead:
        return None
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    if pid <= 0:
                        return None
                    if wt is not None:
                        wt.host_pid = pid
                    return pid
    except (OSError, ValueError):
        return None
    return None


def _workers(cell: Any) -> List[Dict[str, Any]]:
    out = []
    for w in list(cell.workers.values()):
        wt = getattr(w, "tools", None)
        out.append({
            "wid": w.wid,
            "pid": _host_pid(w),
            "ns_pid": w.pid,
            "inflight": max(int(w.inflight), 0),
            "debugging": bool(wt is not None and wt.stopped),
        })
    return out


def _cell_row(name: str, cell: Any, ext: Any, state: str) -> Dict[str, Any]:
    row: Dict[str, Any] = {"pack": name, "state": state, "workers": [], "walls": []}
    if cell is not None:
        proc = cell.proc
        row["launcher_pid"] = proc.pid if proc is not None else None
        row["cgroup"] = cell.status.get("cgroup") or None
        row["walls"] = [
            {"name": str(w.get("name", "?")), "state": str(w.get("state", "?")), "detail": str(w.get("detail", ""))}
            for w in cell.status.get("walls", []) if isinstance(w, dict)
        ]
        row["workers"] = _workers(cell)
    if ext is not None:
        cfg = ext.config
        row["memory_limit"] = cfg.get("max_memory") or None
        row["timeout"] = cfg.get("timeout")
        row["restarts"] = ext.restarts
        row["last_crash"] = str(ext.last_crash) if ext.last_crash is not None else None
        st = getattr(ext, "_stats", None)
        if st is not None:
            row["calls"] = st.calls
            row["errors"] = st.errors
            row["latency"] = st.latency()
    return row


def _state(ext: Any) -> str:
    if ext._stopped:
        return "stopped"
    if not ext.config["isolated"]:
        return "local"
    if getattr(ext, "remote", False) is True:
        return "remote"  # on another Ray node: `nodecell top` there shows its processes
    cell = ext._cell
    if cell is None:
        return "not started"
    if cell.dead:
        return "crashed"
    if not any(w.alive for w in ext._workers):
        return "starting"
    return "running"


def snapshot() -> Dict[str, Any]:
    """This host's cells, as ``nodecell top`` reads them."""
    from . import profile

    cells = []
    for m in hooks.managers():
        for name, ext in list(m.extensions.items()):
            state = _state(ext)
            row = _cell_row(name, ext._cell if state != "remote" else None, ext, state)
            if state == "remote":
                row["walls"] = [{"name": str(w.get("name", "?")), "state": str(w.get("state", "?")),
                                 "detail": str(w.get("detail", ""))} for w in ext.walls]
            cells.append(row)
        for cell, _venv in list(m._warm.values()):
            cells.append(_cell_row(cell.name, cell, None, "crashed" if cell.dead else "warm"))
    return {
        "version": VERSION,
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "profile": profile.current_path(),
        "cells": cells,
    }
