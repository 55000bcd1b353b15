"""Inside a pack's worker: the host app's modules, with their state served by the host.

:func:`install` is the worker hook of ComfyUI-shaped apps (ComfyUI, Hanzo
Studio). It runs before the pack is imported and:

* puts the app's code (bound read-only at its host path) on ``sys.path`` where
  the app has it, first, and gives the worker the host's command line
  (``cli_args.args``), so the app's modules make the same choices (``--cpu``...);
* once the pack (or anything) imports them, plugs the app's modules into the
  host's one state through :class:`nodecell.studio.services.AppServices`:

  - ``folder_paths``: model lookups, ``folder_names_and_paths`` and annotated
    paths answer from the host (paths are the same inside: the model folders are
    bound read-only, the output, temp and input folders writable, so what a pack
    saves is where the app and its UI look);
  - ``model_management``: the interrupt flag is the host's (Cancel works);
  - ``utils``: progress bars reach the host's progress hook (its UI);
  - ``server``: ``PromptServer.instance`` is a :class:`WorkerServer`: messages go
    to the host's real server, routes the pack registers are served by the
    host's aiohttp server and handled here, static folders are served by the
    host (from the pack's own folder only).

The app's modules are imported lazily, the first time anything imports them
(a pack that never imports ``server`` never pays for it).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .. import objects as _objects
from ..services import PATHS_FORWARDED, AppServices

if TYPE_CHECKING:
    from .._ext import StudioContext

__all__ = ["install", "prepare_zygote", "WorkerServer", "after_import", "APP_ENV"]

#: The environment variable carrying the app-wide part of the context (the app profile and the
#: host's command line), the same for every pack: an app cell's zygote keeps it (JSON).
APP_ENV = "NODECELL_STUDIO_APP"

log = logging.getLogger("nodecell.studio")


# -- post-import hooks ------------------------------------------------------------------------

_AFTER: Dict[str, List[Callable[[Any], None]]] = {}
_LOCK = threading.RLock()


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then the hooks registered for the module."""

    def __init__(self, inner: Any, name: str) -> None:
        self.inner = inner
        self.name = name

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        for fn in _AFTER.pop(self.name, []):
            fn(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for tracebacks
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the modules that have post-import hooks."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _AFTER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


_FINDER = _Finder()


def after_import(name: str, fn: Callable[[Any], None]) -> None:
    """Call ``fn(module)`` once module ``name`` is imported (now, if it already is)."""
    with _LOCK:
        mod = sys.modules.get(name)
        if mod is not None and getattr(getattr(mod, "__spec__", None), "_initializing", False) is False:
            fn(mod)
            return
        _AFTER.setdefault(name, []).append(fn)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


# -- the hook -----------------------------------------------------------------------------------

def install(ctx: "StudioContext") -> None:
    """Set the app up in this worker (see the module docs)."""
    profile = ctx.profile
    assert profile is not None and profile.root is not None
    root = profile.root
    # The app's code first, where the app itself has it (its script folder is
    # sys.path[0] there): a distribution a pack installs never shadows the app.
    if "" in sys.path:
        sys.path[sys.path.index("")] = root
    elif root not in sys.path:
        sys.path.insert(0, root)
    _preload(profile.preload, root)
    services = AppServices()
    _objects.set_type_lookup(services.types_of)  # handles named after the host's classes

    after_import(profile.cli_args_module, lambda m: _apply_args(m, ctx.cli_args))
    after_import(profile.paths_module, lambda m: _install_paths(m, services, ctx))
    after_import(profile.model_management_module, lambda m: _install_interrupts(m, services))
    after_import(profile.utils_module, lambda m: _install_progress(m, services, ctx))
    after_import(profile.server_module, lambda m: _install_server(m, services, ctx))


def prepare_zygote() -> None:
    """In an app cell's zygote, before it imports the app's modules (``AppProfile.zygote_hooks``):
    the app's code first on ``sys.path`` and the host's command line applied to the app's
    ``cli_args`` once imported, as the app's own start-up does before its imports. Without it
    the zygote's ``nodes`` would pick devices from the defaults (ComfyUI without ``--cpu`` on a
    machine with no GPU: "Found no NVIDIA driver") and every pack would import the app after
    its fork. Nothing to do where the host set no app context."""
    import json

    from .._ext import StudioContext

    raw = os.environ.get(APP_ENV)
    ctx = StudioContext(json.loads(raw) if raw else {})
    profile = ctx.profile
    if profile is None or profile.root is None:
        return
    if "" in sys.path:
        sys.path[sys.path.index("")] = profile.root
    elif profile.root not in sys.path:
        sys.path.insert(0, profile.root)
    after_import(profile.cli_args_module, lambda m: _apply_args(m, ctx.cli_args))


def _preload(names: Any, root: str) -> None:
    """Import the app's own packages its entry point imports early (see ``AppProfile.preload``),
    only where they resolve into the app root; one that fails is left to fail where it is used."""
    import importlib
    import importlib.util

    for name in names:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
            origin = getattr(spec, "origin", None) or ""
            if spec is None or not os.path.realpath(origin).startswith(os.path.realpath(root) + os.sep):
                continue
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - the pack's own import reports it where it matters
            log.debug("preloading the app's %r failed: %s", name, e)


def _apply_args(mod: Any, values: Dict[str, Any]) -> None:
    args = getattr(mod, "args", None)
    if args is None:
        return
    for k, v in values.items():
        if hasattr(args, k):
            try:
                setattr(args, k, v)
            except Exception:  # noqa: BLE001 - a read-only attribute keeps its default
                pass


# -- folder_paths -------------------------------------------------------------------------------

def _writing_back(base: type, methods: Tuple[str, ...], doc: str) -> type:
    """A subclass of ``base`` whose mutating ``methods`` call ``self._write_back()`` after."""

    def wrap(name: str) -> Callable[..., Any]:
        inner = getattr(base, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            out = inner(self, *args, **kwargs)
            self._write_back()
            return out

        method.__name__ = name
        return method

    return type(f"_Host{base.__name__.capitalize()}", (base,), {"__doc__": doc, **{m: wrap(m) for m in methods}})


_HostList = _writing_back(list, ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
                                 "__setitem__", "__delitem__", "__iadd__", "__imul__"),
                          "The paths of a host table entry: changes are written back to the host's table.")
_HostSet = _writing_back(set, ("add", "update", "discard", "remove", "pop", "clear", "difference_update",
                               "intersection_update", "symmetric_difference_update", "__ior__", "__iand__",
                               "__isub__", "__ixor__"),
                         "The extensions of a host table entry: changes are written back to the host's table.")


class _HostTable(dict):
    """``folder_names_and_paths`` whose reads and writes go to the host's table; an entry's
    paths and extensions changed in place (AnimateDiff-Evolved:
    ``folder_names_and_paths[name][1].add(ext)``; ``[0].append(path)``) are written back too."""

    def __init__(self, services: AppServices) -> None:
        super().__init__()
        self._services = services

    def _fetch(self) -> Dict[str, Any]:
        return {k: (list(v[0]), set(v[1])) for k, v in self._services.paths_table().items()}

    def __getitem__(self, key: str) -> Any:
        v = self._services.paths_entry(key)
        if v is None:
            raise KeyError(key)
        paths, exts = _HostList(v[0]), _HostSet(v[1])

        def write_back() -> None:
            self._services.paths_set(key, list(paths), sorted(exts))

        paths._write_back = exts._write_back = write_back
        return (paths, exts)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._services.paths_entry(key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        paths, exts = value
        self._services.paths_set(key, list(paths), sorted(exts))

    def __delitem__(self, key: str) -> None:
        self._services.paths_delete(key)

    def __iter__(self) -> Any:
        return iter(list(self._fetch()))

    def __len__(self) -> int:
        return len(self._fetch())

    def keys(self) -> Any:
        return self._fetch().keys()

    def items(self) -> Any:
        return self._fetch().items()

    def values(self) -> Any:
        return self._fetch().values()

    def copy(self) -> Dict[str, Any]:
        return self._fetch()

    def __repr__(self) -> str:
        return f"<folder_names_and_paths of the host: {sorted(self._fetch())}>"


def _install_paths(fp: Any, services: AppServices, ctx: "StudioContext") -> None:
    def forward(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = services.paths_call(name, list(args), kwargs)
            if name in ("get_filename_list_", "cached_filename_list_") and isinstance(out, (list, tuple)):
                out = tuple(set(x) if i == 1 and isinstance(x, list) else x for i, x in enumerate(out))
            return out
        call.__name__ = name
        call.__qualname__ = name
        return call

    for name in PATHS_FORWARDED:
        if hasattr(fp, name):
            setattr(fp, name, forward(name))
    fp.folder_names_and_paths = _HostTable(services)
    dirs = ctx.dirs
    # The app's folders, at the same paths inside (output, temp and input are bound writable).
    fp.output_directory = dirs.get("output", fp.output_directory)
    fp.temp_directory = dirs.get("temp", fp.temp_directory)
    fp.input_directory = dirs.get("input", fp.input_directory)
    fp.user_directory = dirs.get("user", fp.user_directory)

    def refuse(what: str) -> Callable[..., None]:
        def setter(path: str) -> None:
            raise PermissionError(f"folder_paths.set_{what}_directory: an isolated pack cannot move the host "
                                  f"app's {what} folder ({dirs.get(what)})")
        return setter

    for what in ("output", "temp", "input", "user"):
        if hasattr(fp, f"set_{what}_directory"):
            setattr(fp, f"set_{what}_directory", refuse(what))


# -- model_management -----------------------------------------------------------------------------

def _install_interrupts(mm: Any, services: AppServices) -> None:
    exc = getattr(mm, "InterruptProcessingException", None)

    def processing_interrupted() -> bool:
        return services.interrupted(False)

    def throw_exception_if_processing_interrupted() -> None:
        if services.interrupted(True) and exc is not None:
            raise exc()

    def interrupt_current_processing(value: bool = True) -> None:
        services.interrupt(value)

    mm.processing_interrupted = processing_interrupted
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.interrupt_current_processing = interrupt_current_processing


# -- progress ------------------------------------------------------------------------------------

def _install_progress(utils: Any, services: AppServices, ctx: "StudioContext") -> None:
    setter = getattr(utils, "set_progress_bar_global_hook", None)
    if setter is None:
        return

    def hook(value: Any, total: Any, preview_image: Any = None, prompt_id: Optional[str] = None,
             node_id: Optional[str] = None) -> None:
        cur = ctx.current_node()
        if prompt_id is None:
            prompt_id = cur.get("prompt_id")
        if node_id is None:
            node_id = cur.get("node_id")
        try:
            services.progress(value, total, _preview_data(preview_image), prompt_id, node_id)
        except Exception as e:  # noqa: BLE001
            ctx.reraise_interrupt(e)
            raise

    setter(hook)


def _preview_data(preview: Any) -> Any:
    """``(format, PIL.Image, max_size)`` -> ``(format, uint8 array, max_size)`` (it crosses as a tensor)."""
    if preview is None:
        return None
    try:
        fmt, img, max_size = preview
        import numpy as np

        return (str(fmt), np.asarray(img.convert("RGB"), dtype=np.uint8), max_size)
    except Exception:  # noqa: BLE001 - an unknown preview shape: progress without a picture
        return None


# -- the server ----------------------------------------------------------------------------------

def _install_server(server: Any, services: AppServices, ctx: "StudioContext") -> None:
    cls = getattr(server, "PromptServer", None)
    if cls is None:
        return
    cls.instance = WorkerServer(services, ctx)


class _Router:
    """The parts of ``aiohttp.web.UrlDispatcher`` packs use at import."""

    frozen = False

    def __init__(self, server: "WorkerServer") -> None:
        self._server = server

    def add_route(self, method: str, path: str, handler: Any, **kwargs: Any) -> None:
        self._server.routes.route(method, path, **kwargs)(handler)

    def add_get(self, path: str, handler: Any, **kwargs: Any) -> None:
        self._server.routes.get(path, **kwargs)(handler)

    def add_post(self, path: str, handler: Any, **kwargs: Any) -> None:
        self._server.routes.post(path, **kwargs)(handler)

    def add_static(self, prefix: str, path: Any, **kwargs: Any) -> None:
        self._server.routes.static(prefix, os.fspath(path), **kwargs)


class _App:
    """The parts of ``aiohttp.web.Application`` packs use at import (routes only)."""

    def __init__(self, server: "WorkerServer") -> None:
        self.router = _Router(server)
        self._server = server

    def add_routes(self, routes: Any) -> List[Any]:
        for r in routes:
            self._server.routes._items.append(r)
        return []

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"PromptServer.instance.app.{name} is not available to an isolated pack: "
                             f"routes (app.add_routes, app.router.add_*) are; the host's app is not")


class _WorkerPromptQueue:
    """``PromptServer.instance.prompt_queue`` inside a worker: the prompts running now (read from
    the host's queue, each entry a tuple as there, its sensitive part left out) and how many
    remain (ComfyUI-VideoHelperSuite reads the running workflow's settings). Queueing is not:
    a pack in a sandbox does not run workflows in the host."""

    def __init__(self, services: AppServices) -> None:
        self._services = services

    @property
    def currently_running(self) -> Dict[Any, Tuple[Any, ...]]:
        return {number: tuple(entry) for number, entry in self._services.running_prompts().items()}

    def get_tasks_remaining(self) -> int:
        return int(self._services.tasks_remaining())

    def put(self, item: Any) -> None:
        raise PermissionError("PromptServer.instance.prompt_queue.put is not available to an isolated pack: it would "
                              "run workflows in the host (a pack that requeues its workflow, as VideoHelperSuite's "
                              "Meta Batch Manager does, needs loading into the host for that)")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"PromptServer.instance.prompt_queue.{name} is not available to an isolated pack: "
                             f"currently_running and get_tasks_remaining are")


class WorkerServer:
    """``PromptServer.instance`` inside a worker.

    ``routes`` is a real ``aiohttp.web.RouteTableDef``: what the pack registers
    is served by the host's server (see :mod:`nodecell.studio.routes`).
    Messages (``send_sync``, ``send``, ``send_progress_text``) go to the host's
    server; ``client_id``, ``last_node_id``, ``last_prompt_id`` and ``supports``
    read the host's; ``prompt_queue`` reads what runs (see :class:`_WorkerPromptQueue`).
    """

    def __init__(self, services: AppServices, ctx: "StudioContext") -> None:
        from aiohttp import web

        self._services = services
        self._ctx = ctx
        self.routes = web.RouteTableDef()
        self.app = _App(self)
        self.prompt_queue = _WorkerPromptQueue(services)

    def _state(self, key: str) -> Any:
        return self._services.server_state().get(key)

    @property
    def client_id(self) -> Any:
        return self._state("client_id")

    @property
    def last_node_id(self) -> Any:
        return self._state("last_node_id")

    @property
    def last_prompt_id(self) -> Any:
        return self._state("last_prompt_id")

    @property
    def supports(self) -> List[str]:
        return list(self._state("supports") or [])

    @property
    def number(self) -> Any:
        return self._state("number")

    def send_sync(self, event: Any, data: Any, sid: Optional[str] = None) -> None:
        self._services.send_sync(event, data, sid)

    async def send(self, event: Any, data: Any, sid: Optional[str] = None) -> None:
        r = self._services.send(event, data, sid)
        if hasattr(r, "__await__"):
            await r

    async def send_json(self, event: Any, data: Any, sid: Optional[str] = None) -> None:
        await self.send(event, data, sid)

    def send_progress_text(self, text: str, node_id: Any, sid: Optional[str] = None) -> None:
        self._services.send_progress_text(text, node_id, sid)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"PromptServer.instance.{name} is not available to an isolated pack (it runs in "
                             f"its own process): routes, send_sync/send/send_progress_text, client_id, "
                             f"last_node_id, last_prompt_id, supports and prompt_queue (reading what runs) are")


_ = importlib.machinery
