"""Profiles of calls across the host and its cells, as Chrome-trace / Perfetto JSON.

Switch it on with ``NODECELL_PROFILE=trace.json`` in the host's environment
(written when the host's managers stop, or at exit), with
:func:`nodecell.tools.start_profile` / :func:`nodecell.tools.stop_profile`,
or from outside with ``nodecell profile --pid PID -o trace.json``. Off, it
costs the call path one module attribute check per call.

Every call is cut into phases, each a span in the trace:

* **queue** — host: from ``ext.method(...)`` to sending (picking or starting a worker)
* **encode** — host: encoding the arguments into the ring; worker: the reply
* **transfer** — between the processes: the frame waits in the ring and the
  peer wakes up to take it; both directions
* **execute** — worker: the method itself
* **decode** — turning a received frame into Python values (the channel times
  it while profiling: ``Channel.last_decode_ns``); the arguments in the
  worker, the reply in the host

Host spans sit on the host's process track, worker spans on one track per
worker (its host pid), joined by flow arrows; workflow nodes of a Studio run
(:func:`node`) are async spans, and :func:`summary` / :func:`summary_table`
add the phases up per node. Worker spans travel back over each cell's own
channel (the host drains them about once a second while profiling, and when
it writes the file); a worker that dies takes its last undrained second with it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import WORKER_TOOLS_ID, hooks

log = logging.getLogger("nodecell.profile")

#: Checked on the call path: whether a profile is being recorded.
ACTIVE = False

#: Seconds between drains of the workers' records while profiling.
DRAIN_EVERY = 1.0
#: Calls kept per profile (about 250 bytes each); later ones are counted, not kept.
MAX_CALLS = 1_000_000

#: The workflow node whose calls are being made: (node id, class type, pack, run id).
_node: contextvars.ContextVar[Optional[Tuple[str, str, Optional[str], int]]] = contextvars.ContextVar(
    "nodecell_profile_node", default=None)


class _Call:
    __slots__ = ("wkey", "call_id", "method", "pack", "node", "thread", "queued", "send", "sent",
                 "delivered", "host_decode", "end", "failed")


class _Profile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.t0 = time.monotonic_ns()
        self.lock = threading.Lock()
        self.calls: Dict[Tuple[str, int], _Call] = {}
        self.delivered: Dict[Tuple[int, int], Tuple[int, int]] = {}
        self.workers: Dict[str, Dict[str, Any]] = {}  # wkey -> pack, wid, pid
        self.records: Dict[str, List[tuple]] = {}  # wkey -> worker records
        self.nodes: List[Tuple[str, str, Optional[str], int, int, int]] = []  # ..., run, start, end
        self.runs = 0
        self.threads: Dict[int, str] = {}
        self.drainers: Dict[int, asyncio.Task] = {}
        self.stopped = False
        self.dropped = 0


_state: Optional[_Profile] = None
_lock = threading.Lock()


def current_path() -> Optional[str]:
    """Where the running profile will be written, or None when not profiling."""
    s = _state
    return s.path if s is not None and not s.stopped else None


def _wkey(w: Any) -> str:
    wt = w.tools
    if wt.profile_key is None:
        wt.profile_key = f"{w.cell.name}#{w.wid}@{id(w):x}"
    return wt.profile_key


# -- the host's call path ---------------------------------------------------------------------------

def delivered(w: Any, call_id: int, channel: Any) -> None:
    """Hook: the reply to ``call_id`` was decoded and is being handed to its caller."""
    s = _state
    if s is not None:
        s.delivered[(id(w), call_id)] = (time.monotonic_ns(), getattr(channel, "last_decode_ns", 0) or 0)


def host_call(ext: Any, w: Any, call_id: int, method: str, queued: int, send: int, sent: int,
              failed: bool) -> None:
    """Hook: a call finished (or failed); ``queued``/``send``/``sent`` are monotonic ns."""
    s = _state
    if s is None:
        return
    end = time.monotonic_ns()
    c = _Call()
    c.wkey = _wkey(w)
    c.call_id, c.method, c.pack = call_id, method, ext.name
    c.node = _node.get()
    c.thread = threading.get_ident()
    c.queued, c.send, c.sent, c.end, c.failed = queued or send, send, sent, end, failed
    c.delivered, c.host_decode = s.delivered.pop((id(w), call_id), (0, 0))
    with s.lock:
        if len(s.calls) >= MAX_CALLS:
            s.dropped += 1
            return
        s.calls[(c.wkey, call_id)] = c
        if c.thread not in s.threads:
            s.threads[c.thread] = threading.current_thread().name
        if c.wkey not in s.workers:
            s.workers[c.wkey] = {"pack": ext.name, "wid": w.wid, "pid": _host_pid(w)}


def _host_pid(w: Any) -> Optional[int]:
    from .stats import _host_pid as pid

    return pid(w)


def run_begin() -> Optional[int]:
    """A Studio workflow run starts: its id for :func:`node` and :func:`workflow_done` (None when
    not profiling)."""
    s = _state
    if not ACTIVE or s is None:
        return None
    with s.lock:
        s.runs += 1
        return s.runs


@contextlib.contextmanager
def node(node_id: str, class_type: str, pack: Optional[str], run: Optional[int]) -> Iterator[None]:
    """Mark the calls made inside as made for one node of workflow run ``run`` (a no-op when
    not profiling)."""
    if run is None or not ACTIVE:
        yield
        return
    token = _node.set((str(node_id), str(class_type), pack, run))
    start = time.monotonic_ns()
    try:
        yield
    finally:
        _node.reset(token)
        s = _state
        if s is not None:
            with s.lock:
                s.nodes.append((str(node_id), str(class_type), pack, run, start, time.monotonic_ns()))


# -- switching workers on, draining them ------------------------------------------------------------

async def _set_worker(ext: Any, w: Any, on: bool) -> None:
    if hasattr(w.channel, "set_profiling"):
        w.channel.set_profiling(on)  # the host's end: time decoding the worker's replies
    try:
        await ext._call_on(w, WORKER_TOOLS_ID, "profile", (on,), {}, internal=True, timeout=30)
    except Exception as e:  # noqa: BLE001 - a worker that is going away has nothing to record
        log.debug("profile: worker %s#%d not switched: %s", ext.name, w.wid, e)


async def _drain_worker(ext: Any, w: Any) -> None:
    s = _state
    if s is None or not w.alive or w.dead:
        return
    try:
        recs = await ext._call_on(w, WORKER_TOOLS_ID, "profile_drain", (), {}, internal=True, timeout=30)
    except Exception as e:  # noqa: BLE001
        log.debug("profile: worker %s#%d not drained: %s", ext.name, w.wid, e)
        return
    if recs:
        key = _wkey(w)
        with s.lock:
            s.records.setdefault(key, []).extend(recs)
            s.workers.setdefault(key, {"pack": ext.name, "wid": w.wid, "pid": _host_pid(w)})


def _workers_by_loop(exts: Optional[List[Any]] = None) -> Dict[asyncio.AbstractEventLoop, List[Tuple[Any, Any]]]:
    out: Dict[asyncio.AbstractEventLoop, List[Tuple[Any, Any]]] = {}
    for ext in hooks.extensions() if exts is None else exts:
        cell = ext._cell
        if not ext.config["isolated"] or cell is None or cell.loop.is_closed():
            continue
        for w in list(ext._workers):
            if w.alive:
                out.setdefault(cell.loop, []).append((ext, w))
    return out


async def _drain_pairs(pairs: List[Tuple[Any, Any]]) -> None:
    for ext, w in pairs:
        await _drain_worker(ext, w)


async def _drain_here(loop: asyncio.AbstractEventLoop) -> None:
    await _drain_pairs(_workers_by_loop().get(loop, []))


async def collect(exts: Optional[List[Any]] = None) -> None:
    """Bring the workers' records to the host now (every extension's, or ``exts``'), from any loop."""
    here = asyncio.get_running_loop()
    waits = []
    for loop, pairs in _workers_by_loop(exts).items():
        if loop is here:
            waits.append(asyncio.ensure_future(_drain_pairs(pairs)))
        elif loop.is_running():
            waits.append(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_drain_pairs(pairs), loop)))
    if waits:
        await asyncio.gather(*waits, return_exceptions=True)


