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

from typing import Any

from .._rpc import RemoteCallable, RemoteObject

__all__ = ["HostObject", "adopt"]


class HostObject(RemoteObject):
    """A host object seen from a worker: attributes are read, methods called, in the host."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = self._nc_endpoint.call_remote(self._nc_id, "__getattr__", (name,), {})
        if isinstance(value, RemoteCallable):
            return _HostMethod(value, name)
        return adopt(value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot set {name!r} on a host object from an isolated pack: it lives in the host "
                             f"(use its methods, e.g. ModelPatcher.set_model_* / add_object_patch)")

    def __repr__(self) -> str:
        return f"<nodecell.studio.HostObject #{self._nc_id} in {self._nc_endpoint.peer_name}>"


class _HostMethod:
    """A bound method of a host object: calls it in the host, results adopted."""

    __slots__ = ("_fn", "__name__")

    def __init__(self, fn: RemoteCallable, name: str) -> None:
        self._fn = fn
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return adopt(self._fn(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<host method {self.__name__}>"


def adopt(value: Any, _depth: int = 0) -> Any:
    """Turn the host's object handles inside ``value`` (lists, tuples, dicts) into :class:`HostObject`
    (in place: the same handle, no new reference)."""
    if _depth > 32:
        return value
    if type(value) is RemoteObject:
        object.__setattr__(value, "__class__", HostObject)
        return value
    if isinstance(value, list):
        for i, v in enumerate(value):
            value[i] = adopt(v, _depth + 1)
        return value
    if isinstance(value, tuple):
        return tuple(adopt(v, _depth + 1) for v in value)
    if isinstance(value, dict):
        for k, v in list(value.items()):
            value[k] = adopt(v, _depth + 1)
        return value
    return value
