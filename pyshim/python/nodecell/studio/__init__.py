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
A pack without ``isolated: true`` (or without a manifest) is imported into the
host, as Studio does today.

With ``StudioHost(reload=True)`` a pack whose files change is served by a fresh
worker running the new code from the next call on, and its proxies' schemas
are fetched again.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import inspect
import logging
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .. import _reload
from ..config import ExtensionConfig, ExtensionManagerConfig
from ..errors import NodecellError, RemoteError, WorkerCrashed
from ..host import Extension, ExtensionManager
from ._data import DEFAULT_ALLOWED, from_data
from ._ext import StudioExtension
from .workflow import NodeExecutionError, NodeRecord, WorkflowResult, run_workflow

__all__ = ["StudioHost", "load_custom_node", "run_workflow", "NodeExecutionError", "NodeRecord", "WorkflowResult",
           "StudioExtension", "default_host", "make_proxy", "is_proxy"]

log = logging.getLogger("nodecell.studio")

#: Where the host's API packages appear inside a worker (on its sys.path).
_SANDBOX_HOST = "/run/nodecell/host"


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
        out.append(os.path.realpath(path))
    return out


def _import_api_packages(packages: Iterable[str]) -> None:
    """Import the host app's own API packages (and their ``latest`` module) in the host, so schema
    objects of v3 nodes can be rebuilt here; names come from the host's configuration, never a worker."""
    for name in packages:
        for mod in (name, f"{name}.latest"):
            if mod in sys.modules:
                continue
            try:
                if importlib.util.find_spec(mod) is None:
                    break
                importlib.import_module(mod)
            except ImportError:
                break


