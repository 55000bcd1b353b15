"""The RPC layer shared by host and worker: values, remote handles, call frames.

A frame is ``(kind, call_id, payload)``; the channel (Rust, ``_nodecell.Channel``)
encodes payload values of the closed set (None, bool, int, float, str, bytes,
list, tuple, dict, set) itself and asks :meth:`Endpoint.encode_hook` for
anything else, which answers with one of the wire's marker types:

* ``_nodecell.TensorRef`` for numpy arrays / torch tensors in arenas,
* ``_nodecell.Record(name, fields)`` for registered dataclasses and enums
  (and ``nodecell.*`` records: inline arrays, exceptions as values),
* ``_nodecell.HandleRef(id, sender_owns, kind)`` for everything else, which
  the receiver sees as a :class:`RemoteObject` / :class:`RemoteCallable` proxy.

Decoding never imports anything or looks a type up by a name the peer chose,
except in the registry of types the *host* registered.

Payloads:
  CALL / CALLBACK  ``(target_handle_id, method_name, args_tuple, kwargs_dict)``
  REPLY            the return value
  ERROR            ``_nodecell.ErrorValue`` (type name, message, traceback text)
  CANCEL           None
  RELEASE          list of released handle ids, one entry per reference
  LOG              ``(levelno, logger_name, message)``
  HEARTBEAT        None
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import inspect
import itertools
import sys
import threading
import traceback
import types
import weakref
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import _nodecell, _tensors
from .errors import RemoteError, remote_error

CALL = _nodecell.KIND_CALL
REPLY = _nodecell.KIND_REPLY
ERROR = _nodecell.KIND_ERROR
CALLBACK = _nodecell.KIND_CALLBACK
CANCEL = _nodecell.KIND_CANCEL
RELEASE = _nodecell.KIND_RELEASE
LOG = _nodecell.KIND_LOG
HEARTBEAT = _nodecell.KIND_HEARTBEAT

#: Handle id of the extension object in a worker.
EXTENSION_ID = 0
#: Handle id of the worker's control object (init, stop, ping).
CONTROL_ID = 1
_FIRST_DYNAMIC_ID = 1024

KIND_OBJECT = _nodecell.HANDLE_OBJECT
KIND_CALLABLE = _nodecell.HANDLE_CALLABLE
KIND_ASYNC_CALLABLE = _nodecell.HANDLE_ASYNC_CALLABLE


# -- the registry of types the host allows to cross by value ------------------------------

_RECORD_TYPES: Dict[str, type] = {}
_RECORD_NAMES: Dict[type, str] = {}


def register_type(cls: type, name: Optional[str] = None) -> type:
    """Let instances of a dataclass or Enum cross by value (fields / member value).

    Both sides must register the same class under the same name (the default is
    ``module:qualname``); registering in the host before loading extensions is
    enough: workers import the registered classes from the host's files. Usable
    as a decorator.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)) and not (
        isinstance(cls, type) and issubclass(cls, enum.Enum)
    ):
        raise TypeError(f"register_type: {cls!r} is neither a dataclass nor an Enum")
    key = name or f"{cls.__module__}:{cls.__qualname__}"
    if key.startswith("nodecell."):
        raise ValueError("names starting with 'nodecell.' are reserved")
    _RECORD_TYPES[key] = cls
    _RECORD_NAMES[cls] = key
    return cls


def registered_types() -> Dict[str, type]:
    """The registered record types by name."""
    return dict(_RECORD_TYPES)


# -- exceptions as values ------------------------------------------------------------------

def error_value(exc: BaseException) -> Any:
    """Describe an exception as data: its type name, message and formatted traceback."""
    if isinstance(exc, RemoteError):
        return _nodecell.ErrorValue(exc.remote_type, exc.remote_message, exc.remote_traceback)
    tname = type(exc).__qualname__
    mod = type(exc).__module__
    if mod not in ("builtins", "__main__"):
        tname = f"{mod}.{tname}"
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break error reporting
        msg = "<unprintable>"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _nodecell.ErrorValue(tname, msg[:65536], tb[-262144:])


# -- proxies for objects the peer owns -------------------------------------------------------