async def _drainer(loop: asyncio.AbstractEventLoop) -> None:
    while ACTIVE:
        await asyncio.sleep(DRAIN_EVERY)
        if ACTIVE:
            await _drain_here(loop)


def _ensure_drainer(loop: asyncio.AbstractEventLoop) -> None:
    s = _state
    if s is None:
        return
    t = s.drainers.get(id(loop))
    if t is None or t.done():
        s.drainers[id(loop)] = loop.create_task(_drainer(loop))


async def worker_ready(ext: Any, worker: Any) -> None:
    """A worker finished init: turn its span recording on when profiling."""
    if ACTIVE:
        await _set_worker(ext, worker, True)
        _ensure_drainer(worker.cell.loop)


def _switch_all(on: bool) -> List[Any]:
    """Switch every live worker's recording (each on its cell's loop); the futures of the switches."""
    futs = []
    for loop, pairs in _workers_by_loop().items():
        async def switch(pairs: List[Tuple[Any, Any]] = pairs, loop: asyncio.AbstractEventLoop = loop) -> None:
            for ext, w in pairs:
                await _set_worker(ext, w, on)
            if on:
                _ensure_drainer(loop)
        if loop.is_running():
            futs.append(asyncio.run_coroutine_threadsafe(switch(), loop))
    return futs


