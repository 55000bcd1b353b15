"""pyisolate's child-side set-up, in a nodecell worker (the worker side of ``_nc_bridge``).

:func:`bootstrap` runs from the worker runtime's init hook, after nodecell installed
its service proxies and before the extension type is imported. In pyisolate's order:
the host's paths go first on ``sys.path``, the adapter is rebuilt and registers its
serializers, the child RPC becomes ``get_child_rpc_instance()``; right after the
extension object is created it gets the RPC, the services get their callers
(``use_remote``) and the adapter its ``handle_api_registration`` /
``setup_child_event_hooks`` calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional

from ...._rpc import is_async_callable
from ._nc_wire import prepare, rehydrate
from .rpc_protocol import AsyncRPC, set_child_rpc_instance

log = logging.getLogger(__name__)

_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None


def _cuda_ok() -> bool:
    """Whether CUDA tensors may cross this extension's channel (its ``share_cuda_ipc``)."""
    return os.environ.get("PYISOLATE_ENABLE_CUDA_IPC") == "1"


def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` (a remote method: blocks and returns its value off an event loop), from
    anywhere: inside a running loop it runs on a helper thread while this one waits."""
    global _pool
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args)
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="nodecell-pyisolate")
    return _pool.submit(fn, *args).result()


class ChildRPC(AsyncRPC):
    """The worker's :class:`AsyncRPC` (``get_child_rpc_instance()``)."""

    def __init__(self, host: Any) -> None:
        super().__init__()
        self._host = host  # handle to the host's HostCallees

    async def _call(self, object_id: str, method: str, args: tuple, kwargs: dict) -> Any:
        a, k = prepare(args, cuda=_cuda_ok()), prepare(kwargs, cuda=_cuda_ok())
        host = self._host
        ep = getattr(host, "_nc_endpoint", None)
        send = getattr(ep, "call_remote_async", None)
        if send is not None:  # an awaitable on this loop, whichever it is: no thread hop
            result = await send(host._nc_id, "call", (object_id, method, a, k), {})
        else:
            result = await asyncio.get_running_loop().run_in_executor(None, host.call, object_id, method, a, k)
        return rehydrate(result)

    def _emit_event(self, name: str, payload: Any) -> None:
        _blocking(self._host.call, "_event_bridge", "dispatch", (name, prepare(payload, cuda=_cuda_ok())), {})


class WorkerDispatcher:
    """Serves the host's pyisolate calls to this worker's named callees."""

    def __init__(self) -> None:
        self.rpc: Optional[ChildRPC] = None

    def _target(self, object_id: Any) -> Any:
        callees = self.rpc.callees if self.rpc is not None else {}
        target = callees.get(object_id) if isinstance(object_id, str) else None
        if target is None:
            raise LookupError(f"no object {object_id!r} is registered in this extension's worker")
        return target

    def call(self, object_id: str, method: str, args: Any, kwargs: Any) -> Any:
        """Call ``method`` of the callee ``object_id`` (sync methods run on this thread,
        async ones on the worker's loop)."""
        target = self._target(object_id)
        if not isinstance(method, str) or method.startswith("_"):
            raise AttributeError(f"{method!r} is not reachable remotely")
        fn = getattr(target, method)
        if not callable(fn):
            raise TypeError(f"{object_id}.{method} is not callable")
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise TypeError("malformed pyisolate call")
        args, kwargs = rehydrate(tuple(args)), rehydrate(kwargs)
        if is_async_callable(fn):
            return self._finish(fn(*args, **kwargs))
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return self._finish(result)
        return prepare(result, cuda=_cuda_ok())

    async def _finish(self, aw: Any) -> Any:
        return prepare(await aw, cuda=_cuda_ok())

    def methods(self, object_id: str) -> List[str]:
        """The public callables of callee ``object_id``."""
        target = self._target(object_id)
        return sorted(n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None)))


class _Child:
    """This worker's pyisolate state (one per worker process)."""

    def __init__(self, info: Dict[str, Any], dispatcher: WorkerDispatcher) -> None:
        self.info = info
        self.dispatcher = dispatcher
        self.rpc = ChildRPC(info["callees"])
        dispatcher.rpc = self.rpc
        self.adapter: Any = None
        self.apis: List[type] = []

    def setup(self) -> None:
        for p in reversed(self.info.get("sys_path") or []):
            if p in sys.path:
                sys.path.remove(p)
            sys.path.insert(0, p)
        from .adapter_registry import AdapterRegistry
        from .serialization_registry import SerializerRegistry

        ref = self.info.get("adapter")
        if ref:
            try:
                self.adapter = _import_ref(ref)()
            except Exception as e:  # noqa: BLE001 - reported; the extension still loads
                # pyisolate's children import it with the host's whole sys.path; a nodecell
                # worker has its own venv (plus the adapter's paths), which may lack its imports.
                log.warning("the adapter %s could not be set up in this worker (%s: %s): its serializers and "
                            "child hooks are not available here; add what it imports to the pack's "
                            "dependencies", ref, type(e).__name__, e)
                self.adapter = None
        if self.adapter is not None:
            AdapterRegistry.unregister()
            AdapterRegistry.register(self.adapter)
            if self.info.get("execution_model") != "sealed_worker":
                self.adapter.setup_child_environment(self.info.get("snapshot") or {})
            self.adapter.register_serializers(SerializerRegistry.get_instance())
        set_child_rpc_instance(self.rpc)
        self.apis = [_import_ref(a) for a in self.info.get("apis") or []]

    def adopt(self, ext: Any) -> None:
        """Right after the extension object is created (before its hooks run): it becomes
        the callee ``"extension"``; the services get their callers (once per worker)."""
        init = getattr(ext, "_initialize_rpc", None)
        if callable(init):
            init(self.rpc)
        self.rpc.callees["extension"] = ext
        apis, self.apis = self.apis, []
        for api in apis:
            api.use_remote(self.rpc)
            if self.adapter is not None:
                self.adapter.handle_api_registration(getattr(api, "instance", api), self.rpc)
        hook = getattr(self.adapter, "setup_child_event_hooks", None)
        if callable(hook):
            hook(ext)


_child: Optional[_Child] = None


def _import_ref(ref: str) -> Any:
    """``"package.module:Qual.Name"`` -> the object (names come from the host, never the worker)."""
    module, _, qual = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def bootstrap(ep: Any) -> Optional[Callable[[Any], None]]:
    """The worker init hook (see the module doc); returns the after-creation hook."""
    global _child
    token = os.environ.get("NODECELL_PYISOLATE_TOKEN")
    if not token:
        return None
    from ._nc_bridge import PyisolateBridge

    dispatcher = WorkerDispatcher()
    info = PyisolateBridge().attach(token, dispatcher)
    _child = _Child(info, dispatcher)
    _child.setup()
    return _child.adopt


async def adopt_from_module(module: Any) -> None:
    """The manager was given the bare ``ExtensionBase`` (pyisolate's README does): use the
    extension the pack defines, ``extension_entrypoint()`` or its one ``ExtensionBase``
    subclass, in place of the bare one (its hooks run now, with the loaded module)."""
    from ..shared import ExtensionBase, ExtensionLocal

    make = getattr(module, "extension_entrypoint", None)
    if not callable(make):
        found = [v for v in vars(module).values()
                 if isinstance(v, type) and issubclass(v, ExtensionLocal) and v is not ExtensionBase
                 and v.__module__ == module.__name__]
        if len(found) != 1:
            return
        make = found[0]
    ext = make()
    if _child is not None:
        _child.adopt(ext)
    for hook, args in ((getattr(ext, "before_module_loaded", None), ()),
                       (getattr(ext, "on_module_loaded", None), (module,))):
        if callable(hook):
            r = hook(*args)
            if inspect.isawaitable(r):
                await r
