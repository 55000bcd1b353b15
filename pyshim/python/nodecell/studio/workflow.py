"""A small runner for API-format workflows.

    {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0]}}, ...}

An input that is a two-element list ``[node_id, output_index]`` is a link to
another node's output. Nodes run in dependency order; every node whose inputs
are ready runs at once, so independent isolated nodes run in parallel (their
packs' workers are separate processes). A failing node fails its dependents
only; a pack whose worker crashes has its remaining nodes in this run marked
failed (it is restarted on the next run).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from ..errors import RemoteError, WorkerCrashed

__all__ = ["run_workflow", "WorkflowResult", "NodeExecutionError", "NodeRecord"]


class NodeExecutionError(Exception):
    """A node failed; like the host's own node errors, with the remote traceback when there is one."""

    def __init__(self, node_id: str, class_type: str, message: str, *, pack: Optional[str] = None,
                 exception_type: str = "", traceback: str = "", cause: Optional[BaseException] = None) -> None:
        super().__init__(f"node {node_id} ({class_type}): {message}")
        self.node_id = node_id
        self.class_type = class_type
        self.pack = pack
        self.exception_type = exception_type
        self.traceback = traceback
        self.cause = cause

    def as_dict(self) -> Dict[str, Any]:
        """The shape of a ComfyUI ``execution_error`` message."""
        return {"node_id": self.node_id, "node_type": self.class_type, "exception_message": str(self),
                "exception_type": self.exception_type, "traceback": self.traceback.splitlines(),
                "pack": self.pack}


@dataclass
class NodeRecord:
    """What happened to one node."""

    node_id: str
    class_type: str
    pack: Optional[str]
    outputs: Optional[Tuple[Any, ...]] = None
    ui: Any = None
    error: Optional[NodeExecutionError] = None
    seconds: float = 0.0
    started: float = 0.0


@dataclass
class WorkflowResult:
    """Outputs, errors and timings of one run."""

    nodes: Dict[str, NodeRecord] = field(default_factory=dict)
    order: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.nodes.values())

    @property
    def errors(self) -> Dict[str, NodeExecutionError]:
        return {k: r.error for k, r in self.nodes.items() if r.error is not None}

    def output(self, node_id: str, index: int = 0) -> Any:
        rec = self.nodes[node_id]
        if rec.error is not None:
            raise rec.error
        assert rec.outputs is not None
        return rec.outputs[index]


def _is_link(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _validate(graph: Dict[str, Any], mappings: Dict[str, Any]) -> Dict[str, Set[str]]:
    if not isinstance(graph, dict):
        raise ValueError("workflow: expected an object of node id -> node")
    deps: Dict[str, Set[str]] = {}
    for nid, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node:
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
                if v[0] not in graph:
                    raise ValueError(f"workflow: node {nid!r} input {name!r} links to missing node {v[0]!r}")
                d.add(v[0])
        deps[nid] = d
    # cycle check
    seen: Dict[str, int] = {}

    def visit(n: str, stack: List[str]) -> None:
        if seen.get(n) == 1:
            raise ValueError(f"workflow: cycle through {' -> '.join(stack + [n])}")
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for m in deps[n]:
            visit(m, stack + [n])
        seen[n] = 2

    for n in deps:
        visit(n, [])
    return deps


def _normalize(out: Any) -> Tuple[Tuple[Any, ...], Any]:
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


async def _call_node(cls: Any, inputs: Dict[str, Any]) -> Any:
    if hasattr(cls, "FUNCTION"):
        obj = cls()
        r = getattr(obj, cls.FUNCTION)(**inputs)
    else:
        r = cls.execute(**inputs)
    if inspect.isawaitable(r):
        r = await r
    return r


async def run_workflow(graph: Dict[str, Any], node_class_mappings: Dict[str, Any]) -> WorkflowResult:
    """Execute an API-format workflow; never raises for a node's failure (see ``result.errors``)."""
    deps = _validate(graph, node_class_mappings)
    result = WorkflowResult()
    crashed: Dict[str, BaseException] = {}
    done: Dict[str, asyncio.Future] = {nid: asyncio.get_running_loop().create_future() for nid in graph}
    t_start = time.perf_counter()

    async def run(nid: str) -> None:
        node = graph[nid]
        ct = node["class_type"]
        cls = node_class_mappings[ct]
        pack = getattr(cls, "_nodecell_pack", None)
        rec = NodeRecord(nid, ct, pack)
        result.nodes[nid] = rec
        try:
            for d in deps[nid]:
                await asyncio.shield(done[d])
            failed_up = [d for d in deps[nid] if result.nodes[d].error is not None]
            if failed_up:
                raise NodeExecutionError(nid, ct, f"not run: input node(s) {', '.join(sorted(failed_up))} failed",
                                         pack=pack, exception_type="UpstreamFailed")
            if pack is not None and pack in crashed:
                raise NodeExecutionError(nid, ct, f"not run: pack {pack!r} crashed earlier in this run "
                                         f"({crashed[pack]}); it restarts for the next run",
                                         pack=pack, exception_type="WorkerCrashed")
            inputs = {}
            for name, v in node.get("inputs", {}).items():
                if _is_link(v):
                    outs = result.nodes[v[0]].outputs or ()
                    if v[1] >= len(outs):
                        raise NodeExecutionError(nid, ct, f"input {name!r}: node {v[0]} has no output {v[1]}",
                                                 pack=pack, exception_type="ValueError")
                    inputs[name] = outs[v[1]]
                else:
                    inputs[name] = v
            rec.started = time.perf_counter() - t_start
            t0 = time.perf_counter()
            try:
                out = await _call_node(cls, inputs)
            finally:
                rec.seconds = time.perf_counter() - t0
            rec.outputs, rec.ui = _normalize(out)
            result.order.append(nid)
        except NodeExecutionError as e:
            rec.error = e
        except RemoteError as e:
            rec.error = NodeExecutionError(nid, ct, f"{e.remote_type}: {e.remote_message}", pack=pack,
                                           exception_type=e.remote_type, traceback=e.remote_traceback, cause=e)
        except WorkerCrashed as e:
            if pack is not None:
                crashed.setdefault(pack, e)
            rec.error = NodeExecutionError(nid, ct, str(e), pack=pack, exception_type=type(e).__name__, cause=e)
        except Exception as e:  # noqa: BLE001 - a node's failure is reported, not raised
            import traceback

            rec.error = NodeExecutionError(nid, ct, f"{type(e).__name__}: {e}", pack=pack,
                                           exception_type=type(e).__name__,
                                           traceback=traceback.format_exc(), cause=e)
        finally:
            if not done[nid].done():
                done[nid].set_result(True)

    await asyncio.gather(*(run(n) for n in graph))
    result.seconds = time.perf_counter() - t_start
    return result
