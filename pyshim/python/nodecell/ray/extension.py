"""The driver's handle on a cell placed on a Ray cluster: :class:`RayExtension`.

``ExtensionManager(..., ExtensionManagerConfig(backend="ray"))`` makes one per
loaded pack. Starting it places a :class:`~nodecell.ray._actor.CellActor` with the
pack's ``placement`` (Ray's scheduler picks, spreading, when there is none):

* when the actor lands on the driver's own node, the cell runs here as a local
  cell (the zero-copy arena path) and the actor only holds the placement's
  resources;
* elsewhere the actor is the cell's host side on that node, and calls,
  services, callbacks and handles travel over a :mod:`~nodecell.ray._link`.

A lost actor or node fails the calls in flight with
:class:`~nodecell.WorkerCrashed` (``reason="lost"``) and the next call places
the cell again. Timeouts, memory limits and worker crashes on the node come
back as the same exceptions a local cell raises.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .._rpc import CALL, ERROR, EXTENSION_ID, REPLY, is_async_callable, registered_types
from ..cell import _SINGLETON_BASE_ID
from ..config import ExtensionConfig
from ..errors import (CallTimeout, ConfigError, ExtensionStopped, NodecellError, ProtocolError, ProvisionError,
                      RemoteError, SandboxUnavailable, WorkerCrashed)
from ..extension import Extension, _on_loop
from ._actor import PROGRESS_ID, CellActor
from ._link import Link
from ._placement import PlacementError, actor_options, check_feasible, manager_options, require_ray

if TYPE_CHECKING:
    from ..manager import ExtensionManager

__all__ = ["RayExtension"]

log = logging.getLogger("nodecell.ray")
_ACTOR_CLASS: Any = None


def _actor_class() -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(CellActor)
    return _ACTOR_CLASS


async def _get(ref: Any) -> Any:
    return await ref


#: Longest ``stop()`` waits for a killed actor to be gone (``ray.kill`` only asks for it).
STOP_WAIT_S = 10.0


async def _until_dead(actor: Any, timeout: float) -> None:
    """Wait until calls on ``actor`` fail with ``RayActorError`` (it was killed), at most
    ``timeout`` seconds: ``ray.kill`` returns before the actor is gone, and a call made
    right after it could still be served."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(_get(actor.where.remote()), max(deadline - time.monotonic(), 0.1))
        except ray.exceptions.RayActorError:
            return
        except Exception:  # noqa: BLE001 - e.g. timed out: look again until the deadline
            pass
        await asyncio.sleep(0.05)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def _error_from_fault(rec: Any, name: str, where: str) -> NodecellError:
    """Rebuild a nodecell exception from a fault record (plain data from the actor)."""
    if not isinstance(rec, dict):
        return ProtocolError(f"pack {name!r}: malformed fault record from its cell {where}")
    msg = f"{rec.get('message', '')} [{where}]"
    kind = rec.get("type")
    if kind == "WorkerCrashed":
        return WorkerCrashed(msg, reason=str(rec.get("reason") or "exited"), exit_code=rec.get("exit_code"),
                             signal=rec.get("signal"), extension=name)
    if kind == "CallTimeout":
        return CallTimeout(msg, timeout=float(rec.get("timeout") or 0), extension=name)
    if kind == "SandboxUnavailable":
        return SandboxUnavailable(msg, list(rec.get("walls") or []))
    if kind == "ProvisionError":
        return ProvisionError(msg)
    if kind == "ExtensionStopped":
        return ExtensionStopped(msg)
    if kind == "ConfigError":
        return ConfigError(str(rec.get("field") or "config"), msg)
    return NodecellError(msg)


