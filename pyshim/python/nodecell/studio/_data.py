"""Schema objects as data, both ways.

A v3 node's schema (``io.Schema`` with ``io.Int.Input(...)`` and friends) and
its ``io.NodeOutput`` are objects of the *host app's* API package (e.g.
``comfy_api``). They cross as plain data:

* ``{"__obj__": "module:qualname", "state": {...}}`` for an instance,
* ``{"__enum__": "module:qualname", "value": v}`` for an enum member,
* ``{"__type__": "module:qualname"}`` for a class,

and are rebuilt on the other side **only** from classes of an allow-listed
package that is already imported there (nothing is imported by a name the
peer chose; instances are made with ``object.__new__`` and their ``__dict__``
filled, so no constructor runs).
"""

from __future__ import annotations

import enum
import sys
from typing import Any, Iterable, Tuple

#: Packages whose classes may be rebuilt from data.
DEFAULT_ALLOWED = ("comfy_api",)
_NATIVE = (type(None), bool, int, float, str, bytes)


def _qual(obj: Any) -> Tuple[str, str]:
    cls = obj if isinstance(obj, type) else type(obj)
    return cls.__module__, cls.__qualname__


def _allowed(module: str, allowed: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in allowed)


def to_data(obj: Any, allowed: Iterable[str] = DEFAULT_ALLOWED, _depth: int = 0) -> Any:
    """Turn API objects into plain data (tensors and other values pass through)."""
    if _depth > 64:
        raise ValueError("schema nesting deeper than 64")
    if isinstance(obj, _NATIVE) and not isinstance(obj, enum.Enum):
        return obj
    if isinstance(obj, dict):
        return {k: to_data(v, allowed, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [to_data(v, allowed, _depth + 1) for v in obj]
        return tuple(out) if isinstance(obj, tuple) else out
    if isinstance(obj, enum.Enum):
        mod, qn = _qual(obj)
        if _allowed(mod, allowed):
            return {"__enum__": f"{mod}:{qn}", "value": to_data(obj.value, allowed, _depth + 1)}
        return to_data(obj.value, allowed, _depth + 1)
    if isinstance(obj, type):
        mod, qn = _qual(obj)
        if _allowed(mod, allowed):
            return {"__type__": f"{mod}:{qn}"}
        return {"__type__": None, "name": qn}
    mod, qn = _qual(obj)
    if _allowed(mod, allowed) and hasattr(obj, "__dict__"):
        return {"__obj__": f"{mod}:{qn}", "state": to_data(dict(vars(obj)), allowed, _depth + 1)}
    return obj  # tensors, arrays, registered records, or a remote handle


def _resolve(ref: str, allowed: Iterable[str]) -> Any:
    mod, _, qn = ref.partition(":")
    if not _allowed(mod, allowed):
        raise ValueError(f"type {ref!r} is outside the allowed API packages {list(allowed)}")
    m = sys.modules.get(mod)
    if m is None:
        raise ValueError(f"type {ref!r}: module {mod!r} is not imported in this process")
    obj: Any = m
    for part in qn.split("."):
        if part == "<locals>":
            raise ValueError(f"type {ref!r} is local to a function and cannot be rebuilt")
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{ref!r} is not a class")
    return obj


def from_data(data: Any, allowed: Iterable[str] = DEFAULT_ALLOWED, _depth: int = 0) -> Any:
    """Rebuild what :func:`to_data` made, from allow-listed, already imported classes only."""
    if _depth > 64:
        raise ValueError("schema nesting deeper than 64")
    if isinstance(data, list):
        return [from_data(v, allowed, _depth + 1) for v in data]
    if isinstance(data, tuple):
        return tuple(from_data(v, allowed, _depth + 1) for v in data)
    if isinstance(data, dict):
        if "__obj__" in data and set(data) == {"__obj__", "state"}:
            cls = _resolve(data["__obj__"], allowed)
            inst = object.__new__(cls)
            state = from_data(data["state"], allowed, _depth + 1)
            if not isinstance(state, dict):
                raise ValueError("object state must be a dict")
            inst.__dict__.update(state)
            return inst
        if "__enum__" in data and set(data) == {"__enum__", "value"}:
            cls = _resolve(data["__enum__"], allowed)
            if not issubclass(cls, enum.Enum):
                raise ValueError(f"{data['__enum__']!r} is not an Enum")
            return cls(from_data(data["value"], allowed, _depth + 1))
        if "__type__" in data and set(data) <= {"__type__", "name"}:
            if data["__type__"] is None:
                return None
            return _resolve(data["__type__"], allowed)
        return {k: from_data(v, allowed, _depth + 1) for k, v in data.items()}
    return data
