"""Applying the serializer registry to values crossing nodecell's channel.

Sending: an object whose type (or a base class) has a registered serializer is
replaced by what the serializer returns, as pyisolate's transport does; lists,
tuples and dicts are walked; tensors, numpy arrays and registered records cross
natively, never through a serializer (CUDA tensors as CPU copies when the
extension has no ``share_cuda_ipc``, as pyisolate sends them). Receiving: a dict carrying ``"__type__"``
that names a registered deserializer is replaced by what it returns.

Both directions only run functions this process registered, on values the channel
decoded from its closed set: nothing is unpickled, nothing imported by a name the
peer sent. Both are skipped while the registry is empty.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional, Tuple

from .serialization_registry import SerializerRegistry

__all__ = ["prepare", "rehydrate"]

_PLAIN = (str, int, float, bool, type(None), bytes)
_cache: Dict[type, Tuple[int, Optional[Callable[[Any], Any]]]] = {}


def _native(obj: Any) -> bool:
    mods = sys.modules
    np = mods.get("numpy")
    if np is not None and isinstance(obj, (np.ndarray, np.generic)):
        return True
    torch = mods.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _serializer(reg: SerializerRegistry, t: type) -> Optional[Callable[[Any], Any]]:
    hit = _cache.get(t)
    if hit is not None and hit[0] == reg.generation:
        return hit[1]
    found = None
    for klass in t.__mro__:
        found = reg.get_serializer(klass.__name__)
        if found is not None:
            break
    _cache[t] = (reg.generation, found)
    return found


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")
    try:
        return torch is not None and bool(torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a torch without CUDA support
        return False


def prepare(value: Any, registry: Optional[SerializerRegistry] = None, *, cuda: bool = True) -> Any:
    """``value`` with registered types serialized, for sending. ``cuda=False`` (the
    extension has no ``share_cuda_ipc``): CUDA tensors go as CPU copies, as in pyisolate."""
    reg = registry or SerializerRegistry.get_instance()
    move = not cuda and _cuda_in_use()
    if reg.is_empty() and not move:
        return value
    return _prepare(value, reg, move)


def _prepare(obj: Any, reg: SerializerRegistry, move: bool) -> Any:
    t = type(obj)
    if t in _PLAIN:
        return obj
    if t is dict:
        return {k: _prepare(v, reg, move) for k, v in obj.items()}
    if t is list:
        return [_prepare(v, reg, move) for v in obj]
    if t is tuple:
        return tuple(_prepare(v, reg, move) for v in obj)
    if _native(obj):
        if move and getattr(obj, "is_cuda", False):
            return obj.cpu()
        return obj
    ser = _serializer(reg, t)
    if ser is not None:
        return ser(obj)
    if isinstance(obj, dict):
        return {k: _prepare(v, reg, move) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_prepare(v, reg, move) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    return obj


def rehydrate(value: Any, registry: Optional[SerializerRegistry] = None) -> Any:
    """``value`` with ``{"__type__": name, ...}`` dicts deserialized, after receiving."""
    reg = registry or SerializerRegistry.get_instance()
    if not reg.has_deserializers():
        return value
    return _rehydrate(value, reg)


def _rehydrate(obj: Any, reg: SerializerRegistry) -> Any:
    t = type(obj)
    if t is dict:
        ref = obj.get("__type__")
        if isinstance(ref, str):
            des = reg.get_deserializer(ref)
            if des is not None:
                return des(obj)
        return {k: _rehydrate(v, reg) for k, v in obj.items()}
    if t is list:
        return [_rehydrate(v, reg) for v in obj]
    if t is tuple:
        return tuple(_rehydrate(v, reg) for v in obj)
    return obj
