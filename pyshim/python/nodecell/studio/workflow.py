"""A small runner for API-format workflows.

    {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0]}}, ...}

An input that is a two-element list ``[node_id, output_index]`` is a link to
another node's output. Nodes run in dependency order, each as soon as its
inputs are ready, so independent nodes of different isolated packs run in
parallel (each pack's workers are separate processes). Within one pack at most
``workers`` nodes run at a time (one, by default, as in Studio's own executor),
in workflow order; nodes imported into the host run one at a time on a host
thread, so they do not stall the event loop.

Failures never raise out of :func:`run_workflow`: a failing node gets a
:class:`NodeExecutionError` (with the remote traceback when it failed in a
worker), its dependents are not run, and a pack whose worker died (crash,
memory limit, timeout) has its remaining nodes in this run marked failed; the
pack gets a fresh worker on its next call, e.g. in the next run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import time
import traceback as _traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from ..errors import CallTimeout, RemoteError, WorkerCrashed
from ..tools import profile as _profile

__all__ = ["run_workflow", "WorkflowResult", "NodeExecutionError", "NodeRecord"]

_HOST_LANE = "<host>"


class NodeExecutionError(Exception):
    """A node failed; like the host's own node errors, with the remote traceback when there is one.

    ``not_run`` is true when the node never started (an input node failed, or
    its pack crashed earlier in the run).
    """

    def __init__(self, node_id: str, class_type: str, message: str, *, pack: Optional[str] = None,
                 exception_type: str = "", traceback: str = "", cause: Optional[BaseException] = None,
                 not_run: bool = False) -> None:
        super().__init__(f"node {node_id} ({class_type}): {message}")
        self.node_id = node_id
        self.class_type = class_type
        self.pack = pack
        self.message = message
        self.exception_type = exception_type
        self.traceback = traceback
        self.cause = cause
        self.not_run = not_run

    def as_dict(self) -> Dict[str, Any]:
        """The shape of a Studio/ComfyUI ``execution_error`` message."""
        return {"node_id": self.node_id, "node_type": self.class_type, "exception_message": self.message,
                "exception_type": self.exception_type, "traceback": self.traceback.splitlines(),
                "pack": self.pack}


@dataclass
class NodeRecord:
    """What happened to one node (times in seconds since the run started)."""

    node_id: str
    class_type: str
    pack: Optional[str]
    outputs: Optional[Tuple[Any, ...]] = None
    ui: Any = None
    error: Optional[NodeExecutionError] = None
    seconds: float = 0.0
    started: Optional[float] = None
    finished: Optional[float] = None


@dataclass
class WorkflowResult:
    """Outputs, errors and timings of one run."""

    nodes: Dict[str, NodeRecord] = field(default_factory=dict)
    #: Node ids in the order they finished successfully.
    order: List[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Packs whose worker died during the run, with the error.
    crashed: Dict[str, BaseException] = field(default_factory=dict)
    #: Per-node phases of the run's calls when a profile was being recorded
    #: (``nodecell.tools.profile.summary``), else None.
    profile: Optional[List[Dict[str, Any]]] = None

    @property
    def ok(self) -> bool:
        """Whether every node succeeded."""
        return all(r.error is None for r in self.nodes.values())

    @property
    def errors(self) -> Dict[str, NodeExecutionError]:
        """The failed nodes' errors by node id."""
        return {k: r.error for k, r in self.nodes.items() if r.error is not None}

    def output(self, node_id: str, index: int = 0) -> Any:
        """Output ``index`` of a node; raises the node's error if it failed."""
        rec = self.nodes[node_id]
        if rec.error is not None:
            raise rec.error
        assert rec.outputs is not None
        return rec.outputs[index]


def _is_link(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int) \
        and not isinstance(v[1], bool)


def _validate(graph: Dict[str, Any], mappings: Dict[str, Any], cached: Optional[WorkflowResult]) -> Dict[str, Set[str]]:
    if not isinstance(graph, dict):
        raise ValueError("workflow: expected an object of node id -> node")
    deps: Dict[str, Set[str]] = {}
    for nid, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise ValueError(f"workflow: node {nid!r} needs a class_type")
        ct = node["class_type"]
        if ct not in mappings:
            raise ValueError(f"workflow: node {nid!r}: unknown class_type {ct!r}")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise ValueError(f"workflow: node {nid!r}: inputs must be an object")
        d = set()
        for name, v in inputs.items():
            if _is_link(v):
                if v[0] in graph:
                    d.add(v[0])
                elif cached is None or v[0] not in cached.nodes:
                    raise ValueError(f"workflow: node {nid!r} input {name!r} links to missing node {v[0]!r}")
        deps[nid] = d
    seen: Dict[str, int] = {}

    def visit(n: str, stack: List[str]) -> None:
        if seen.get(n) == 1:
            raise ValueError(f"workflow: cycle through {' -> '.join(stack + [n])}")
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for m in sorted(deps[n]):
            visit(m, stack + [n])
        seen[n] = 2

    for n in deps:
        visit(n, [])
    return deps


def _normalize(out: Any) -> Tuple[Tuple[Any, ...], Any]:
    """(outputs, ui) of what a node returned: a tuple, a ``{"ui", "result"}`` dict or a v3 NodeOutput."""
    if out is None:
        return (), None
    if isinstance(out, dict) and ("result" in out or "ui" in out):
        res = out.get("result") or ()
        return tuple(res), out.get("ui")
    if isinstance(out, (tuple, list)):
        return tuple(out), None
    args = getattr(out, "args", None)
    if isinstance(args, (tuple, list)):  # a v3 NodeOutput
        return tuple(args), getattr(out, "ui", None)
    return (out,), None