def _import_dirs(modules: List[str]) -> List[str]:
    """Folders the driver imports ``modules`` from (the actor adds those it also has)."""
    out: List[str] = []
    for name in modules:
        mod = sys.modules.get(name.split(".")[0])
        f = getattr(mod, "__file__", None) if mod is not None else None
        if not f:
            continue
        d = os.path.dirname(os.path.abspath(f))
        if os.path.basename(f) == "__init__.py":
            d = os.path.dirname(d)
        if d not in out:
            out.append(d)
    return out


class _DriverLink(Link):
    """The driver's end: it owns the services, callbacks and progress sink the cell uses."""

    restrict_exports = True

    def __init__(self, ext: "RayExtension", actor: Any) -> None:
        super().__init__("host", f"cell {ext.name} on Ray")
        self.ext = ext
        self.actor = actor
        self.loop = asyncio.get_running_loop()
        self.tasks: Dict[int, asyncio.Task] = {}

    def send_frame(self, kind: int, call_id: int, payload: Any) -> None:
        if self.closed:
            raise EOFError("link closed")
        self.actor.push.remote([self.frame(kind, call_id, payload)])

    def call_remote(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        return self.ext._remote(target, method, args, kwargs)

    def _deliver(self, call_id: int, value: Any, error: Optional[BaseException]) -> None:
        pass  # the driver's calls get their replies as the actor call's result

    def _schedule_release_flush(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.flush_releases)
        except RuntimeError:
            pass

    def _run_incoming(self, call_id: int, payload: Any) -> None:
        """A call from the cell (a service, a callback): run it here, answer with a frame."""
        try:
            if not (isinstance(payload, tuple) and len(payload) == 5):
                raise TypeError("malformed call frame")
            target, method, args, kwargs, _parent = payload
            if kwargs is None and isinstance(args, BaseException):  # its arguments could not be built here
                raise args
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise TypeError("malformed call frame")
            fn = self.resolve_target(target, method)
            if is_async_callable(fn):
                self._spawn(call_id, fn(*args, **kwargs))
                return
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                self._spawn(call_id, result)
                return
        except BaseException as e:  # noqa: BLE001
            self._answer(call_id, None, e)
            return
        self._answer(call_id, result, None)

    def _spawn(self, call_id: int, aw: Any) -> None:
        async def run() -> None:
            try:
                result = await aw
            except BaseException as e:  # noqa: BLE001
                self._answer(call_id, None, e)
                return
            finally:
                self.tasks.pop(call_id, None)
            self._answer(call_id, result, None)

        self.tasks[call_id] = self.loop.create_task(run())

    def _answer(self, call_id: int, value: Any, error: Optional[BaseException]) -> None:
        if self.closed:
            return
        try:
            self.actor.push.remote([self.reply_frame(call_id, value, error)])
        except Exception:  # noqa: BLE001 - the actor is gone
            pass

    def _log(self, payload: Any) -> None:
        try:
            level, name, msg = payload
            level = int(level)
        except Exception:  # noqa: BLE001
            return
        name = str(name)[:200].replace("\n", " ")
        if name != "nodecell" and not name.startswith("nodecell."):
            name = f"nodecell.{self.ext.name}.{name}"
        logging.getLogger(name).log(level, "%s", str(msg))

    def close(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        self.tasks.clear()
        super().close()


class RayExtension(Extension):
    """An :class:`~nodecell.Extension` whose cell is placed on a Ray cluster (see the module docs)."""

    def __init__(self, manager: "ExtensionManager", config: ExtensionConfig) -> None:
        super().__init__(manager, config)
        self._actor: Any = None
        self._mode: Optional[str] = None  # "local" (this node) or "remote"
        self._where: Dict[str, Any] = {}
        self._link: Optional[_DriverLink] = None
        self._pump: Optional[asyncio.Task] = None
        self._info: Dict[str, Any] = {}
        self._place_lock: Optional[asyncio.Lock] = None
        self._info_stale = False

    def __repr__(self) -> str:
        where = self._where.get("node_ip", "not placed")
        return f"<nodecell.RayExtension {self.name!r} on {where}>"

    # -- what the driver can see ---------------------------------------------------------

    @property
    def placement(self) -> Dict[str, Any]:
        """``{"node_id": <Ray node id hex>, "node_ip": ...}`` of the node running the cell
        (empty until it is placed)."""
        if not self._where:
            return {}
        return {"node_id": self._where["node_id"], "node_ip": self._where["node_ip"]}

    @property
    def remote(self) -> bool:
        """Whether the cell runs on another node (calls go through Ray)."""
        return self._mode == "remote"

    @property
    def walls(self) -> List[Dict[str, Any]]:
        """The sandbox's walls and their state, as the cell's node reports them."""
        if self._mode == "remote":
            return [dict(w) for w in self._info.get("walls", [])]
        return super().walls

    @property
    def worker_versions(self) -> Dict[str, str]:
        """Python / numpy / torch versions the worker sees (on its node)."""
        if self._mode == "remote":
            return dict(self._info.get("versions", {}))
        return super().worker_versions

    @property
    def worker_pids(self) -> List[int]:
        """Pids of the live workers inside the sandbox's pid namespace (on its node; refreshed
        after a worker failure)."""
        if self._mode == "remote":
            return list(self._info.get("pids", []))
        return super().worker_pids

    # -- starting ------------------------------------------------------------------------

    async def start(self) -> None:
        """Place the cell (if it is not placed) and start it; idempotent."""
        if self._stopped:
            raise ExtensionStopped(f"extension {self.name!r} was stopped")
        if not self.config["isolated"]:
            await super().start()
            return
        if self._place_lock is None:
            self._place_lock = asyncio.Lock()
        async with self._place_lock:
            if self._actor is None:
                await self._place()
            if self._mode == "remote" and self._link is None:
                await self._start_remote()
        if self._mode == "local":
            await super().start()

    async def _place(self) -> None:
        ray = require_ray()
        mopts = manager_options(self._manager.config)
        placement = self.config.get("placement")
        check_feasible(ray, placement)
        opts = actor_options(placement)
        if mopts.get("runtime_env"):
            opts["runtime_env"] = mopts["runtime_env"]
        actor = _actor_class().options(max_concurrency=1000, max_restarts=0, max_task_retries=0, **opts) \
            .remote(self._spec())
        timeout = mopts["placement_timeout"]
        try:
            where = await asyncio.wait_for(_get(actor.where.remote()), timeout)
        except asyncio.TimeoutError:
            ray.kill(actor, no_restart=True)
            raise PlacementError(
                f"pack {self.name!r}: no node of the Ray cluster took the cell within {timeout:g} s "
                f"(placement {placement or 'any'}; free now: {ray.available_resources()})") from None
        except ray.exceptions.RayError as e:
            ray.kill(actor, no_restart=True)
            raise PlacementError(f"pack {self.name!r}: the cell's actor could not start: {_first_line(e)}") from None
        self._actor = actor
        self._where = where
        here = ray.get_runtime_context().get_node_id()
        self._mode = "local" if where.get("node_id") == here else "remote"
        if self._mode == "local" and where.get("gpu_ids"):
            # The GPUs Ray reserved for the cell, for the worker this process starts.
            env = dict(self.config["env"])
            env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(g) for g in where["gpu_ids"]))
            self.config = ExtensionConfig(dict(self.config, env=env, gpu=True))
        log.info("pack %r placed on Ray node %s (%s)%s", self.name, where.get("node_ip"),
                 str(where.get("node_id"))[:12], ", this node: local cell" if self._mode == "local" else "")

    def _spec(self) -> Dict[str, Any]:
        """Everything the actor needs, as plain data (classes by module and name)."""
        et = self._manager.extension_type
        if et.__module__ == "__main__":
            raise TypeError(f"{et.__qualname__} is defined in __main__; define it in an importable module "
                            "so the cell's node can import it")
        cfg = dict(self.config)
        cfg.pop("placement", None)
        apis = cfg["apis"]
        cfg["apis"] = [(a.__module__, a.__qualname__) for a in apis]
        cfg["sandbox"] = dict(cfg["sandbox"])
        cfg["sandbox_mode"] = cfg["sandbox_mode"].value
        records = {n: (t.__module__, t.__qualname__) for n, t in registered_types().items()
                   if t.__module__ != "__main__"}
        mods = [et.__module__] + [a.__module__ for a in apis] + [m for m, _ in records.values()]
        mcfg = self._manager.config
        return {
            "extension_type": (et.__module__, et.__qualname__),
            "config": cfg,
            "records": records,
            "paths": _import_dirs(mods),
            "manager": {k: mcfg[k] for k in ("venv_root_path", "python", "worker_uid") if mcfg.get(k) is not None},
            "gpus": bool((self.config.get("placement") or {}).get("num_gpus")),
            "torch": "torch" in sys.modules,
        }

    async def _start_remote(self) -> None:
        ray = require_ray()
        actor = self._actor
        link = _DriverLink(self, actor)
        link.pin(PROGRESS_ID, self._on_progress)
        for i, api in enumerate(self.config["apis"]):
            link.pin(_SINGLETON_BASE_ID + i, api())
        self._link = link
        # Frames from the cell (services called while the pack imports) flow from now on.
        self._pump = asyncio.get_running_loop().create_task(self._pump_frames(actor, link))
        try:
            status, info = await _get(actor.start.remote())
        except ray.exceptions.RayError as e:
            raise self._lost(actor, e) from None
        except BaseException:
            await self._drop(kill=True)
            raise
        if status != "ok":
            err = _error_from_fault(info, self.name, self._where_text())
            await self._drop(kill=True)
            raise err
        self._info = dict(info)
        missing = [w for w in self._info.get("walls", []) if w.get("state") == "missing"]
        if missing:
            logging.getLogger(f"nodecell.{self.name}").warning(
                "running without these walls (best-effort) on %s: %s", self._where_text(),
                ", ".join(f"{w.get('name')} ({w.get('detail', '')})" for w in missing))

    def _where_text(self) -> str:
        return f"on Ray node {self._where.get('node_ip')} {str(self._where.get('node_id'))[:12]}"

    def _on_progress(self, event: Any) -> None:
        if isinstance(event, dict):
            event = dict(event)
            event.setdefault("node", self._where.get("node_ip"))
            self._manager._emit(event)

    async def _pump_frames(self, actor: Any, link: _DriverLink) -> None:
        """The long poll that brings the cell's calls, logs and releases to the driver."""
        import ray

        while not link.closed:
            try:
                frames = await actor.pull.remote()
            except asyncio.CancelledError:
                raise
            except ray.exceptions.RayError as e:
                if not link.closed:
                    self._lost(actor, e)
                return
            for item in frames:
                try:
                    kind, call_id, payload = link.receive(*item)
                except Exception as e:  # noqa: BLE001 - the actor is ours: a bug, not an attack
                    log.error("pack %r: dropped a malformed frame from its cell: %s", self.name, e)
                    continue
                link.handle_frame(kind, call_id, payload)

    # -- calls ---------------------------------------------------------------------------

    async def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        # Every call of the extension's methods comes here: `call`, `ext.method(...)`.
        if self._stopped:
            raise ExtensionStopped(f"extension {self.name!r} was stopped")
        if not self.config["isolated"]:
            return await super()._call(method, args, kwargs)
        if self._actor is None or (self._mode == "remote" and self._link is None):
            await self.start()
        if self._mode == "local":
            return await super()._call(method, args, kwargs)
        link = self._link
        if link is not None and link.loop is not asyncio.get_running_loop():
            if link.loop.is_running():  # the link is served by a loop in another thread
                return await _on_loop(link.loop, self._call(method, args, kwargs))
            await self._drop(kill=True)  # its loop is gone: place the cell afresh from this one
            await self.start()
        return await self._remote(EXTENSION_ID, method, args, kwargs)

    async def _remote(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        """One call to an object in the remote cell (the extension, or a handle it gave us)."""
        import ray

        actor, link = self._actor, self._link
        if actor is None or link is None or link.closed:
            raise WorkerCrashed(f"pack {self.name!r}: its cell is not running (it was lost or stopped)",
                                reason="lost", extension=self.name)
        call_id = next(link._call_ids)
        blob, bufs = link.frame(CALL, call_id, (target, method, tuple(args), dict(kwargs)))
        ref = actor.call.remote(blob, *bufs)
        if link._release_queue:
            link.flush_releases()
        try:
            res = await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        except ray.exceptions.TaskCancelledError:
            raise asyncio.CancelledError() from None
        except ray.exceptions.RayError as e:
            raise self._lost(actor, e) from None
        out = self._result(link, res)
        if self._info_stale:
            self._info_stale = False
            asyncio.get_running_loop().create_task(self._refresh_info(actor))
        return out

    def _result(self, link: _DriverLink, res: Any) -> Any:
        if isinstance(res, tuple) and len(res) == 3 and res[0] == "frame":
            kind, _cid, payload = link.receive(res[1], res[2])
            if kind == REPLY:
                return payload
            if kind == ERROR:
                raise payload if isinstance(payload, BaseException) else RemoteError("ProtocolError", repr(payload))
        elif isinstance(res, tuple) and len(res) == 2 and res[0] == "fault":
            err = _error_from_fault(res[1], self.name, self._where_text())
            if isinstance(err, (WorkerCrashed, CallTimeout)):
                self.restarts += 1
                self.last_crash = err
                self._info_stale = True  # the node starts a new worker on the next call
            raise err
        raise ProtocolError(f"pack {self.name!r}: malformed reply from its cell {self._where_text()}")

    async def _refresh_info(self, actor: Any) -> None:
        """Walls and worker pids again, once the node has started a new worker."""
        try:
            info = await actor.info.remote()
        except Exception:  # noqa: BLE001 - the actor is gone: _lost handles it
            return
        if actor is self._actor and isinstance(info, dict) and info:
            self._info = dict(info)

    def _lost(self, actor: Any, e: BaseException) -> WorkerCrashed:
        """The actor (or its node) is gone: forget the placement; the next call places again."""
        err = WorkerCrashed(f"pack {self.name!r}: its cell {self._where_text()} was lost ({_first_line(e)}); "
                            "the next call places it again", reason="lost", extension=self.name)
        if self._actor is actor and actor is not None:
            self._actor = None
            self._mode = None
            link, self._link = self._link, None
            pump, self._pump = self._pump, None
            if link is not None:
                link.close()
            if pump is not None and pump is not asyncio.current_task():
                pump.cancel()
            self.restarts += 1
            self.last_crash = err
            logging.getLogger(f"nodecell.{self.name}").warning("%s", err)
            try:
                import ray

                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        return err

    # -- stopping ------------------------------------------------------------------------

    async def _drop(self, kill: bool) -> None:
        actor, link, pump = self._actor, self._link, self._pump
        self._actor = self._link = self._pump = None
        self._mode = None
        if pump is not None:
            pump.cancel()
        if link is not None:
            link.close()
        if kill and actor is not None:
            try:
                import ray

                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass

    async def _shutdown(self) -> None:
        actor, mode = self._actor, self._mode
        if mode != "remote":
            await super()._shutdown()  # a local cell (or none yet)
        elif actor is not None:
            try:
                await asyncio.wait_for(_get(actor.stop.remote()), 10)
            except BaseException:  # noqa: BLE001 - stopping anyway
                pass
        await self._drop(kill=True)
        if mode == "remote" and actor is not None:
            await _until_dead(actor, STOP_WAIT_S)
        self._where = {}
        self._info = {}
