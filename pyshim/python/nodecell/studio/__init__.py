"""Hanzo Studio (ComfyUI-style) integration: load custom-node packs into cells.

    from nodecell import studio
    host = studio.StudioHost(venv_root_path="./venvs")
    names = await host.load_custom_node("custom_nodes/my_pack", NODE_CLASS_MAPPINGS)
    # or: await studio.load_custom_node(pack_dir, NODE_CLASS_MAPPINGS)

A pack whose manifest says ``isolated: true`` is loaded as an extension in its
own sandbox, and one **proxy class** per node is registered in the host's
``NODE_CLASS_MAPPINGS``. Proxies look like the pack's nodes (classic
``INPUT_TYPES``/``RETURN_TYPES``/``FUNCTION``/..., or v3 ``define_schema`` /
async ``execute``); the schema was fetched from the worker as data once; calls
are forwarded; tensors cross zero-copy; other objects as remote handles.
A pack without ``isolated: true`` is imported into the host, as Studio does today.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import logging
import os
import sys
from typing import Any, Dict, Iterable, List, Optional

from ..config import ExtensionConfig
from ..errors import NodecellError, RemoteError, WorkerCrashed
from ..host import Extension, ExtensionManager
from ._data import DEFAULT_ALLOWED, from_data
from ._ext import StudioExtension
from .workflow import NodeExecutionError, WorkflowResult, run_workflow

__all__ = ["StudioHost", "load_custom_node", "run_workflow", "NodeExecutionError", "WorkflowResult",
           "StudioExtension", "default_host"]

log = logging.getLogger("nodecell.studio")


def _api_package_paths(packages: Iterable[str]) -> List[str]:
    """Host folders of the app's API packages (e.g. comfy_api) to expose read-only in workers."""
    out = []
    for name in packages:
        mod = sys.modules.get(name)
        if mod is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            if spec is None or not spec.submodule_search_locations:
                continue
            path = list(spec.submodule_search_locations)[0]
        else:
            f = getattr(mod, "__file__", None)
            if not f:
                continue
            path = os.path.dirname(f) if os.path.basename(f) == "__init__.py" else f
        out.append(path)
    return out


class StudioHost:
    """A Studio process's view of its isolated packs: one manager, their proxies.

    ``api_packages`` names the host app's own API packages (default
    ``comfy_api``) that v3 packs import: they are exposed read-only inside
    workers, and schema/output objects of these packages cross as data.
    """

    def __init__(self, venv_root_path: Optional[str] = None, *, api_packages: Iterable[str] = DEFAULT_ALLOWED,
                 apis: Optional[List[type]] = None, reload: bool = False, **manager_kw: Any) -> None:
        from ..config import ExtensionManagerConfig

        self.manager = ExtensionManager(StudioExtension, ExtensionManagerConfig(venv_root_path, **manager_kw))
        self.api_packages = tuple(api_packages)
        self.apis = list(apis or [])
        self.reload = reload
        self.packs: Dict[str, Extension] = {}
        self.node_pack: Dict[str, str] = {}
        self.node_info: Dict[str, Dict[str, Any]] = {}

    async def load_custom_node(self, pack_dir: str, node_class_mappings: Dict[str, Any],
                               display_name_mappings: Optional[Dict[str, str]] = None,
                               **overrides: Any) -> List[str]:
        """Load one pack; register its nodes (or proxies) into the given mappings; return their names."""
        pack_dir = os.path.abspath(pack_dir)
        cfg = ExtensionConfig.from_manifest(pack_dir, **overrides) if _has_manifest(pack_dir) else None
        if cfg is None or not cfg["isolated"]:
            return _load_in_host(pack_dir, node_class_mappings, display_name_mappings)
        ro = list(cfg["sandbox"]["readonly_paths"])
        for p in _api_package_paths(self.api_packages):
            mount = f"{p}:/run/nodecell/host/{os.path.basename(p)}"
            if mount not in ro:
                ro.append(mount)
        env = dict(cfg["env"])
        env.setdefault("NODECELL_API_PACKAGES", ",".join(self.api_packages))
        data = dict(cfg)
        data["sandbox"] = dict(cfg["sandbox"], readonly_paths=ro)
        data["env"] = env
        data["apis"] = list(cfg["apis"]) + [a for a in self.apis if a not in cfg["apis"]]
        if self.reload:
            data["reload"] = True
        cfg = ExtensionConfig(data)
        ext = await self.manager.load_extension(cfg)
        nodes = await ext.list_nodes()
        names = []
        for node_id, info in nodes.items():
            proxy = make_proxy(ext, node_id, info, self.api_packages)
            node_class_mappings[node_id] = proxy
            if display_name_mappings is not None:
                dn = info.get("display_name") or (
                    getattr(proxy, "_nodecell_schema", None) and getattr(proxy._nodecell_schema, "display_name", None))
                if dn:
                    display_name_mappings[node_id] = dn
            self.node_pack[node_id] = cfg["name"]
            self.node_info[node_id] = info
            names.append(node_id)
        self.packs[cfg["name"]] = ext
        return names

    async def stop(self) -> None:
        """Stop every pack's sandbox."""
        await self.manager.stop_all_extensions()
        self.packs.clear()