class RemoteObject:
    """A proxy for an object that lives in the other process.

    Attribute and method calls run in the owning process: in a worker, they block
    and return the value (from any thread, also inside the worker's event loop); in
    the host, they return awaitables (the host's API is async-first: ``await
    obj.method()``). The object is released in its owner when the last proxy is
    collected.
    """

    __slots__ = ("_nc_endpoint", "_nc_id", "_nc_count", "_nc_async", "__weakref__")

    def __init__(self, endpoint: "Endpoint", hid: int, is_async: bool = False) -> None:
        object.__setattr__(self, "_nc_endpoint", endpoint)
        object.__setattr__(self, "_nc_id", hid)
        object.__setattr__(self, "_nc_count", 0)
        object.__setattr__(self, "_nc_async", is_async)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _RemoteMethod(self._nc_endpoint, self._nc_id, name)

    def __repr__(self) -> str:
        return f"<nodecell.RemoteObject #{self._nc_id} in {self._nc_endpoint.peer_name}>"

    def __del__(self) -> None:
        ep = self._nc_endpoint
        if ep is not None and self._nc_count:
            ep.release_later(self._nc_id, self._nc_count)

    def getattr(self, name: str) -> Any:
        """Read attribute ``name`` of the remote object (blocks in a worker, awaitable in the host)."""
        return self._nc_endpoint.call_remote(self._nc_id, "__getattr__", (name,), {})


class RemoteCallable(RemoteObject):
    """A proxy for a function owned by the other process (a callback, a patch).

    Calling it does what calling the function itself would: the handle says whether
    the remote function is ``async def`` (:attr:`is_async`). A plain function blocks
    the calling thread and returns its value — on any thread, with or without an
    event loop running in it; calls the other side makes back meanwhile run on this
    same thread. An ``async def`` one returns a coroutine (await it on any loop).
    :meth:`call_sync` / :meth:`call_async` force either form.
    """

    __slots__ = ()

    @property
    def is_async(self) -> bool:
        """Whether the remote function is ``async def`` (calling it gives an awaitable)."""
        return self._nc_async

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._nc_async:
            return self._nc_endpoint.call_remote_async(self._nc_id, "__call__", args, kwargs)
        return self._nc_endpoint.call_remote_sync(self._nc_id, "__call__", args, kwargs)

    def call_sync(self, *args: Any, **kwargs: Any) -> Any:
        """Call it and return the value, blocking this thread (also for an ``async def`` function)."""
        return self._nc_endpoint.call_remote_sync(self._nc_id, "__call__", args, kwargs)

    def call_async(self, *args: Any, **kwargs: Any) -> Any:
        """Call it and return an awaitable of the value (also for a plain function)."""
        return self._nc_endpoint.call_remote_async(self._nc_id, "__call__", args, kwargs)

    def __repr__(self) -> str:
        kind = "async " if self._nc_async else ""
        return f"<nodecell.RemoteCallable {kind}#{self._nc_id} in {self._nc_endpoint.peer_name}>"