# -- start / stop -------------------------------------------------------------------------------------

def _begin(path: str) -> List[Any]:
    global _state, ACTIVE
    path = os.path.abspath(path)
    with _lock:
        if _state is not None and not _state.stopped:
            raise RuntimeError(f"a profile is already being recorded (to {_state.path})")
        _state = _Profile(path)
        ACTIVE = True
    return _switch_all(True)


def start(path: str) -> None:
    """Start recording (every extension of this process); :func:`stop_sync` writes ``path``.

    From a thread that runs no cell's loop this returns once every worker records; inside
    a loop it cannot wait (await :func:`start_async` there to be sure the next call is
    recorded on the worker's side too)."""
    futs = _begin(path)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is None:
        for f in futs:
            try:
                f.result(30)
            except Exception:  # noqa: BLE001 - a worker that does not answer records nothing
                pass


async def start_async(path: str) -> None:
    """:func:`start`, returning once every worker records."""
    futs = _begin(path)
    if futs:
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futs), return_exceptions=True)


async def stop_async() -> Optional[str]:
    """Stop recording, bring the workers' records in and write the trace; returns its path."""
    global ACTIVE
    s = _state
    if s is None or s.stopped:
        return None
    await collect()
    ACTIVE = False
    s.stopped = True
    _switch_all(False)
    for t in list(s.drainers.values()):
        t.cancel()
    return write(s)


def stop_sync(timeout: float = 60) -> Optional[str]:
    """:func:`stop_async` from a thread that runs no event loop of a cell."""
    loops = list(_workers_by_loop())
    running = [lp for lp in loops if lp.is_running()]
    if running:
        return asyncio.run_coroutine_threadsafe(stop_async(), running[0]).result(timeout)
    return asyncio.run(stop_async())


def _at_exit() -> None:
    """``NODECELL_PROFILE``: write what was recorded when the process ends."""
    global ACTIVE
    s = _state
    if s is not None and not s.stopped:
        ACTIVE = False
        s.stopped = True
        try:
            write(s)
            sys.stderr.write(f"nodecell: profile written to {s.path}\n")
        except OSError as e:
            sys.stderr.write(f"nodecell: profile not written: {s.path}: {e}\n")


atexit.register(_at_exit)


def start_from_env() -> None:
    """Start the profile ``NODECELL_PROFILE`` asks for (once per process)."""
    path = os.environ.get("NODECELL_PROFILE")
    if path and _state is None:
        start(path)


async def manager_stopping(exts: List[Any]) -> None:
    """A manager stops ``exts``: bring their records in first."""
    if ACTIVE:
        await collect(exts)


def handle_request(conn: Any, msg: Dict[str, Any]) -> None:
    """``{"op": "profile", "action": "start", "path": P}`` / ``{"action": "stop"}`` on the tools socket."""
    action = msg.get("action")
    if action == "start":
        path = msg.get("path")
        if not isinstance(path, str) or not path:
            conn.send({"error": "profile start needs a path"})
            return
        try:
            start(path)
        except RuntimeError as e:
            conn.send({"error": str(e)})
            return
        conn.send({"ok": True, "path": os.path.abspath(path)})
    elif action == "stop":
        if not ACTIVE:
            conn.send({"error": "no profile is being recorded"})
            return

        def run() -> None:
            try:
                path = stop_sync()
                rows = _last_summary
                conn.send({"ok": True, "path": path, "summary": rows,
                           "table": summary_table(rows) if rows else ""})
            except Exception as e:  # noqa: BLE001
                conn.send({"error": f"{type(e).__name__}: {e}"})

        threading.Thread(target=run, name="nodecell-profile-stop", daemon=True).start()
    else:
        conn.send({"error": "profile action must be 'start' or 'stop'"})


# -- the trace --------------------------------------------------------------------------------------

_last_summary: List[Dict[str, Any]] = []


def _reply_sent(c: _Call, rec: tuple) -> int:
    """When the worker's reply was in the ring: its own stamp, or (when the worker was
    preempted before stamping) the moment the host had already started decoding it."""
    sent = rec[6]
    if c.delivered:
        sent = min(sent, c.delivered - c.host_decode)
    return max(sent, rec[5])


