"""pyisolate's RPC names (``pyisolate._internal.rpc_protocol``) on nodecell's channel.

* :class:`ProxiedSingleton` / :class:`SingletonMetaclass`: pyisolate's semantics
  (``get_remote_id()`` is the class name, ``inject_instance`` refuses an existing
  singleton, ``use_remote(rpc)`` installs a caller plus callers for type-hinted
  singleton attributes, ``_register(rpc)`` registers nested singleton instances),
  built on nodecell's classes so nodecell accepts them too.
* :class:`AsyncRPC`: one side's named objects (``register_callee``) and callers for
  the other side's (``create_caller``). There is no queue, thread or socket of its
  own: calls travel over the extension's nodecell channel (see ``_nc_bridge``).
  ``get_child_rpc_instance()`` is the worker's, as in pyisolate.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import typing
import uuid
from typing import Any, Callable, Dict, Optional, Set, TypeVar

from ....shared import ProxiedSingleton as _NodecellSingleton
from ....shared import SingletonMetaclass as _NodecellMeta
from ....shared import local_execution

__all__ = ["AsyncRPC", "LocalMethodRegistry", "ProxiedSingleton", "SingletonMetaclass", "local_execution",
           "get_child_rpc_instance", "set_child_rpc_instance"]

log = logging.getLogger(__name__)
proxied_type = TypeVar("proxied_type", bound=object)
T = TypeVar("T")

_child_rpc_instance: Optional["AsyncRPC"] = None


def set_child_rpc_instance(rpc: Optional["AsyncRPC"]) -> None:
    """Set the RPC of this (worker) process."""
    global _child_rpc_instance
    _child_rpc_instance = rpc


def get_child_rpc_instance() -> Optional["AsyncRPC"]:
    """The RPC of this process when it is an extension's worker, else None."""
    return _child_rpc_instance


class LocalMethodRegistry:
    """Which :func:`local_execution` methods of a proxied class run in the calling process,
    and the local instance they run on (one per class, per process)."""

    _instance: Optional["LocalMethodRegistry"] = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._local_implementations: Dict[type, object] = {}
        self._local_methods: Dict[type, Set[str]] = {}

    @classmethod
    def get_instance(cls) -> "LocalMethodRegistry":
        """The process's registry."""
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance

    def register_class(self, cls: type) -> None:
        """Make a local instance of ``cls`` (its ``__init__`` runs, the singleton registry
        is bypassed) and record its local-execution methods."""
        local: Any = object.__new__(cls)
        cls.__init__(local)  # type: ignore[misc]
        self._local_implementations[cls] = local
        names = set()
        for name in dir(cls):
            if name.startswith("_"):
                continue
            attr = getattr(cls, name, None)
            if callable(attr) and getattr(attr, "_is_local_execution", False):
                names.add(name)
        self._local_methods[cls] = names

    def is_local_method(self, cls: type, method_name: str) -> bool:
        """Whether ``method_name`` of ``cls`` runs locally."""
        return method_name in self._local_methods.get(cls, ())

    def get_local_method(self, cls: type, method_name: str) -> Callable[..., Any]:
        """The bound local method; ValueError when ``cls`` was never registered."""
        if cls not in self._local_implementations:
            raise ValueError(f"Class {cls} not registered for local execution")
        return getattr(self._local_implementations[cls], method_name)


