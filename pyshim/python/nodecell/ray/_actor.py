"""The host side of a cell on another Ray node: :class:`CellActor`.

One async Ray actor per remote cell. On its node it is what the driver is for a
local cell: it runs a local :class:`nodecell.ExtensionManager` (the pack's venv
from that node's nodecell cache, the same manifest, the same sandbox walls) and
forwards the driver's calls to the worker over the local channel. Between the
actor and the driver only nodecell frames travel (see :mod:`nodecell.ray._link`);
the actor's own failures go back as plain fault records, never as pickled
exceptions, and no actor method raises.

The driver is trusted by the actor (it says which modules to import: the
extension class, the services, the registered record types), exactly as a host
is trusted by its cells.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from .._rpc import CALL, EXTENSION_ID, RemoteObject, register_type, registered_types
from ..cell import _SINGLETON_BASE_ID
from ..errors import (CallTimeout, ConfigError, ExtensionStopped, NodecellError, ProvisionError, RemoteError,
                      SandboxUnavailable, WorkerCrashed)
from ._link import Frame, Link

__all__ = ["CellActor", "PROGRESS_ID", "fault_record"]

#: Handle id the driver pins its progress sink under (provisioning events from the node).
PROGRESS_ID = 2
#: How long one ``pull`` waits for frames before returning an empty batch.
PULL_WAIT = 15.0


def _import(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def fault_record(e: BaseException) -> Dict[str, Any]:
    """A nodecell failure of the actor's own (not a worker's exception) as plain data."""
    rec: Dict[str, Any] = {"type": "NodecellError", "message": str(e)}
    for cls in (WorkerCrashed, CallTimeout, SandboxUnavailable, ProvisionError, ExtensionStopped, ConfigError):
        if isinstance(e, cls):
            rec["type"] = cls.__name__
            break
    if isinstance(e, WorkerCrashed):
        rec.update(reason=e.reason, exit_code=e.exit_code, signal=e.signal)
    elif isinstance(e, CallTimeout):
        rec["timeout"] = e.timeout
    elif isinstance(e, SandboxUnavailable):
        rec["walls"] = [str(w) for w in e.walls]
    elif isinstance(e, ConfigError):
        rec["field"] = e.field
    return rec


class _ExtensionTarget:
    """The extension as the driver names it (handle 0): any public method becomes a call."""

    def __init__(self, ext: Any) -> None:
        self._ext = ext

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        ext = self._ext

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await ext.call(name, *args, **kwargs)

        return method


class _ActorLink(Link):
    """The actor's end: its calls to the driver wait on futures; frames queue for ``pull``."""

    def __init__(self, name: str) -> None:
        super().__init__("worker", f"driver of {name}")
        self.loop = asyncio.get_running_loop()
        self.pending: Dict[int, asyncio.Future] = {}
        self.outbox: List[Frame] = []
        self.ready = asyncio.Event()

    def send_frame(self, kind: int, call_id: int, payload: Any) -> None:
        if self.closed:
            raise EOFError("link closed")
        self.outbox.append(self.frame(kind, call_id, payload))
        self.ready.set()

    def call_remote(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        """Call an object the driver owns (a service, a callback): an awaitable."""
        fut = self.loop.create_future()
        call_id = next(self._call_ids)
        self.pending[call_id] = fut
        try:
            self.send_frame(CALL, call_id, (target, method, tuple(args), dict(kwargs)))
        except BaseException:
            self.pending.pop(call_id, None)
            raise
        return fut

    def _deliver(self, call_id: int, value: Any, error: Optional[BaseException]) -> None:
        fut = self.pending.pop(call_id, None)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def _schedule_release_flush(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.flush_releases)
        except RuntimeError:
            pass

    def resolve_target(self, target: int, method: str) -> Any:
        with self._lock:
            ent = self.exported.get(target)
        obj = ent[0] if ent is not None else None
        if isinstance(obj, RemoteObject) and obj._nc_endpoint is not self:
            # A handle the worker owns, passed on to the driver: forward every call.
            if method.startswith("_") and method not in ("__call__", "__getattr__"):
                raise AttributeError(f"method {method!r} is not reachable remotely (private)")
            ep, hid = obj._nc_endpoint, obj._nc_id

            def forward(*args: Any, **kwargs: Any) -> Any:
                return ep.call_remote(hid, method, args, kwargs)

            return forward
        return super().resolve_target(target, method)

    def fail_pending(self, why: str) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(WorkerCrashed(f"the driver is unreachable: {why}", reason="lost"))
        self.pending.clear()


class _LogForwarder(logging.Handler):
    """Sends the node's ``nodecell.*`` log records to the driver's loggers of the same name."""

    def __init__(self, link: _ActorLink) -> None:
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        from .._rpc import LOG

        try:
            msg = self.format(record)
            self.link.loop.call_soon_threadsafe(self._send, LOG, (record.levelno, record.name, msg))
        except Exception:  # noqa: BLE001 - logging must never fail the caller
            pass

    def _send(self, kind: int, payload: Any) -> None:
        try:
            self.link.send_frame(kind, 0, payload)
        except Exception:  # noqa: BLE001
            pass


class CellActor:
    """A remote cell's host side (used as a Ray async actor; see the module docs).

    ``spec`` (from the driver, plain data): ``extension_type`` / ``apis`` /
    ``records`` as ``(module, qualname)`` names, ``paths`` (where the driver
    imports them from; used when they exist on this node), ``config`` (the
    :class:`ExtensionConfig` fields, services by name), ``manager`` (the
    :class:`ExtensionManagerConfig` fields that apply on this node), ``gpus``
    (the placement reserved GPUs: the worker gets them), ``torch`` (the driver
    uses torch: import it while the cell starts).
    """

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = spec
        self.name = str(spec["config"]["name"])
        self.link: Optional[_ActorLink] = None
        self.manager: Any = None
        self.ext: Any = None

    async def where(self) -> Dict[str, Any]:
        """The node this actor runs on: ``{"node_id", "node_ip", "pid", "gpu_ids"}``."""
        import ray

        ctx = ray.get_runtime_context()
        try:
            gpus = [str(g) for g in ray.get_gpu_ids()]
        except Exception:  # noqa: BLE001
            gpus = []
        return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "gpu_ids": gpus}

    async def start(self) -> Tuple[str, Dict[str, Any]]:
        """Provision and start the cell; ``("ok", info)`` or ``("fault", record)``."""
        try:
            return "ok", await self._start()
        except BaseException as e:  # noqa: BLE001 - faults travel as data
            if not isinstance(e, NodecellError):
                e = WorkerCrashed(f"pack {self.name!r}: the cell could not start on this node: "
                                  f"{type(e).__name__}: {e}", reason="setup")
            return "fault", fault_record(e)

    async def _start(self) -> Dict[str, Any]:
        from ..config import ExtensionConfig, ExtensionManagerConfig
        from ..manager import ExtensionManager

        spec = self.spec
        for p in reversed(spec.get("paths") or []):
            if os.path.isdir(p) and p not in sys.path:
                sys.path.insert(0, p)
        torch_import = None
        if (spec.get("torch") or spec["config"].get("share_torch")) and "torch" not in sys.modules:
            # The driver deals in torch tensors: have torch ready before the first one arrives
            # (importing it then would stall that call for seconds); meanwhile the cell starts.
            torch_import = asyncio.get_running_loop().run_in_executor(None, importlib.import_module, "torch")
        link = self.link = _ActorLink(self.name)
        root = logging.getLogger("nodecell")
        root.addHandler(_LogForwarder(link))
        root.propagate = False
        ext_type = _import(*spec["extension_type"])
        for name, (mod, qual) in (spec.get("records") or {}).items():
            if name not in registered_types():
                register_type(_import(mod, qual), name)
        cfg = dict(spec["config"])
        apis = [_import(m, q) for m, q in cfg.get("apis") or []]
        for i, api in enumerate(apis):
            # In this process a service is the driver's instance, reached over the link.
            api.inject_instance(RemoteObject(link, _SINGLETON_BASE_ID + i))
        cfg["apis"] = apis
        if spec.get("gpus") and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            # The GPUs Ray reserved for this actor are the worker's.
            cfg["gpu"] = True
            cfg["env"] = dict(cfg.get("env") or {}, CUDA_VISIBLE_DEVICES=os.environ["CUDA_VISIBLE_DEVICES"])
        mp = cfg.get("module_path")
        if not mp or not os.path.isdir(mp):
            raise ConfigError("module_path", f"{mp!r} does not exist on this node; every node that may run the "
                                             "pack needs it at the same path (a shared or synced folder)")
        config = ExtensionConfig(cfg)
        def on_progress(ev: Dict[str, Any]) -> None:
            try:
                fut = link.call_remote(PROGRESS_ID, "__call__", (dict(ev),), {})
            except Exception:  # noqa: BLE001 - progress is best effort
                return
            fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())

        mcfg = dict(spec.get("manager") or {})
        self.manager = ExtensionManager(ext_type, ExtensionManagerConfig(on_progress=on_progress, **mcfg))
        self.ext = self.manager.load_extension(config)
        await self.ext.start()
        if torch_import is not None:
            try:
                await torch_import
            except ImportError:
                pass  # this node has no torch: tensors arrive as numpy arrays
        link.pin(EXTENSION_ID, _ExtensionTarget(self.ext))
        return self._info()

    def _info(self) -> Dict[str, Any]:
        ext = self.ext
        cell = getattr(ext, "_cell", None)
        proc = getattr(cell, "proc", None)
        return {
            "launcher_pid": getattr(proc, "pid", None),
            "walls": [dict(w) for w in ext.walls],
            "versions": dict(ext.worker_versions),
            "pids": list(ext.worker_pids),
            "venv": (ext.venv or {}).get("path"),
            "restarts": ext.restarts,
        }

    async def info(self) -> Dict[str, Any]:
        """Walls, worker versions and pids, launcher pid, venv path, restarts (plain data)."""
        return self._info() if self.ext is not None else {}

    async def call(self, blob: bytes, *bufs: Any) -> Tuple[Any, ...]:
        """Run one CALL frame from the driver: ``("frame", bytes, buffers)`` with the
        REPLY/ERROR frame, or ``("fault", record)`` for the cell's own failures."""
        link = self.link
        if link is None:
            return "fault", fault_record(ExtensionStopped(f"pack {self.name!r}: the cell is not started"))
        try:
            kind, call_id, payload = link.receive(blob, bufs)
        except Exception as e:  # noqa: BLE001
            return "fault", fault_record(WorkerCrashed(f"pack {self.name!r}: bad frame from the driver: {e}",
                                                       reason="protocol"))
        if kind != CALL:
            return "fault", fault_record(WorkerCrashed(f"pack {self.name!r}: expected a call frame, got kind {kind}",
                                                       reason="protocol"))
        try:
            target, method, args, kwargs, _parent = payload
            if kwargs is None and isinstance(args, BaseException):  # its arguments could not be built here
                raise args
            fn = link.resolve_target(target, method)
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
        except RemoteError as e:  # the worker raised: relay it as the worker's error
            return ("frame",) + link.reply_frame(call_id, None, e)
        except NodecellError as e:  # the cell failed (crash, timeout, limits): a fault
            return "fault", fault_record(e)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - e.g. an unknown handle: an error value
            return ("frame",) + link.reply_frame(call_id, None, e)
        return ("frame",) + link.reply_frame(call_id, result, None)

    async def push(self, frames: List[Frame]) -> int:
        """Frames from the driver that answer the actor's calls, or release handles."""
        link = self.link
        if link is None:
            return 0
        n = 0
        for blob, bufs in frames:
            try:
                kind, call_id, payload = link.receive(blob, bufs)
            except Exception:  # noqa: BLE001 - a bad frame from the driver: drop it
                logging.getLogger("nodecell.ray").exception("bad frame from the driver")
                continue
            link.handle_frame(kind, call_id, payload)
            n += 1
        return n

    async def pull(self, wait: float = PULL_WAIT) -> List[Frame]:
        """Frames for the driver (calls, logs, releases): waits up to ``wait`` seconds for one."""
        link = self.link
        if link is None:
            await asyncio.sleep(min(wait, 1.0))
            return []
        if not link.outbox:
            link.ready.clear()
            try:
                await asyncio.wait_for(link.ready.wait(), wait)
            except asyncio.TimeoutError:
                pass
        out, link.outbox = link.outbox, []
        return out

    async def stop(self) -> bool:
        """Stop the cell (workers, sandbox); the actor is killed by the driver afterwards."""
        try:
            if self.manager is not None:
                await self.manager.stop_all_extensions()
        except BaseException:  # noqa: BLE001 - stopping anyway
            pass
        if self.link is not None:
            self.link.fail_pending("the cell stopped")
            self.link.close()
        return True