class StudioHost:
    """A Studio process's view of its node packs: one manager, the proxies of isolated packs.

    ``api_packages`` names the host app's own API packages (default
    ``comfy_api``) that v3 packs import: they are exposed read-only inside
    workers, and schema/output objects of these packages cross as data.
    ``apis`` are :class:`nodecell.ProxiedSingleton` services every pack may
    use; ``reload=True`` turns on hot reload for every isolated pack.
    Other keyword arguments go to :class:`nodecell.ExtensionManagerConfig`.
    """

    def __init__(self, venv_root_path: Optional[str] = None, *, api_packages: Iterable[str] = DEFAULT_ALLOWED,
                 apis: Optional[List[type]] = None, reload: bool = False, **manager_kw: Any) -> None:
        self.manager = ExtensionManager(StudioExtension, ExtensionManagerConfig(venv_root_path, **manager_kw))
        self.api_packages = tuple(api_packages)
        self.apis = list(apis or [])
        self.reload = reload
        #: Isolated packs by name.
        self.packs: Dict[str, Extension] = {}
        #: Node id -> pack name (isolated packs) or None (packs imported in the host).
        self.node_pack: Dict[str, Optional[str]] = {}
        #: Node id -> the description the worker gave (isolated packs).
        self.node_info: Dict[str, Dict[str, Any]] = {}
        #: Pack name -> the host folder of its web extension (``WEB_DIRECTORY``), where it has one.
        self.web_directories: Dict[str, str] = {}
        self._registered: Dict[str, List[Tuple[Dict[str, Any], Optional[Dict[str, str]]]]] = {}
        self._proxies: Dict[str, Dict[str, type]] = {}
        self._generation: Dict[str, int] = {}
        self._refreshing: Dict[str, asyncio.Lock] = {}

    # -- configuration --------------------------------------------------------------------

    def config_for(self, pack_dir: str, **overrides: Any) -> Optional[ExtensionConfig]:
        """The extension config this host uses for a pack (None when the pack has no manifest)."""
        pack_dir = os.path.abspath(pack_dir)
        if not _has_manifest(pack_dir):
            return None
        cfg = ExtensionConfig.from_manifest(pack_dir, **overrides)
        if not cfg["isolated"]:
            return cfg
        ro = list(cfg["sandbox"]["readonly_paths"])
        for p in _api_package_paths(self.api_packages):
            mount = f"{p}:{_SANDBOX_HOST}/{os.path.basename(p)}"
            if mount not in ro:
                ro.append(mount)
        env = dict(cfg["env"])
        env.setdefault("NODECELL_API_PACKAGES", ",".join(self.api_packages))
        data = dict(cfg)
        data["sandbox"] = dict(cfg["sandbox"], readonly_paths=ro)
        data["env"] = env
        data["apis"] = list(cfg["apis"]) + [a for a in self.apis if a not in cfg["apis"]]
        if self.reload and "reload" not in overrides:
            data["reload"] = True
        return ExtensionConfig(data)

    async def provision(self, pack_dirs: Iterable[str], on_event: Optional[Callable[[Dict[str, Any]], Any]] = None,
                        **overrides: Any) -> Dict[str, Dict[str, Any]]:
        """Build (or find in the cache) the venvs of the isolated packs among ``pack_dirs``, one after another.

        ``on_event(event)`` receives provisioning progress events (``resolving``,
        ``downloading``, ``download``, ``installing``, ``done``, ``failed``; see
        :mod:`nodecell_provision`'s events). Returns pack name -> venv description.
        Raises :class:`nodecell.ProvisionError` when a venv cannot be built.
        """
        loop = asyncio.get_running_loop()
        out: Dict[str, Dict[str, Any]] = {}
        remove = None
        if on_event is not None:
            self.manager.on_progress(on_event)
            remove = on_event
        try:
            for d in pack_dirs:
                cfg = self.config_for(d, **overrides)
                if cfg is None or not cfg["isolated"]:
                    continue
                out[cfg["name"]] = await loop.run_in_executor(None, self.manager._provision, cfg)
        finally:
            if remove is not None:
                # let the last events (delivered with call_soon_threadsafe) run first
                await asyncio.sleep(0)
                try:
                    self.manager._progress.remove(remove)
                except ValueError:
                    pass
        return out

    @staticmethod
    def check() -> Dict[str, Any]:
        """What this kernel and user can enforce (``nodecell check``), for the host to show at start."""
        from .. import check

        return check()

    # -- loading ----------------------------------------------------------------------------

    async def load_custom_node(self, pack_dir: str, node_class_mappings: Dict[str, Any],
                               display_name_mappings: Optional[Dict[str, str]] = None,
                               **overrides: Any) -> List[str]:
        """Load one pack; register its nodes (or proxies) into the given mappings; return their names.

        Keyword arguments override the pack's manifest (e.g. ``isolated=False``
        imports an isolated pack into the host instead).
        """
        pack_dir = os.path.abspath(pack_dir)
        cfg = self.config_for(pack_dir, **overrides)
        if cfg is None or not cfg["isolated"]:
            names = await _load_in_host(pack_dir, node_class_mappings, display_name_mappings)
            for n in names:
                self.node_pack[n] = None
            return names
        _import_api_packages(self.api_packages)
        name = cfg["name"]
        ext = self.manager.extensions.get(name)
        fresh = ext is None
        if ext is None:
            ext = self.manager.load_extension(cfg)
        try:
            await ext.start()
            nodes = await ext.list_nodes()
        except BaseException:
            if fresh:  # a pack that cannot load leaves nothing running
                await ext.stop()
            raise
        self.packs[name] = ext
        self._generation[name] = _reload.generation(ext)
        self._registered.setdefault(name, []).append((node_class_mappings, display_name_mappings))
        try:
            info = await ext.pack_info()
            web = info.get("web_directory")
            if isinstance(web, str) and web:
                self.web_directories[name] = os.path.normpath(os.path.join(pack_dir, web))
        except NodecellError:  # noqa: PERF203 - an old worker without pack_info
            pass
        proxies = self._proxies.setdefault(name, {})
        for node_id, ninfo in nodes.items():
            proxy = proxies.get(node_id)
            if proxy is None:
                proxy = proxies[node_id] = make_proxy(ext, node_id, ninfo, self.api_packages, host=self)
            self._register(name, node_id, proxy, ninfo, node_class_mappings, display_name_mappings)
        return list(nodes)

    def _register(self, pack: str, node_id: str, proxy: type, info: Dict[str, Any], mappings: Dict[str, Any],
                  display: Optional[Dict[str, str]]) -> None:
        mappings[node_id] = proxy
        if display is not None:
            dn = info.get("display_name")
            if not dn and info.get("kind") == "v3":
                dn = getattr(proxy._nodecell_schema, "display_name", None)
            if dn:
                display[node_id] = dn
        self.node_pack[node_id] = pack
        self.node_info[node_id] = info

    # -- hot reload -------------------------------------------------------------------------

    async def refresh(self, pack: Optional[str] = None) -> List[str]:
        """Look for changed files now (packs loaded with reload) and refresh changed packs' proxies.

        Returns the names of the packs that were reloaded. Proxies also refresh
        by themselves after a call that ran on reloaded code.
        """
        out = []
        for name in ([pack] if pack else list(self.packs)):
            ext = self.packs[name]
            if not ext.config["reload"]:
                continue
            st = ext.__dict__.get("_reload_state")
            if st is not None:
                st.next_check = 0.0
            await _reload.maybe_reload(ext)
            if await self._refresh_if_reloaded(name):
                out.append(name)
        return out

    async def _refresh_if_reloaded(self, pack: str) -> bool:
        ext = self.packs.get(pack)
        if ext is None or _reload.generation(ext) == self._generation.get(pack):
            return False
        lock = self._refreshing.setdefault(pack, asyncio.Lock())
        async with lock:
            gen = _reload.generation(ext)
            if gen == self._generation.get(pack):
                return False
            nodes = await ext.list_nodes()
            self._generation[pack] = gen
            proxies = self._proxies.setdefault(pack, {})
            for node_id, info in nodes.items():
                fresh = make_proxy(ext, node_id, info, self.api_packages, host=self)
                old = proxies.get(node_id)
                if old is None:
                    proxies[node_id] = old = fresh
                else:
                    _update_class(old, fresh)
                for mappings, display in self._registered.get(pack, []):
                    self._register(pack, node_id, old, info, mappings, display)
            for node_id in [n for n in proxies if n not in nodes]:
                del proxies[node_id]
                self.node_pack.pop(node_id, None)
                self.node_info.pop(node_id, None)
                for mappings, display in self._registered.get(pack, []):
                    mappings.pop(node_id, None)
                    if display is not None:
                        display.pop(node_id, None)
            log.info("pack %r reloaded: %d node(s)", pack, len(nodes))
            return True

    async def stop(self) -> None:
        """Stop every pack's sandbox."""
        await self.manager.stop_all_extensions()
        self.packs.clear()


