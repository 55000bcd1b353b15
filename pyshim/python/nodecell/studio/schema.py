"""Objects of the host app's API packages as data, both ways.

A v3 node's schema (``io.Schema`` with ``io.Int.Input(...)`` and friends), its
``io.NodeOutput`` and UI outputs are objects of the *host app's* API package
(``comfy_api``). They cross as plain data and are rebuilt on the other side
from that side's own classes:

* ``{"__obj__": CLASS, "state": {...}}`` for an instance,
* ``{"__enum__": "module:qualname", "value": v}`` for an enum member,
* ``{"__type__": CLASS}`` for a class,

where ``CLASS`` names a class by its identity:

* ``{"t": "module:qualname"}`` for an ordinary class;
* ``{"io": PARENT, "part": "Input"|"Output"}`` for the per-io-type copies that
  ``@comfytype`` makes of ``Input``/``Output`` (their ``__qualname__`` is the
  generic ``Input``, so they are named through their io type): ``PARENT`` is
  ``{"t": "module:qualname"}`` for a type of the API package (``io.Int``) or
  ``{"custom": io_type}`` for ``io.Custom("MY_TYPE")`` and types a pack defines
  itself, rebuilt with the host's ``Custom``.

An object whose class is not in the API packages but derives from one of their
classes (a pack's own ``Input`` subclass) crosses as its nearest such base.

Rebuilding uses **only** classes of the allow-listed packages that are already
imported on the receiving side (nothing is imported by a name the peer chose);
instances are made with ``object.__new__`` and their ``__dict__`` filled, so no
constructor runs.
"""

from __future__ import annotations

import enum
import sys
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ["DEFAULT_ALLOWED", "to_data", "from_data", "class_ref"]

#: Packages whose classes may be rebuilt from data when no app profile says otherwise.
DEFAULT_ALLOWED = ("comfy_api",)
_NATIVE = (type(None), bool, int, float, str, bytes)
_MAX_DEPTH = 64
_CUSTOM_CACHE: Dict[Tuple[str, str], type] = {}


def _allowed(module: str, allowed: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in allowed)


def _lookup(module: str, qualname: str) -> Any:
    m = sys.modules.get(module)
    if m is None:
        return None
    obj: Any = m
    for part in qualname.split("."):
        if part == "<locals>":
            return None
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _parent_ref(parent: type, allowed: Tuple[str, ...]) -> Dict[str, str]:
    mod, qn = parent.__module__, parent.__qualname__
    if _allowed(mod, allowed) and _lookup(mod, qn) is parent:
        return {"t": f"{mod}:{qn}"}
    io_type = getattr(parent, "io_type", None)
    if not isinstance(io_type, str):
        raise ValueError(f"io type {parent!r} has no io_type")
    # A str subclass (ComfyUI's `IO` StrEnum: cg-use-everywhere's `io.Custom(IO.ANY)`) crosses as its text.
    return {"custom": str.__str__(io_type)}


def class_ref(cls: type, allowed: Iterable[str] = DEFAULT_ALLOWED) -> Optional[Dict[str, Any]]:
    """How ``cls`` is named in data (see the module docs); ``None`` when it cannot cross as data."""
    allowed = tuple(allowed)
    for c in cls.__mro__:
        if c is object:
            break
        parent = vars(c).get("Parent")
        if isinstance(parent, type) and isinstance(getattr(parent, "io_type", None), str):
            for part in ("Input", "Output"):
                if getattr(parent, part, None) is c:
                    return {"io": _parent_ref(parent, allowed), "part": part}
        mod, qn = c.__module__, c.__qualname__
        if _allowed(mod, allowed) and _lookup(mod, qn) is c:
            return {"t": f"{mod}:{qn}"}
    return None