def _has_manifest(pack_dir: str) -> bool:
    if os.path.isfile(os.path.join(pack_dir, "manifest.yaml")) or os.path.isfile(
            os.path.join(pack_dir, "pyisolate.yaml")):
        return True
    pp = os.path.join(pack_dir, "pyproject.toml")
    if os.path.isfile(pp):
        with open(pp, "rb") as f:
            return b"[tool.nodecell]" in f.read()
    return False


def _load_in_host(pack_dir: str, mappings: Dict[str, Any], display: Optional[Dict[str, str]]) -> List[str]:
    name = os.path.basename(pack_dir.rstrip("/")).replace("-", "_").replace(".", "_")
    init = os.path.join(pack_dir, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[pack_dir])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import pack {pack_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    found = dict(getattr(module, "NODE_CLASS_MAPPINGS", None) or {})
    entry = getattr(module, "comfy_entrypoint", None)
    if entry is not None:
        ext = entry()
        if asyncio.iscoroutine(ext):
            raise TypeError(f"{pack_dir}: async comfy_entrypoint needs load_custom_node_async in the host")
        if hasattr(ext, "on_load"):
            r = ext.on_load()
            if asyncio.iscoroutine(r):
                r.close()
                raise TypeError(f"{pack_dir}: async on_load needs an isolated load")
        nodes = ext.get_node_list()
        for cls in nodes:
            schema = cls.define_schema() if hasattr(cls, "define_schema") else cls.DEFINE_SCHEMA()
            found[schema.node_id] = cls
    mappings.update(found)
    if display is not None:
        display.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
    return list(found)


def make_proxy(ext: Extension, node_id: str, info: Dict[str, Any], allowed: Iterable[str] = DEFAULT_ALLOWED) -> type:
    """Build the host-side class that stands for node ``node_id`` of an isolated pack."""
    allowed = tuple(allowed)
    if info["kind"] == "classic":
        return _classic_proxy(ext, node_id, info, allowed)
    return _v3_proxy(ext, node_id, info, allowed)


def _classic_proxy(ext: Extension, node_id: str, info: Dict[str, Any], allowed: tuple) -> type:
    input_types = from_data(info["input_types"], allowed)
    func = info.get("FUNCTION", "execute")

    async def run(self: Any, **inputs: Any) -> Any:
        return await ext.execute(node_id, inputs)

    attrs: Dict[str, Any] = {
        "INPUT_TYPES": classmethod(lambda cls: copy.deepcopy(input_types)),
        func: run,
        "_nodecell_extension": ext,
        "_nodecell_node_id": node_id,
        "_nodecell_pack": ext.name,
        "__module__": f"nodecell.studio.proxies.{ext.name}",
        "__doc__": f"Proxy for {node_id} of isolated pack {ext.name!r}.",
    }
    for a in ("RETURN_TYPES", "RETURN_NAMES", "OUTPUT_IS_LIST", "OUTPUT_TOOLTIPS"):
        if a in info:
            v = from_data(info[a], allowed)
            attrs[a] = tuple(v) if isinstance(v, list) else v
    for a in ("FUNCTION", "CATEGORY", "OUTPUT_NODE", "DESCRIPTION", "INPUT_IS_LIST", "DEPRECATED", "EXPERIMENTAL"):
        if a in info:
            attrs[a] = from_data(info[a], allowed)
    if info.get("has_is_changed"):
        async def is_changed(cls: Any, **inputs: Any) -> Any:
            return await ext.is_changed(node_id, inputs)
        attrs["IS_CHANGED"] = classmethod(is_changed)
    if info.get("has_validate_inputs"):
        async def validate(cls: Any, **inputs: Any) -> Any:
            return await ext.validate_inputs(node_id, inputs)
        attrs["VALIDATE_INPUTS"] = classmethod(validate)
    return type(info.get("class_name", node_id), (), attrs)


def _v3_proxy(ext: Extension, node_id: str, info: Dict[str, Any], allowed: tuple) -> type:
    schema = from_data(info["schema"], allowed)
    base: type = object
    io = _host_io(allowed)
    if io is not None and hasattr(io, "ComfyNode"):
        base = io.ComfyNode

    def define_schema(cls: Any) -> Any:
        return copy.deepcopy(schema)

    async def execute(cls: Any, **inputs: Any) -> Any:
        return from_data(await ext.execute(node_id, inputs), allowed)

    attrs: Dict[str, Any] = {
        "define_schema": classmethod(define_schema),
        "DEFINE_SCHEMA": classmethod(define_schema),
        "execute": classmethod(execute),
        "_nodecell_extension": ext,
        "_nodecell_node_id": node_id,
        "_nodecell_pack": ext.name,
        "_nodecell_schema": schema,
        "__module__": f"nodecell.studio.proxies.{ext.name}",
        "__doc__": f"Proxy for v3 node {node_id} of isolated pack {ext.name!r}.",
    }
    if info.get("has_validate_inputs"):
        async def validate_inputs(cls: Any, **inputs: Any) -> Any:
            return await ext.validate_inputs(node_id, inputs)
        attrs["validate_inputs"] = classmethod(validate_inputs)
    if info.get("has_fingerprint_inputs"):
        async def fingerprint_inputs(cls: Any, **inputs: Any) -> Any:
            return await ext.is_changed(node_id, inputs)
        attrs["fingerprint_inputs"] = classmethod(fingerprint_inputs)
    if info.get("has_check_lazy_status"):
        async def check_lazy_status(cls: Any, **inputs: Any) -> Any:
            return await ext.check_lazy_status(node_id, inputs)
        attrs["check_lazy_status"] = classmethod(check_lazy_status)
    return type(info.get("class_name", node_id), (base,), attrs)


def _host_io(allowed: tuple) -> Any:
    for pkg in allowed:
        for name in (f"{pkg}.latest", pkg):
            mod = sys.modules.get(name)
            if mod is not None and hasattr(mod, "io"):
                return mod.io
    return None


_default: Optional[StudioHost] = None


def default_host() -> StudioHost:
    """The process-wide :class:`StudioHost` used by :func:`load_custom_node`."""
    global _default
    if _default is None:
        _default = StudioHost(os.environ.get("NODECELL_VENV_ROOT"))
    return _default


async def load_custom_node(pack_dir: str, node_class_mappings: Dict[str, Any],
                           display_name_mappings: Optional[Dict[str, str]] = None, **overrides: Any) -> List[str]:
    """Load a pack with the process-wide :class:`StudioHost` (see :meth:`StudioHost.load_custom_node`)."""
    return await default_host().load_custom_node(pack_dir, node_class_mappings, display_name_mappings, **overrides)


_ = (NodecellError, RemoteError, WorkerCrashed)
