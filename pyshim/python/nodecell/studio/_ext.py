"""What runs inside a pack's worker for the Studio loader.

:class:`StudioExtension` imports the pack (``NODE_CLASS_MAPPINGS`` for classic
nodes, ``comfy_entrypoint()`` for v3 nodes), describes every node as data once
(:meth:`list_nodes`), and executes nodes on request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import os
import sys
from types import ModuleType
from typing import Any, Dict, Optional

from ..shared import ExtensionBase
from ._data import DEFAULT_ALLOWED, to_data

_CLASSIC_ATTRS = ("RETURN_TYPES", "RETURN_NAMES", "FUNCTION", "CATEGORY", "OUTPUT_NODE", "DESCRIPTION",
                  "OUTPUT_IS_LIST", "INPUT_IS_LIST", "OUTPUT_TOOLTIPS", "DEPRECATED", "EXPERIMENTAL",
                  "SEARCH_ALIASES", "NOT_IDEMPOTENT")


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


class StudioExtension(ExtensionBase):
    """The worker-side object of a Studio node pack.

    Node functions that are plain (sync) functions run one at a time on one
    node thread, as in Studio's own executor, so packs need not be thread-safe
    and the worker stays responsive to other calls meanwhile; ``async`` node
    functions run on the worker's event loop.
    """

    def __init__(self) -> None:
        super().__init__()
        self._node_thread: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self.nodes: Dict[str, Any] = {}
        self.kinds: Dict[str, str] = {}
        self.display: Dict[str, str] = {}
        self.allowed = tuple(os.environ.get("NODECELL_API_PACKAGES", ",".join(DEFAULT_ALLOWED)).split(","))

    async def on_module_loaded(self, module: ModuleType) -> None:
        """Collect the pack's nodes: ``NODE_CLASS_MAPPINGS`` and, for v3 packs, ``comfy_entrypoint()``."""
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
        """Every node of the pack, described as data (a node whose description fails is left out, logged)."""
        out: Dict[str, Dict[str, Any]] = {}
        for name, cls in self.nodes.items():
            try:
                out[name] = self._describe(name, cls)
            except Exception:  # noqa: BLE001 - as Studio does: skip the broken node, keep the rest
                logging.getLogger(__name__).exception("node %r: cannot describe its schema; skipped", name)
        return out

    def _describe(self, name: str, cls: Any) -> Dict[str, Any]:
        if self.kinds[name] == "classic":
            info: Dict[str, Any] = {"kind": "classic", "class_name": cls.__name__,
                                    "input_types": to_data(cls.INPUT_TYPES(), self.allowed)}
            for a in _CLASSIC_ATTRS:
                if hasattr(cls, a):
                    info[a] = to_data(getattr(cls, a), self.allowed)
            info["doc"] = cls.__doc__ or ""
            info["has_is_changed"] = hasattr(cls, "IS_CHANGED")
            info["has_validate_inputs"] = hasattr(cls, "VALIDATE_INPUTS")
            info["display_name"] = self.display.get(name)
            return info
        return {"kind": "v3", "class_name": cls.__name__, "doc": cls.__doc__ or "",
                "schema": to_data(_schema_of(cls), self.allowed),
                "has_validate_inputs": _overrides(cls, "validate_inputs"),
                "has_fingerprint_inputs": _overrides(cls, "fingerprint_inputs"),
                "has_check_lazy_status": _overrides(cls, "check_lazy_status")}

    def pack_info(self) -> Dict[str, Any]:
        """Pack-level facts: its web extension folder (``WEB_DIRECTORY``, relative to the pack) and node count."""
        web = getattr(self.module, "WEB_DIRECTORY", None) if getattr(self, "module", None) is not None else None
        return {"web_directory": web if isinstance(web, str) else None, "nodes": len(self.nodes)}

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
            return await self._run_node(getattr(cls(), cls.FUNCTION), inputs)
        out = await self._run_node(cls.execute, inputs)
        return to_data(out, self.allowed)

    async def _run_node(self, fn: Any, inputs: Dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__func__", None)):
            return await fn(**inputs)
        if self._node_thread is None:
            self._node_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="studio-node")
        loop = asyncio.get_running_loop()
        return await _maybe_await(await loop.run_in_executor(self._node_thread, functools.partial(fn, **inputs)))

    async def is_changed(self, node_id: str, inputs: Dict[str, Any]) -> Any:
        """The node's ``IS_CHANGED`` (classic) or ``fingerprint_inputs`` (v3) for these inputs."""
        cls = self._cls(node_id)
        if self.kinds[node_id] == "classic":
            return await self._run_node(cls.IS_CHANGED, inputs)
        return await self._run_node(cls.fingerprint_inputs, inputs)

    async def validate_inputs(self, node_id: str, inputs: Dict[str, Any]) -> Any:
        """The node's ``VALIDATE_INPUTS`` (classic) or ``validate_inputs`` (v3): True or an error text."""
        cls = self._cls(node_id)
        if self.kinds[node_id] == "classic":
            return await self._run_node(cls.VALIDATE_INPUTS, inputs)
        return await self._run_node(cls.validate_inputs, inputs)

    async def check_lazy_status(self, node_id: str, inputs: Dict[str, Any]) -> Any:
        """The v3 node's ``check_lazy_status``: names of lazy inputs it still needs."""
        cls = self._cls(node_id)
        return await self._run_node(cls.check_lazy_status, inputs)


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

