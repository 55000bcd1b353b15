"""How a pyisolate-style extension's two sides find each other over nodecell (host side).

Every worker of an extension loaded through :mod:`nodecell.compat.pyisolate` has one
nodecell service, :class:`PyisolateBridge`. Before its extension type is imported,
the worker calls ``PyisolateBridge().attach(token, dispatcher)``:

* ``token`` (from the worker's environment, 128 random bits per extension) names
  the extension; a worker can only ever attach to its own;
* ``dispatcher`` (the worker's object serving pyisolate calls) crosses as a nodecell
  handle: the host calls the worker's named callees through it;
* the reply carries what the worker needs to set up pyisolate's child state (the
  adapter, paths, services) and a handle to :class:`HostCallees`, through which the
  worker calls the host's named callees (services, the event bridge).

Values go through the serializer registry on both sides (:mod:`._nc_wire`).
"""

from __future__ import annotations

import inspect
import secrets
import threading
import weakref
from typing import Any, Dict

from ....shared import ProxiedSingleton as _NodecellSingleton
from ._nc_wire import prepare, rehydrate

__all__ = ["PyisolateBridge", "HostCallees", "new_token", "register_link", "forget_link"]

_links: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_lock = threading.Lock()


def new_token() -> str:
    """A fresh extension token."""
    return secrets.token_hex(16)


def register_link(token: str, ext: Any) -> None:
    """Let workers holding ``token`` attach to ``ext`` (a compat ``Extension``)."""
    with _lock:
        _links[token] = ext


def forget_link(token: str) -> None:
    """No worker may attach with ``token`` any more."""
    with _lock:
        _links.pop(token, None)


class PyisolateBridge(_NodecellSingleton):
    """The nodecell service every pyisolate-style worker calls once, at start."""

    def attach(self, token: str, dispatcher: Any) -> Dict[str, Any]:
        """Record the worker's dispatcher for the extension ``token`` names; return the
        worker's set-up (see the module doc)."""
        with _lock:
            ext = _links.get(token) if isinstance(token, str) else None
        if ext is None:
            raise PermissionError("unknown pyisolate extension token")
        return ext._nc_attached(dispatcher)


class HostCallees:
    """The host's named callees of one extension, as its worker reaches them."""

    def __init__(self, rpc: Any, cuda: bool = True) -> None:
        self._rpc = rpc
        self._cuda = cuda

    async def call(self, object_id: str, method: str, args: Any, kwargs: Any) -> Any:
        """Call ``method`` of the host object registered as ``object_id``."""
        callee = self._rpc.callees.get(object_id) if isinstance(object_id, str) else None
        if callee is None:
            raise LookupError(f"no object {object_id!r} is registered on the host for this extension")
        if not isinstance(method, str) or method.startswith("_"):
            raise AttributeError(f"{method!r} is not reachable remotely")
        fn = getattr(callee, method)
        if not callable(fn):
            raise TypeError(f"{object_id}.{method} is not callable")
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise TypeError("malformed pyisolate call")
        result = fn(*rehydrate(tuple(args)), **rehydrate(kwargs))
        if inspect.isawaitable(result):
            result = await result
        return prepare(result, cuda=self._cuda)
