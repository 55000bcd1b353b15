"""What runs inside a pack's worker for the Studio loader.

:class:`StudioExtension` imports the pack (``NODE_CLASS_MAPPINGS`` for classic
nodes, ``comfy_entrypoint()`` for v3 nodes), describes every node as data once
(:meth:`list_nodes`), and executes nodes on request.
"""

from __future__ import annotations

import inspect
import os
import sys
from types import ModuleType
from typing import Any, Dict, List, Optional

from ..shared import ExtensionBase
from ._data import DEFAULT_ALLOWED, to_data

_CLASSIC_ATTRS = ("RETURN_TYPES", "RETURN_NAMES", "FUNCTION", "CATEGORY", "OUTPUT_NODE", "DESCRIPTION",
                  "OUTPUT_IS_LIST", "INPUT_IS_LIST", "OUTPUT_TOOLTIPS", "DEPRECATED", "EXPERIMENTAL")


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


class StudioExtension(ExtensionBase):
    """The worker-side object of a Studio node pack."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: Dict[str, Any] = {}
        self.kinds: Dict[str, str] = {}
        self.display: Dict[str, str] = {}
        self.allowed = tuple(os.environ.get("NODECELL_API_PACKAGES", ",".join(DEFAULT_ALLOWED)).split(","))

    async def on_module_loaded(self, module: ModuleType) -> None:
        self.module = module
        for name, cls in (getattr(module, "NODE_CLASS_MAPPINGS", None) or {}).items():
            self.nodes[name] = cls
            self.kinds[name] = "classic"
        self.display.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
        entry = getattr(module, "comfy_entrypoint", None)
        if entry is not None:
            ext = await _maybe_await(entry())
            if hasattr(ext, "on_load"):
                await _maybe_await(ext.on_load())
            for cls in await _maybe_await(ext.get_node_list()):
                schema = _schema_of(cls)
                node_id = getattr(schema, "node_id", None) or cls.__name__
                self.nodes[node_id] = cls
                self.kinds[node_id] = "v3"

    # -- description ----------------------------------------------------------------------

    def list_nodes(self) -> Dict[str, Dict[str, Any]]:
        """Every node of the pack, described as data."""
        out: Dict[str, Dict[str, Any]] = {}
        for name, cls in self.nodes.items():
            if self.kinds[name] == "classic":
                info: Dict[str, Any] = {"kind": "classic", "class_name": cls.__name__,
                                        "input_types": to_data(cls.INPUT_TYPES(), self.allowed)}
                for a in _CLASSIC_ATTRS:
                    if hasattr(cls, a):
                        info[a] = to_data(getattr(cls, a), self.allowed)
                info["has_is_changed"] = hasattr(cls, "IS_CHANGED")
                info["has_validate_inputs"] = hasattr(cls, "VALIDATE_INPUTS")
                info["display_name"] = self.display.get(name)
            else:
                info = {"kind": "v3", "class_name": cls.__name__,
                        "schema": to_data(_schema_of(cls), self.allowed),
                        "has_validate_inputs": _overrides(cls, "validate_inputs"),
                        "has_fingerprint_inputs": _overrides(cls, "fingerprint_inputs"),
                        "has_check_lazy_status": _overrides(cls, "check_lazy_status")}
            out[name] = info
        return out

    def versions_seen(self) -> Dict[str, str]:
        """The versions of python / numpy / torch this worker sees."""
        v = {"python": sys.version.split()[0]}
        for m in ("numpy", "torch"):
            mod = sys.modules.get(m)
            if mod is not None:
                v[m] = mod.__version__
        return v

    # -- execution --------------------------------------------------------------------------

    def _cls(self, node_id: str) -> Any:
        cls = self.nodes.get(node_id)
        if cls is None:
            raise KeyError(f"this pack has no node {node_id!r}")
        return cls

    async def execute(self, node_id: str, inputs: Dict[str, Any]) -> Any:
        """Run one node; classic nodes return their tuple (or ui/result dict), v3 nodes their output as data."""
        cls = self._cls(node_id)
        if self.kinds[node_id] == "classic":
            obj = cls()
            fn = getattr(obj, cls.FUNCTION)
            return await _maybe_await(fn(**inputs))
        out = await _maybe_await(cls.execute(**inputs))
        return to_data(out, self.allowed)

    async def is_changed(self, node_id: str, inputs: Dict[str, Any]) -> Any:
        cls = self._cls(node_id)
        if self.kinds[node_id] == "classic":
            return await _maybe_await(cls.IS_CHANGED(**inputs))
        return await _maybe_await(cls.fingerprint_inputs(**inputs))

    async def validate_inputs(self, node_id: str, inputs: Dict[str, Any]) -> Any:
        cls = self._cls(node_id)
        if self.kinds[node_id] == "classic":
            return await _maybe_await(cls.VALIDATE_INPUTS(**inputs))
        return await _maybe_await(cls.validate_inputs(**inputs))

    async def check_lazy_status(self, node_id: str, inputs: Dict[str, Any]) -> Any:
        cls = self._cls(node_id)
        return await _maybe_await(cls.check_lazy_status(**inputs))

    # -- the demo's probes ------------------------------------------------------------------

    def probe(self, what: str, arg: Optional[Any] = None) -> Any:
        """Small checks the demo and tests run inside the pack's worker."""
        if what == "pid":
            return os.getpid()
        if what == "uid":
            return (os.getuid(), os.geteuid())
        raise ValueError(f"unknown probe {what!r}")


def _schema_of(cls: Any) -> Any:
    for name in ("define_schema", "DEFINE_SCHEMA"):
        fn = getattr(cls, name, None)
        if fn is not None:
            return fn()
    raise TypeError(f"{cls!r} has neither define_schema nor DEFINE_SCHEMA")


def _overrides(cls: Any, name: str) -> bool:
    fn = getattr(cls, name, None)
    if fn is None:
        return False
    for base in cls.__mro__[1:]:
        if name in vars(base):
            return getattr(fn, "__func__", fn) is not getattr(vars(base)[name], "__func__", vars(base)[name])
    return True


_unused: List[Any] = []