def _phases(c: _Call, rec: Optional[tuple]) -> Dict[str, int]:
    """Nanoseconds per phase of one call (worker record ``rec`` when it came back)."""
    p = {"queue": max(c.send - c.queued, 0), "encode": max(c.sent - c.send, 0), "transfer": 0,
         "execute": 0, "decode": 0, "total": max(c.end - c.queued, 0)}
    if rec is not None:
        _cid, _m, _t, run, wdecode, reply, _sent = rec
        sent = _reply_sent(c, rec)
        p["execute"] = max(reply - run, 0)
        p["encode"] += max(sent - reply, 0)
        p["decode"] += wdecode
        p["transfer"] += max(run - wdecode - c.sent, 0)
        if c.delivered:
            p["decode"] += c.host_decode
            p["transfer"] += max(c.delivered - c.host_decode - sent, 0)
    return p


def _matched(s: _Profile) -> List[Tuple[_Call, Optional[tuple]]]:
    by_key: Dict[Tuple[str, int], tuple] = {}
    for wkey, recs in s.records.items():
        for r in recs:
            by_key[(wkey, r[0])] = r
    return [(c, by_key.get(k)) for k, c in s.calls.items()]


def summary(s: Optional[_Profile] = None, run: Optional[int] = None) -> List[Dict[str, Any]]:
    """Per workflow node (of run ``run``, or of every run): calls and milliseconds per phase."""
    s = s or _state
    if s is None:
        return []
    with s.lock:
        pairs = _matched(s)
        nodes = [n for n in s.nodes if run is None or n[3] == run]
    per: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for nid, ct, pack, _run, t0, t1 in nodes:
        row = per.setdefault((nid, ct), {"node": nid, "class_type": ct, "pack": pack or "(host)", "runs": 0,
                                         "wall_ms": 0.0, "calls": 0, "queue_ms": 0.0, "encode_ms": 0.0,
                                         "transfer_ms": 0.0, "execute_ms": 0.0, "decode_ms": 0.0})
        row["runs"] += 1
        row["wall_ms"] += (t1 - t0) / 1e6
    for c, rec in pairs:
        if c.node is None or (run is not None and c.node[3] != run):
            continue
        row = per.get((c.node[0], c.node[1]))
        if row is None:
            continue
        row["calls"] += 1
        for k, v in _phases(c, rec).items():
            if k != "total":
                row[f"{k}_ms"] += v / 1e6
    out = list(per.values())
    for r in out:
        for k in list(r):
            if k.endswith("_ms"):
                r[k] = round(r[k], 3)
    return out


def summary_table(rows: List[Dict[str, Any]]) -> str:
    """The per-node summary as aligned text."""
    head = ["node", "class_type", "pack", "calls", "wall ms", "queue", "encode", "transfer", "execute",
            "decode", "overhead"]
    lines = [head]
    for r in rows:
        over = r["wall_ms"] - r["execute_ms"] if r["calls"] else 0.0
        lines.append([r["node"], r["class_type"], r["pack"], str(r["calls"]), f"{r['wall_ms']:.2f}",
                      f"{r['queue_ms']:.2f}", f"{r['encode_ms']:.2f}", f"{r['transfer_ms']:.2f}",
                      f"{r['execute_ms']:.2f}", f"{r['decode_ms']:.2f}", f"{over:.2f}" if r["calls"] else "-"])
    width = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in lines) + "\n"