def to_data(obj: Any, allowed: Iterable[str] = DEFAULT_ALLOWED, _depth: int = 0) -> Any:
    """Turn API objects into plain data (tensors and other values pass through)."""
    if _depth > _MAX_DEPTH:
        raise ValueError(f"schema nesting deeper than {_MAX_DEPTH}")
    allowed = tuple(allowed)
    if isinstance(obj, _NATIVE) and not isinstance(obj, enum.Enum):
        return obj
    if isinstance(obj, dict):
        return {k: to_data(v, allowed, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [to_data(v, allowed, _depth + 1) for v in obj]
        return tuple(out) if isinstance(obj, tuple) else out
    if isinstance(obj, enum.Enum):
        mod, qn = type(obj).__module__, type(obj).__qualname__
        if _allowed(mod, allowed) and _lookup(mod, qn) is type(obj):
            return {"__enum__": f"{mod}:{qn}", "value": to_data(obj.value, allowed, _depth + 1)}
        return to_data(obj.value, allowed, _depth + 1)
    if isinstance(obj, type):
        ref = class_ref(obj, allowed)
        if ref is not None:
            return {"__type__": ref}
        return {"__type__": None, "name": obj.__qualname__}
    ref = class_ref(type(obj), allowed)
    if ref is not None and hasattr(obj, "__dict__"):
        return {"__obj__": ref, "state": to_data(dict(vars(obj)), allowed, _depth + 1)}
    return obj  # tensors, arrays, registered records, or a remote handle


def _resolve_name(ref: str, allowed: Tuple[str, ...]) -> type:
    if not isinstance(ref, str) or ":" not in ref:
        raise ValueError(f"malformed class name {ref!r}")
    mod, _, qn = ref.partition(":")
    if not _allowed(mod, allowed):
        raise ValueError(f"type {ref!r} is outside the allowed API packages {list(allowed)}")
    if mod not in sys.modules:
        raise ValueError(f"type {ref!r}: module {mod!r} is not imported in this process")
    if "<locals>" in qn.split("."):
        raise ValueError(f"type {ref!r} is local to a function and cannot be rebuilt")
    obj = _lookup(mod, qn)
    if not isinstance(obj, type):
        raise ValueError(f"{ref!r} is not a class")
    return obj


def _custom(io_type: str, allowed: Tuple[str, ...]) -> type:
    if not isinstance(io_type, str) or not io_type or len(io_type) > 256:
        raise ValueError(f"malformed custom io type {io_type!r}")
    for pkg in allowed:
        io = sys.modules.get(f"{pkg}.latest._io")
        make = getattr(io, "Custom", None)
        if callable(make):
            key = (pkg, io_type)
            t = _CUSTOM_CACHE.get(key)
            if t is None:
                t = _CUSTOM_CACHE[key] = make(io_type)
            return t
    raise ValueError(f"custom io type {io_type!r}: no API package with io.Custom is imported here")


def _resolve(ref: Any, allowed: Tuple[str, ...]) -> type:
    if isinstance(ref, str):  # the earlier form: "module:qualname"
        return _resolve_name(ref, allowed)
    if not isinstance(ref, dict):
        raise ValueError(f"malformed class reference {ref!r}")
    if set(ref) == {"t"}:
        return _resolve_name(ref["t"], allowed)
    if set(ref) == {"io", "part"} and ref["part"] in ("Input", "Output") and isinstance(ref["io"], dict):
        p = ref["io"]
        if set(p) == {"t"}:
            parent = _resolve_name(p["t"], allowed)
        elif set(p) == {"custom"}:
            parent = _custom(p["custom"], allowed)
        else:
            raise ValueError(f"malformed io type reference {p!r}")
        cls = getattr(parent, ref["part"], None)
        if not isinstance(cls, type):
            raise ValueError(f"io type {parent!r} has no {ref['part']} class")
        return cls
    raise ValueError(f"malformed class reference {ref!r}")


def from_data(data: Any, allowed: Iterable[str] = DEFAULT_ALLOWED, _depth: int = 0) -> Any:
    """Rebuild what :func:`to_data` made, from allow-listed, already imported classes only."""
    if _depth > _MAX_DEPTH:
        raise ValueError(f"schema nesting deeper than {_MAX_DEPTH}")
    allowed = tuple(allowed)
    if isinstance(data, list):
        return [from_data(v, allowed, _depth + 1) for v in data]
    if isinstance(data, tuple):
        return tuple(from_data(v, allowed, _depth + 1) for v in data)
    if isinstance(data, dict):
        if "__obj__" in data and set(data) == {"__obj__", "state"}:
            cls = _resolve(data["__obj__"], allowed)
            if issubclass(cls, (BaseException, type)):
                raise ValueError(f"{cls!r} cannot be rebuilt from data")
            inst = object.__new__(cls)
            state = from_data(data["state"], allowed, _depth + 1)
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise ValueError("object state must be a dict with string keys")
            inst.__dict__.update(state)
            return inst
        if "__enum__" in data and set(data) == {"__enum__", "value"}:
            cls = _resolve_name(data["__enum__"], allowed)
            if not issubclass(cls, enum.Enum):
                raise ValueError(f"{data['__enum__']!r} is not an Enum")
            return cls(from_data(data["value"], allowed, _depth + 1))
        if "__type__" in data and set(data) <= {"__type__", "name"}:
            if data["__type__"] is None:
                return None
            return _resolve(data["__type__"], allowed)
        return {k: from_data(v, allowed, _depth + 1) for k, v in data.items()}
    return data