class AsyncRPC:
    """One side of an extension's RPC: named callees here, callers for the other side's.

    Made by nodecell for each extension (host side) and for its worker (child side);
    pyisolate's own constructor arguments (queues, a transport) have no meaning here.
    """

    def __init__(self, recv_queue: Any = None, send_queue: Any = None, *, transport: Any = None) -> None:
        if recv_queue is not None or send_queue is not None or transport is not None:
            raise NotImplementedError(
                "nodecell carries pyisolate's RPC over its own channel: an AsyncRPC over queues or a "
                "transport cannot be made; use the one of a loaded extension (ext.rpc, "
                "get_child_rpc_instance() in a worker)")
        self.id = str(uuid.uuid4())
        self.lock = threading.Lock()
        self.callees: Dict[str, object] = {}
        self.blocking_future: Optional[asyncio.Future] = None
        self._stopped = threading.Event()
        try:
            self.default_loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            self.default_loop = None

    # -- pyisolate's API ---------------------------------------------------------------------

    def register_callee(self, object_instance: object, object_id: str) -> None:
        """Let the other side call ``object_instance``'s methods as ``object_id``."""
        with self.lock:
            if object_id in self.callees:
                raise ValueError(f"Object ID {object_id} already registered")
            self.callees[object_id] = object_instance

    def create_caller(self, abc: "type[proxied_type]", object_id: str) -> proxied_type:
        """A proxy whose methods (those ``abc`` defines) call the other side's ``object_id``.
        Every call returns an awaitable; :func:`local_execution` methods run here."""
        return typing.cast(proxied_type, _Caller(self, abc, object_id))

    def update_event_loop(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        """Record the caller's loop (nodecell's callers work from any loop: nothing depends on it)."""
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self.default_loop = loop

    def run(self) -> None:
        """pyisolate starts its send/receive threads here; nodecell's channel needs none."""

    async def run_until_stopped(self) -> None:
        """Wait until :meth:`stop` or :meth:`shutdown`."""
        while not self._stopped.is_set():
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Mark this RPC stopped (the process itself is ended by the host's ``stop()``)."""
        self._stopped.set()

    def shutdown(self) -> None:
        """Mark this RPC stopped."""
        self._stopped.set()

    # -- what nodecell's sides provide -----------------------------------------------------------

    async def _call(self, object_id: str, method: str, args: tuple, kwargs: dict) -> Any:
        raise RuntimeError("this AsyncRPC is not connected to an extension")

    def _defers(self, abc: type, object_id: str, name: str) -> bool:
        """Whether a name ``abc`` lacks may still be a method on the other side (checked when called)."""
        return False

    def _emit_event(self, name: str, payload: Any) -> None:
        raise RuntimeError("emit_event() sends from an extension's worker to its host")


class _Caller:
    """What :meth:`AsyncRPC.create_caller` returns: ``abc``'s methods, called remotely."""

    def __init__(self, rpc: AsyncRPC, abc: type, object_id: str) -> None:
        self.__dict__["_nc_target"] = (rpc, abc, object_id)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(f"{name} is not a valid method")
        rpc, abc, object_id = self.__dict__["_nc_target"]
        attr = getattr(abc, name, None)
        if callable(attr):
            registry = LocalMethodRegistry.get_instance()
            if registry.is_local_method(abc, name):
                return registry.get_local_method(abc, name)
        elif not rpc._defers(abc, object_id, name):
            raise AttributeError(f"{name} is not a valid method")

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await rpc._call(object_id, name, args, kwargs)

        method.__name__ = name
        method.__qualname__ = f"{getattr(abc, '__qualname__', abc)}.{name}"
        return method

    def __repr__(self) -> str:
        _rpc, abc, object_id = self.__dict__["_nc_target"]
        return f"<pyisolate caller {object_id!r} ({getattr(abc, '__qualname__', abc)})>"


# -- singletons --------------------------------------------------------------------------------------

class SingletonMetaclass(_NodecellMeta):
    """``Cls()`` is the one instance (or the remote caller :meth:`use_remote` injected).

    ``SingletonMetaclass._instances`` is the process-wide table (shared with nodecell's
    own singletons, so ``singleton_scope()`` covers both)."""

    def inject_instance(cls, instance: Any) -> None:  # noqa: N805 - a metaclass method
        """Make ``cls()`` return ``instance``; only before ``cls`` was instantiated."""
        assert cls not in SingletonMetaclass._instances, (
            f"Cannot inject instance for {cls.__name__}: singleton already exists. "
            f"Instance was likely created before injection attempt. "
            f"Ensure inject_instance() is called before any instantiation.")
        SingletonMetaclass._instances[cls] = instance

    def use_remote(cls, rpc: AsyncRPC) -> None:  # noqa: N805
        """Make ``cls()`` a caller of the other side's instance (``rpc.create_caller(cls,
        cls.get_remote_id())``), with callers for attributes type-hinted as singletons."""
        assert isinstance(cls, type) and issubclass(cls, ProxiedSingleton), (
            f"Class {cls.__name__} must inherit from ProxiedSingleton to use remote RPC capabilities.")
        remote = rpc.create_caller(cls, cls.get_remote_id())
        LocalMethodRegistry.get_instance().register_class(cls)
        cls.inject_instance(remote)
        for name, hint in _type_hints(cls).items():
            if isinstance(hint, type) and issubclass(hint, ProxiedSingleton) and not name.startswith("_"):
                setattr(remote, name, rpc.create_caller(hint, hint.get_remote_id()))


def _type_hints(cls: type) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable forward references: use what is there
        hints: Dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            hints.update({k: v for k, v in getattr(klass, "__annotations__", {}).items() if isinstance(v, type)})
        return hints


class ProxiedSingleton(_NodecellSingleton, metaclass=SingletonMetaclass):
    """A host service extensions reach through a caller (pyisolate's semantics)."""

    def __init__(self) -> None:
        object.__init__(self)

    @classmethod
    def get_remote_id(cls) -> str:
        """The name both sides use for it: the class name."""
        return cls.__name__

    def _register(self, rpc: AsyncRPC) -> None:
        """Register this instance as a callee, and the singleton instances its class holds."""
        rpc.register_callee(self, self.get_remote_id())
        for name, attr in self.__class__.__dict__.items():
            if isinstance(attr, ProxiedSingleton) and not name.startswith("_") and attr is not self:
                attr._register(rpc)