class _RemoteMethod:
    __slots__ = ("_ep", "_hid", "_name")

    def __init__(self, ep: "Endpoint", hid: int, name: str) -> None:
        self._ep, self._hid, self._name = ep, hid, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ep.call_remote(self._hid, self._name, args, kwargs)

    def call_sync(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method and return the value, blocking this thread (host or worker)."""
        return self._ep.call_remote_sync(self._hid, self._name, args, kwargs)

    def call_async(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method and return an awaitable of the value (host or worker)."""
        return self._ep.call_remote_async(self._hid, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of #{self._hid}>"


# -- the endpoint ----------------------------------------------------------------------------

class Endpoint:
    """One side of one channel: handle tables, encoding hooks, call dispatch.

    Subclasses decide how waiting works (asyncio futures in the host, threads in
    the worker) via :meth:`call_remote`, :meth:`_deliver` and :meth:`_run_incoming`.
    """

    #: Whether this side refuses to export modules and classes as handles (the host).
    restrict_exports = False
    #: The proxy classes the peer's objects and callables are decoded as (subclasses of
    #: :class:`RemoteObject` / :class:`RemoteCallable` with no new slots). A worker takes
    #: its extension type's ``remote_proxy_types`` when set (nodecell.studio: host objects
    #: with attribute access, whatever path they arrive by: node inputs, callback arguments).
    proxy_types: Tuple[type, type] = (RemoteObject, RemoteCallable)

    def __init__(self, channel: Any, peer_name: str) -> None:
        self.channel = channel
        self.peer_name = peer_name
        self._lock = threading.RLock()
        self._ids = itertools.count(_FIRST_DYNAMIC_ID)
        self._call_ids = itertools.count(1)
        # Our objects the peer holds: id -> [object, outstanding count]
        self.exported: Dict[int, List[Any]] = {}
        self._export_ids: Dict[int, int] = {}
        # Peer objects we hold proxies for.
        self.proxies: "weakref.WeakValueDictionary[int, RemoteObject]" = weakref.WeakValueDictionary()
        # Fixed handles (extension, control, singletons): never released.
        self.pinned: Dict[int, Any] = {}
        # Appended to by proxy finalizers on any thread (wherever the GC runs), drained by
        # `take_releases`: a deque, whose append and popleft are atomic.
        self._release_queue: Deque[Tuple[int, int]] = collections.deque()
        self.closed = False
        channel.set_hooks(self.encode_hook, _tensors.decode_tensor, self.decode_handle,
                          self.decode_record, self.decode_error)

    # -- encoding ----------------------------------------------------------------------------

    def encode_hook(self, obj: Any) -> Any:
        """Map a non-native value to a wire marker (called by the channel's encoder)."""
        mods = sys.modules
        np = mods.get("numpy")
        if np is not None:
            if isinstance(obj, np.ndarray):
                return _tensors.encode_numpy(obj, self.channel)
            if isinstance(obj, np.generic):
                return obj.item()
        tm = mods.get("torch")
        if tm is not None and isinstance(obj, tm.Tensor):
            return _tensors.encode_torch(obj, self.channel)
        cls = type(obj)
        name = _RECORD_NAMES.get(cls)
        if name is not None:
            if isinstance(obj, enum.Enum):
                return _nodecell.Record(name, {"value": obj.value})
            return _nodecell.Record(name, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
        if isinstance(obj, BaseException):
            return error_value(obj)
        if isinstance(obj, RemoteObject) and obj._nc_endpoint is self:
            return _nodecell.HandleRef(obj._nc_id, False, KIND_OBJECT)
        # Subclasses of native containers cross as their base type.
        for base in (bool, int, float, str, bytes, tuple, list, dict, frozenset, set):
            if isinstance(obj, base) and not isinstance(obj, enum.Enum):
                return base(obj)
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        return self.export(obj)

    def export(self, obj: Any) -> Any:
        """Give ``obj`` a handle id and return the marker naming it."""
        if self.restrict_exports and isinstance(obj, (types.ModuleType, type)):
            raise TypeError(
                f"{obj!r} cannot be sent to a worker: modules and classes never cross as handles")
        if callable(obj) and not isinstance(obj, type):
            kind = KIND_ASYNC_CALLABLE if is_async_callable(obj) else KIND_CALLABLE
        else:
            kind = KIND_OBJECT
        with self._lock:
            hid = self._export_ids.get(id(obj))
            if hid is None or self.exported.get(hid, [None])[0] is not obj:
                hid = next(self._ids)
                self.exported[hid] = [obj, 0]
                self._export_ids[id(obj)] = hid
            self.exported[hid][1] += 1
        return _nodecell.HandleRef(hid, True, kind)

    def pin(self, hid: int, obj: Any) -> None:
        """Expose ``obj`` under the fixed id ``hid`` (never released)."""
        self.pinned[hid] = obj

    # -- decoding ----------------------------------------------------------------------------

    def decode_tensor(self, capsule: Any, kind: str, writable: bool) -> Any:
        return _tensors.decode_tensor(capsule, kind, writable)

    def decode_handle(self, hid: int, sender_owns: bool, kind: str) -> Any:
        if not sender_owns:
            # One of ours coming back.
            with self._lock:
                ent = self.exported.get(hid)
            if ent is not None:
                return ent[0]
            if hid in self.pinned:
                return self.pinned[hid]
            raise ValueError(f"peer named handle #{hid}, which this side does not own")
        with self._lock:
            p = self.proxies.get(hid)
            if p is None:
                obj_t, call_t = self.proxy_types
                if kind == KIND_OBJECT:
                    p = obj_t(self, hid)
                else:
                    p = call_t(self, hid, kind == KIND_ASYNC_CALLABLE)
                self.proxies[hid] = p
            object.__setattr__(p, "_nc_count", p._nc_count + 1)
        return p

    def decode_record(self, name: str, fields: Dict[str, Any]) -> Any:
        cls = _RECORD_TYPES.get(name)
        if cls is None:
            raise ValueError(f"record type {name!r} is not registered on this side (nodecell.register_type)")
        if issubclass(cls, enum.Enum):
            return cls(fields.get("value"))
        allowed = {f.name for f in dataclasses.fields(cls)}
        extra = set(fields) - allowed
        if extra:
            raise ValueError(f"record {name!r} has unknown fields {sorted(extra)}")
        return cls(**fields)

    def decode_error(self, type_name: str, message: str, tb: str) -> Any:
        return remote_error(type_name, message, tb)

    # -- incoming frames -----------------------------------------------------------------------

    def handle_frame(self, kind: int, call_id: int, payload: Any) -> None:
        """Route one received frame."""
        if kind == REPLY:
            self._deliver(call_id, payload, None)
        elif kind == ERROR:
            err = payload if isinstance(payload, BaseException) else RemoteError("ProtocolError", repr(payload))
            self._deliver(call_id, None, err)
        elif kind in (CALL, CALLBACK):
            self._run_incoming(call_id, payload)
        elif kind == RELEASE:
            self._release_exports(payload)
        elif kind == CANCEL:
            self._cancel_incoming(call_id)
        elif kind == LOG:
            self._log(payload)
        elif kind == HEARTBEAT:
            pass

    def resolve_target(self, target: int, method: str) -> Callable[..., Any]:
        """The local callable a CALL frame names, or raise (private names are refused)."""
        if not isinstance(target, int) or not isinstance(method, str):
            raise TypeError("malformed call frame")
        with self._lock:
            ent = self.exported.get(target)
        obj = ent[0] if ent is not None else self.pinned.get(target)
        if obj is None:
            raise LookupError(f"no object #{target} here (released or never sent)")
        if method == "__call__":
            if not callable(obj):
                raise TypeError(f"object #{target} is not callable")
            return obj
        if method == "__getattr__":
            def _get(name: str) -> Any:
                if not isinstance(name, str) or name.startswith("_"):
                    raise AttributeError(f"attribute {name!r} is not reachable remotely")
                return getattr(obj, name)
            return _get
        if method.startswith("_"):
            raise AttributeError(f"method {method!r} is not reachable remotely (private)")
        fn = getattr(obj, method)
        if not callable(fn):
            raise TypeError(f"{method!r} of object #{target} is not callable")
        return fn

    def _release_exports(self, ids: Any) -> None:
        """The peer dropped references to our objects: one list entry per reference."""
        if not isinstance(ids, list):
            return
        with self._lock:
            for hid in ids:
                ent = self.exported.get(hid)
                if ent is None:
                    continue
                ent[1] -= 1
                if ent[1] <= 0:
                    del self.exported[hid]
                    self._export_ids.pop(id(ent[0]), None)

    def release_later(self, hid: int, count: int) -> None:
        """Queue a release of a peer handle (called from proxy finalizers; sent with the next frame)."""
        if self.closed:
            return
        self._release_queue.append((hid, count))
        self._schedule_release_flush()

    def take_releases(self) -> List[int]:
        """Take the queued releases: one handle id per released reference. Safe against
        finalizers queueing more on other threads meanwhile (nothing queued is lost)."""
        q = self._release_queue
        ids: List[int] = []
        while True:
            try:
                hid, n = q.popleft()
            except IndexError:
                return ids
            ids.extend([hid] * n)

    def flush_releases(self) -> None:
        """Send queued releases as one RELEASE frame."""
        if not self._release_queue or self.closed:
            return
        ids = self.take_releases()
        try:
            self.channel.send(RELEASE, 0, ids)
        except Exception:  # noqa: BLE001 - a dead channel has nothing to release
            pass

    # -- subclass hooks --------------------------------------------------------------------------

    def _schedule_release_flush(self) -> None:
        raise NotImplementedError

    def call_remote(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        """A method call on a peer object (blocking in a worker, an awaitable in the host)."""
        raise NotImplementedError

    def call_remote_sync(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        """Call the peer and return the value, blocking this thread (nested calls from the
        peer are served on it meanwhile)."""
        return self.call_remote(target, method, args, kwargs)

    def call_remote_async(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        """Call the peer and return an awaitable of the value."""
        return self.call_remote(target, method, args, kwargs)

    def _deliver(self, call_id: int, value: Any, error: Optional[BaseException]) -> None:
        raise NotImplementedError

    def _run_incoming(self, call_id: int, payload: Any) -> None:
        raise NotImplementedError

    def _cancel_incoming(self, call_id: int) -> None:
        pass

    def _log(self, payload: Any) -> None:
        pass


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine (async def, or a callable object with one)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)
