"""The app's model objects in a pack's worker: handles to the host's objects.

MODEL (``ModelPatcher``), CLIP, VAE, CONTROL_NET, CLIP_VISION, UPSCALE_MODEL and
any other object that is not data stay in the host, where the weights (and the
GPU memory) are; a node in a worker receives a handle. :class:`HostObject` is
what such a handle looks like to pack code: reading an attribute reads it in
the host (``model.model_options``, ``model.load_device``; data comes back as a
copy, objects as further handles), calling a method calls it there
(``m = model.clone()``, ``m.set_model_unet_function_wrapper(fn)``); a function
the pack passes (a wrapper, a CFG function, an attention patch) becomes a
callback into the worker. Returned to the host, a handle is the host's own
object again. Each handle keeps its object alive in the host for as long as
the worker holds it (and the host's own references keep it alive anyway).
CONDITIONING and LATENT are data: lists and dicts whose tensors cross without
copies.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

from .._rpc import RemoteCallable, RemoteObject

__all__ = ["HostObject", "HostCallable", "PROXY_TYPES", "adopt", "set_type_lookup"]

log = logging.getLogger("nodecell.studio")


class _HostAttrs:
    """Attribute access of a host object seen from a worker (mixed into both handle kinds)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return adopt(self._nc_endpoint.call_remote(self._nc_id, "__getattr__", (name,), {}))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot set {name!r} on a host object from an isolated pack: it lives in the host "
                             f"(use its methods, e.g. ModelPatcher.set_model_* / add_object_patch)")


class HostObject(_HostAttrs, RemoteObject):
    """A host object seen from a worker: attributes are read, methods called, in the host."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<nodecell.studio.HostObject #{self._nc_id} in {self._nc_endpoint.peer_name}>"


class HostCallable(_HostAttrs, RemoteCallable):
    """A callable host object seen from a worker: a bound method (``model.clone``), a function
    (the sampler's ``apply_model``), or an object that is callable *and* has attributes (a
    ``torch.nn.Module``: ``model.model.diffusion_model``). Calling it calls it in the host (results
    adopted); its attributes are read there like a :class:`HostObject`'s."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return adopt(RemoteCallable.__call__(self, *args, **kwargs))

    def __repr__(self) -> str:
        return f"<nodecell.studio.HostCallable #{self._nc_id} in {self._nc_endpoint.peer_name}>"


#: The proxy types of a Studio worker's endpoint (``ExtensionBase.remote_proxy_types``): every
#: host object the worker receives (node inputs, arguments of the pack's callbacks, results) is one.
PROXY_TYPES = (HostObject, HostCallable)


#: The host's answer to "what are these objects' classes" (``AppServices.types_of``), set by the
#: app's worker set-up; None without a host app (handles then keep their generic class).
_types_of: Optional[Callable[[List[Any]], List[Tuple[str, str]]]] = None
_NAMED: Dict[Tuple[type, str, str], type] = {}


def set_type_lookup(fn: Optional[Callable[[List[Any]], List[Tuple[str, str]]]]) -> None:
    """Name handles after their host classes with ``fn(handles) -> [(module, qualname)]``
    (called once per batch of new handles, in the host)."""
    global _types_of
    _types_of = fn


def _named_class(base: type, module: str, qualname: str) -> type:
    """The handle class standing for host class ``module.qualname``: ``type(h).__name__`` and
    ``__qualname__``/``__module__`` are the host class's (what packs print and compare)."""
    key = (base, module, qualname)
    cls = _NAMED.get(key)
    if cls is None:
        cls = type(qualname.rpartition(".")[2] or base.__name__, (base,),
                   {"__slots__": (), "__module__": module, "__qualname__": qualname,
                    "__doc__": f"A handle to a {module}.{qualname} in the host (see nodecell.studio.objects)."})
        _NAMED[key] = cls
    return cls


def adopt(value: Any) -> Any:
    """Turn plain handles to the host's objects inside ``value`` (lists, tuples, dicts) into
    :class:`HostObject` / :class:`HostCallable` (in place: the same handle, no new reference),
    and name new ones after their host classes (one call to the host per batch). A Studio
    worker's endpoint decodes handles as these classes already (:data:`PROXY_TYPES`)."""
    new: List[Any] = []
    value = _adopt(value, new, 0)
    fn = _types_of
    if new and fn is not None:
        try:
            names = fn(new)
        except Exception as e:  # noqa: BLE001 - names are a nicety: the handles work without them
            log.debug("could not name host handles: %s", e)
            return value
        for h, (module, qualname) in zip(new, names):
            if type(h) in PROXY_TYPES:
                object.__setattr__(h, "__class__", _named_class(type(h), str(module), str(qualname)))
    return value


def _adopt(value: Any, new: List[Any], depth: int) -> Any:
    if depth > 32:
        return value
    t = type(value)
    if t is RemoteObject or t is HostObject:
        object.__setattr__(value, "__class__", HostObject)
        new.append(value)
        return value
    if t is RemoteCallable or t is HostCallable:
        object.__setattr__(value, "__class__", HostCallable)
        new.append(value)
        return value
    if t is list:
        for i, v in enumerate(value):
            value[i] = _adopt(v, new, depth + 1)
        return value
    if t is tuple:
        return tuple(_adopt(v, new, depth + 1) for v in value)
    if t is dict:
        for k, v in list(value.items()):
            value[k] = _adopt(v, new, depth + 1)
        return value
    return value