def _update_class(old: type, fresh: type) -> None:
    """Make an existing proxy class behave like a freshly built one (same class object, new schema)."""
    skip = {"__dict__", "__weakref__"}
    for k in [k for k in vars(old) if k not in skip and k not in vars(fresh)]:
        try:
            delattr(old, k)
        except (AttributeError, TypeError):
            pass
    for k, v in vars(fresh).items():
        if k not in skip:
            setattr(old, k, v)


def _has_manifest(pack_dir: str) -> bool:
    if os.path.isfile(os.path.join(pack_dir, "manifest.yaml")) or os.path.isfile(
            os.path.join(pack_dir, "pyisolate.yaml")):
        return True
    pp = os.path.join(pack_dir, "pyproject.toml")
    if os.path.isfile(pp):
        with open(pp, "rb") as f:
            return b"[tool.nodecell]" in f.read()
    return False


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


async def _load_in_host(pack_dir: str, mappings: Dict[str, Any], display: Optional[Dict[str, str]]) -> List[str]:
    """Import a pack into the host process, as Studio does for packs that are not isolated."""
    name = os.path.basename(pack_dir.rstrip("/")).replace("-", "_").replace(".", "_")
    init = os.path.join(pack_dir, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[pack_dir])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import pack {pack_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    found: Dict[str, Any] = dict(getattr(module, "NODE_CLASS_MAPPINGS", None) or {})
    shown: Dict[str, str] = dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
    entry = getattr(module, "comfy_entrypoint", None)
    if entry is not None:
        ext = await _maybe_await(entry())
        if hasattr(ext, "on_load"):
            await _maybe_await(ext.on_load())
        for cls in await _maybe_await(ext.get_node_list()):
            schema = cls.define_schema() if hasattr(cls, "define_schema") else cls.DEFINE_SCHEMA()
            node_id = getattr(schema, "node_id", None) or cls.__name__
            found[node_id] = cls
            dn = getattr(schema, "display_name", None)
            if dn:
                shown.setdefault(node_id, dn)
    mappings.update(found)
    if display is not None:
        display.update({k: v for k, v in shown.items() if k in found})
    return list(found)


# -- proxies ---------------------------------------------------------------------------------

def is_proxy(cls: Any) -> bool:
    """Whether ``cls`` is a proxy for a node of an isolated pack."""
    return isinstance(cls, type) and "_nodecell_extension" in vars(cls)


def make_proxy(ext: Extension, node_id: str, info: Dict[str, Any], allowed: Iterable[str] = DEFAULT_ALLOWED,
               host: Optional[StudioHost] = None) -> type:
    """Build the host-side class that stands for node ``node_id`` of an isolated pack.

    ``info`` is what the pack's worker described (``StudioExtension.list_nodes``).
    """
    allowed = tuple(allowed)

    async def after_call() -> None:
        if host is not None and _reload.generation(ext) != host._generation.get(ext.name):
            await host._refresh_if_reloaded(ext.name)

    if info["kind"] == "classic":
        return _classic_proxy(ext, node_id, info, allowed, after_call)
    return _v3_proxy(ext, node_id, info, allowed, after_call)


def _common_attrs(ext: Extension, node_id: str, info: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "_nodecell_extension": ext,
        "_nodecell_node_id": node_id,
        "_nodecell_pack": ext.name,
        "_nodecell_kind": info["kind"],
        "__module__": f"nodecell.studio.proxies.{ext.name}",
    }


def _classic_proxy(ext: Extension, node_id: str, info: Dict[str, Any], allowed: tuple,
                   after_call: Callable[[], Any]) -> type:
    input_types = from_data(info["input_types"], allowed)
    func = info.get("FUNCTION", "execute")

    async def run(self: Any, **inputs: Any) -> Any:
        try:
            return await ext.execute(node_id, inputs)
        finally:
            await after_call()

    run.__name__ = func
    attrs: Dict[str, Any] = _common_attrs(ext, node_id, info)
    attrs.update({
        "INPUT_TYPES": classmethod(lambda cls: copy.deepcopy(input_types)),
        func: run,
        "__doc__": info.get("doc") or f"Proxy for {node_id} of isolated pack {ext.name!r}.",
    })
    for a in ("RETURN_TYPES", "RETURN_NAMES", "OUTPUT_IS_LIST", "OUTPUT_TOOLTIPS"):
        if a in info:
            v = from_data(info[a], allowed)
            attrs[a] = tuple(v) if isinstance(v, list) else v
    for a in ("FUNCTION", "CATEGORY", "OUTPUT_NODE", "DESCRIPTION", "INPUT_IS_LIST", "DEPRECATED", "EXPERIMENTAL",
              "SEARCH_ALIASES", "NOT_IDEMPOTENT"):
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


def _v3_proxy(ext: Extension, node_id: str, info: Dict[str, Any], allowed: tuple,
              after_call: Callable[[], Any]) -> type:
    schema = from_data(info["schema"], allowed)
    base: type = object
    io = _host_io(allowed)
    if io is not None and isinstance(getattr(io, "ComfyNode", None), type):
        base = io.ComfyNode

    def define_schema(cls: Any) -> Any:
        return copy.deepcopy(schema)

    async def execute(cls: Any, **inputs: Any) -> Any:
        try:
            return from_data(await ext.execute(node_id, inputs), allowed)
        finally:
            await after_call()

    attrs: Dict[str, Any] = _common_attrs(ext, node_id, info)
    attrs.update({
        "define_schema": classmethod(define_schema),
        "DEFINE_SCHEMA": classmethod(define_schema),  # the early prototype's name
        "execute": classmethod(execute),
        "_nodecell_schema": schema,
        "__doc__": info.get("doc") or f"Proxy for v3 node {node_id} of isolated pack {ext.name!r}.",
    })
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
    """The process-wide :class:`StudioHost` used by :func:`load_custom_node`
    (venvs under ``$NODECELL_VENV_ROOT``; hot reload when ``NODECELL_RELOAD=1``)."""
    global _default
    if _default is None:
        _default = StudioHost(os.environ.get("NODECELL_VENV_ROOT"),
                              reload=os.environ.get("NODECELL_RELOAD", "") in ("1", "true", "yes"))
    return _default


async def load_custom_node(pack_dir: str, node_class_mappings: Dict[str, Any],
                           display_name_mappings: Optional[Dict[str, str]] = None, **overrides: Any) -> List[str]:
    """Load a pack with the process-wide :class:`StudioHost` (see :meth:`StudioHost.load_custom_node`)."""
    return await default_host().load_custom_node(pack_dir, node_class_mappings, display_name_mappings, **overrides)


_ = (RemoteError, WorkerCrashed)