def trace_events(s: _Profile) -> List[Dict[str, Any]]:
    """The Chrome trace events of a profile."""
    host_pid = os.getpid()
    us = lambda t: round((t - s.t0) / 1000.0, 3)  # noqa: E731 - microseconds since the start
    ev: List[Dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": host_pid, "tid": 0, "args": {"name": f"host {host_pid}"}},
        {"ph": "M", "name": "process_sort_index", "pid": host_pid, "tid": 0, "args": {"sort_index": 0}},
    ]
    with s.lock:
        pairs = _matched(s)
        workers = dict(s.workers)
        threads = dict(s.threads)
        nodes = list(s.nodes)
        records = {k: list(v) for k, v in s.records.items()}
    tids: Dict[int, int] = {}
    for ident, name in threads.items():
        tids[ident] = len(tids) + 1
        ev.append({"ph": "M", "name": "thread_name", "pid": host_pid, "tid": tids[ident], "args": {"name": name}})
    wpid: Dict[str, int] = {}
    wtid: Dict[Tuple[str, str], int] = {}
    for i, (key, info) in enumerate(sorted(workers.items()), 1):
        pid = info.get("pid") or (1 << 22) + i  # a synthetic id when the host pid is unknown
        wpid[key] = pid
        ev.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                   "args": {"name": f"pack {info['pack']} worker #{info['wid']}"}})
        ev.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": i}})
    for key, recs in records.items():
        for r in recs:
            if (key, r[2]) not in wtid:
                wtid[(key, r[2])] = len([k for k in wtid if k[0] == key]) + 1
                ev.append({"ph": "M", "name": "thread_name", "pid": wpid.get(key, 0), "tid": wtid[(key, r[2])],
                           "args": {"name": r[2]}})
    flow = 0
    for c, rec in pairs:
        tid = tids.get(c.thread, 0)
        args = {"pack": c.pack, "worker": c.wkey.split("@")[0], "call_id": c.call_id}
        if c.node is not None:
            args["node"] = c.node[0]
            args["class_type"] = c.node[1]
        if c.failed:
            args["failed"] = True
        ev.append({"ph": "X", "cat": "call", "name": c.method, "pid": host_pid, "tid": tid,
                   "ts": us(c.queued), "dur": round((c.end - c.queued) / 1000.0, 3), "args": args})

        def span(name: str, a: int, b: int, pid: int = host_pid, t: int = tid, cat: str = "phase") -> None:
            if b > a:
                ev.append({"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": t, "ts": us(a),
                           "dur": round((b - a) / 1000.0, 3)})

        span("queue", c.queued, c.send)
        span("encode", c.send, c.sent)
        if c.delivered:
            span("wait", c.sent, c.delivered - c.host_decode)
            span("decode", c.delivered - c.host_decode, c.delivered)
            span("resume", c.delivered, c.end)
        else:
            span("wait", c.sent, c.end)
        if rec is None:
            continue
        _cid, method, thread, run, wdecode, reply, _sent = rec
        sent = _reply_sent(c, rec)
        pid = wpid.get(c.wkey, 0)
        t = wtid.get((c.wkey, thread), 1)
        ev.append({"ph": "X", "cat": "worker", "name": method, "pid": pid, "tid": t, "ts": us(run - wdecode),
                   "dur": round((sent - run + wdecode) / 1000.0, 3), "args": args})
        span("decode", run - wdecode, run, pid, t)
        span("execute", run, reply, pid, t)
        span("encode", reply, sent, pid, t)
        flow += 1
        ev.append({"ph": "s", "cat": "transfer", "name": "call", "id": flow, "pid": host_pid, "tid": tid,
                   "ts": us(c.sent)})
        ev.append({"ph": "f", "bp": "e", "cat": "transfer", "name": "call", "id": flow, "pid": pid, "tid": t,
                   "ts": us(run - wdecode)})
        if c.delivered:
            flow += 1
            ev.append({"ph": "s", "cat": "transfer", "name": "reply", "id": flow, "pid": pid, "tid": t,
                       "ts": us(sent)})
            ev.append({"ph": "f", "bp": "e", "cat": "transfer", "name": "reply", "id": flow, "pid": host_pid,
                       "tid": tid, "ts": us(c.delivered - c.host_decode)})
    for i, (nid, ct, pack, run, t0, t1) in enumerate(nodes, 1):
        common = {"cat": "node", "name": f"{ct} #{nid}", "id": f"node-{i}", "pid": host_pid, "tid": 0}
        ev.append(dict(common, ph="b", ts=us(t0), args={"node": nid, "class_type": ct, "pack": pack, "run": run}))
        ev.append(dict(common, ph="e", ts=us(t1)))
    return ev


def write(s: _Profile) -> str:
    """Write the trace file (atomically); returns its path."""
    global _last_summary
    _last_summary = summary(s)
    doc = {
        "traceEvents": trace_events(s),
        "displayTimeUnit": "ms",
        "otherData": {"generator": "nodecell", "host_pid": os.getpid(), "clock": "CLOCK_MONOTONIC",
                      "start_monotonic_ns": s.t0, "node_summary": _last_summary,
                      "calls": len(s.calls), "calls_not_kept": s.dropped},
    }
    tmp = f"{s.path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(s.path) or ".", exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, s.path)
    return s.path


async def workflow_done(run: Optional[int]) -> Optional[List[Dict[str, Any]]]:
    """End of Studio workflow run ``run``: bring the workers' records in and return its
    per-node summary (also printed to stderr) when profiling; None otherwise."""
    if run is None or not ACTIVE:
        return None
    await collect()
    rows = summary(run=run)
    if rows:
        sys.stderr.write(f"nodecell profile of workflow run {run}, per node (ms):\n" + summary_table(rows))
    return rows