def _node_callable(cls: Any) -> Any:
    if hasattr(cls, "FUNCTION"):
        return getattr(cls(), cls.FUNCTION)
    return cls.execute


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__func__", None))


def _lane_of(cls: Any) -> Tuple[str, int]:
    ext = vars(cls).get("_nodecell_extension") if isinstance(cls, type) else None
    if ext is None:
        return _HOST_LANE, 1
    try:
        return ext.name, max(1, int(ext.config["workers"]))
    except Exception:  # noqa: BLE001
        return ext.name, 1


async def run_workflow(graph: Dict[str, Any], node_class_mappings: Dict[str, Any], *,
                       cached: Optional[WorkflowResult] = None) -> WorkflowResult:
    """Execute an API-format workflow and return every node's outputs or error.

    ``cached``: a previous run's result; links to nodes that are not in
    ``graph`` take their outputs from it (to re-run part of a workflow).
    Raises ``ValueError`` only for a malformed graph (unknown class, missing
    link target, cycle), before anything runs.
    """
    deps = _validate(graph, node_class_mappings, cached)
    loop = asyncio.get_running_loop()
    result = WorkflowResult()
    done: Dict[str, asyncio.Future] = {nid: loop.create_future() for nid in graph}
    lanes: Dict[str, asyncio.Semaphore] = {}
    host_thread: List[concurrent.futures.ThreadPoolExecutor] = []
    t_start = time.perf_counter()
    prof_run = _profile.run_begin()  # None unless a profile is being recorded (nodecell.tools)

    def now() -> float:
        return time.perf_counter() - t_start

    async def call_node(cls: Any, inputs: Dict[str, Any], lane: str) -> Any:
        fn = _node_callable(cls)
        if lane != _HOST_LANE or _is_async(fn):
            r = fn(**inputs)
        else:  # a node imported into the host: run it off the event loop, one at a time
            if not host_thread:
                host_thread.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="studio-host-node"))
            r = await loop.run_in_executor(host_thread[0], functools.partial(fn, **inputs))
        if inspect.isawaitable(r):
            r = await r
        return r

    def resolve(nid: str, ct: str, pack: Optional[str], name: str, link: Any) -> Any:
        src = result.nodes[link[0]] if link[0] in graph else cached.nodes[link[0]]  # type: ignore[union-attr]
        if src.error is not None:
            raise NodeExecutionError(nid, ct, f"not run: input node {link[0]} failed", pack=pack,
                                     exception_type="UpstreamFailed", not_run=True)
        outs = src.outputs or ()
        if link[1] < 0 or link[1] >= len(outs):
            raise NodeExecutionError(nid, ct, f"input {name!r}: node {link[0]} has no output {link[1]}",
                                     pack=pack, exception_type="ValueError", not_run=True)
        return outs[link[1]]

    async def run(nid: str) -> None:
        node = graph[nid]
        ct = node["class_type"]
        cls = node_class_mappings[ct]
        lane, width = _lane_of(cls)
        pack = None if lane == _HOST_LANE else lane
        rec = NodeRecord(nid, ct, pack)
        result.nodes[nid] = rec
        try:
            for d in deps[nid]:
                await asyncio.shield(done[d])
            failed_up = sorted(d for d in deps[nid] if result.nodes[d].error is not None)
            if failed_up:
                raise NodeExecutionError(nid, ct, f"not run: input node(s) {', '.join(failed_up)} failed",
                                         pack=pack, exception_type="UpstreamFailed", not_run=True)
            inputs = {}
            for name, v in node.get("inputs", {}).items():
                inputs[name] = resolve(nid, ct, pack, name, v) if _is_link(v) else v
            sem = lanes.get(lane)
            if sem is None:
                sem = lanes[lane] = asyncio.Semaphore(width)
            async with sem:
                if pack is not None and pack in result.crashed:
                    raise NodeExecutionError(
                        nid, ct, f"not run: pack {pack!r} crashed earlier in this run "
                        f"({result.crashed[pack]}); it gets a fresh worker for the next run",
                        pack=pack, exception_type="PackCrashed", not_run=True)
                rec.started = now()
                try:
                    with _profile.node(nid, ct, pack, prof_run):
                        out = await call_node(cls, inputs, lane)
                finally:
                    rec.finished = now()
                    rec.seconds = rec.finished - rec.started
            rec.outputs, rec.ui = _normalize(out)
            result.order.append(nid)
        except NodeExecutionError as e:
            rec.error = e
        except RemoteError as e:
            rec.error = NodeExecutionError(nid, ct, f"{e.remote_type}: {e.remote_message}", pack=pack,
                                           exception_type=e.remote_type, traceback=e.remote_traceback, cause=e)
        except (WorkerCrashed, CallTimeout) as e:
            if pack is not None:
                result.crashed.setdefault(pack, e)
            rec.error = NodeExecutionError(nid, ct, str(e), pack=pack, exception_type=type(e).__name__, cause=e)
        except Exception as e:  # noqa: BLE001 - a node's failure is reported, not raised
            rec.error = NodeExecutionError(nid, ct, f"{type(e).__name__}: {e}", pack=pack,
                                           exception_type=type(e).__name__,
                                           traceback=_traceback.format_exc(), cause=e)
        finally:
            if not done[nid].done():
                done[nid].set_result(True)

    try:
        await asyncio.gather(*(run(n) for n in graph))
    finally:
        for ex in host_thread:
            ex.shutdown(wait=False)
    result.seconds = now()
    result.profile = await _profile.workflow_done(prof_run)
    return result
