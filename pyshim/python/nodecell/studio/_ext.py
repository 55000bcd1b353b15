"""What runs inside a pack's worker for the Studio loader.

:class:`StudioExtension` sets the host app up in the worker (the app profile's
worker hooks, then the user's), imports the pack the way the app does (as a
package named after its folder, from a neutral working directory), collects its
nodes the way the app does (``NODE_CLASS_MAPPINGS``, else ``comfy_entrypoint()``;
a class is a v3 node by what it is, wherever it is listed), describes every
node as data once (:meth:`list_nodes`), and executes nodes, their checks and
the pack's HTTP routes on request.

:class:`StudioContext` is what the host told the worker (the environment
variable ``NODECELL_STUDIO``, JSON): the app profile, the pack's names, its
folders, the host's command line, extra hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
import threading
import time
import traceback
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional

from ..errors import RemoteError
from ..shared import ExtensionBase
from . import routes as _routes
from .apps import AppProfile
from .objects import PROXY_TYPES, adopt
from .schema import DEFAULT_ALLOWED, to_data

__all__ = ["StudioExtension", "StudioContext", "ENV"]

#: The environment variable carrying the :class:`StudioContext`.
ENV = "NODECELL_STUDIO"

_CLASSIC_ATTRS = ("RETURN_TYPES", "RETURN_NAMES", "FUNCTION", "CATEGORY", "OUTPUT_NODE", "DESCRIPTION",
                  "OUTPUT_IS_LIST", "INPUT_IS_LIST", "OUTPUT_TOOLTIPS", "DEPRECATED", "EXPERIMENTAL",
                  "SEARCH_ALIASES", "NOT_IDEMPOTENT", "API_NODE")
log = logging.getLogger("nodecell.studio")


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


def _decode_arg(v: Any) -> Any:
    """A host command-line value (see the loader's ``_encode_arg``) back to its type."""
    if isinstance(v, dict) and set(v) == {"__enum__", "value"}:
        mod, _, qn = str(v["__enum__"]).partition(":")
        obj: Any = importlib.import_module(mod)
        for part in qn.split("."):
            obj = getattr(obj, part)
        return obj(v["value"])
    if isinstance(v, dict) and set(v) == {"__set__"}:
        return {_decode_arg(x) for x in v["__set__"]}
    if isinstance(v, list):
        return [_decode_arg(x) for x in v]
    return v


class StudioContext:
    """What the host told this worker about the app and the pack."""

    def __init__(self, data: Optional[Dict[str, Any]] = None) -> None:
        data = dict(data or {})
        app = data.get("app")
        #: The host app, or None (a plain Studio host without an app profile).
        self.profile: Optional[AppProfile] = AppProfile.from_data(app) if app else None
        #: The pack's name and folder.
        self.pack: str = data.get("pack", "")
        self.pack_dir: str = data.get("pack_dir", "")
        #: The ``sys.modules`` name of the pack's package and its ``RELATIVE_PYTHON_MODULE``.
        self.module_name: Optional[str] = data.get("module_name")
        self.relative_module: Optional[str] = data.get("relative_module")
        #: The app's folders (output, temp, input: bound writable; user).
        self.dirs: Dict[str, str] = dict(data.get("dirs") or {})
        #: Hooks run before the pack is imported (after the profile's own).
        self.hooks: List[str] = list(data.get("hooks") or [])
        #: The pack's writable layer: where its folder's source and sync record are seen.
        self.layer: Dict[str, str] = dict(data.get("layer") or {})
        #: Packages whose objects cross as data.
        self.allowed = tuple(data.get("allowed") or (self.profile.rebuild_packages if self.profile
                                                       else DEFAULT_ALLOWED))
        self._args_raw: Dict[str, Any] = dict(data.get("cli_args") or {})
        self._local = threading.local()

    @classmethod
    def from_env(cls) -> "StudioContext":
        """The context of this worker (empty when the host set none)."""
        raw = os.environ.get(ENV)
        data = json.loads(raw) if raw else {}
        if not data and os.environ.get("NODECELL_API_PACKAGES"):  # hosts of earlier versions
            data = {"allowed": os.environ["NODECELL_API_PACKAGES"].split(",")}
        return cls(data)

    @property
    def cli_args(self) -> Dict[str, Any]:
        """The host app's parsed command line, as values of this worker's types."""
        out = {}
        for k, v in self._args_raw.items():
            try:
                out[k] = _decode_arg(v)
            except Exception:  # noqa: BLE001 - a value this worker cannot rebuild keeps its default
                log.debug("cli arg %s: cannot rebuild %r", k, v)
        return out

    # -- the node being run -----------------------------------------------------------------

    def current_node(self) -> Dict[str, Any]:
        """``{"prompt_id", "node_id"}`` of the node this thread runs (empty outside a node)."""
        return dict(getattr(self._local, "node", None) or {})

    @contextlib.contextmanager
    def node(self, call: Dict[str, Any]) -> Iterator[None]:
        """Run a node: this thread's current node, and the app's own executing context."""
        prev = getattr(self._local, "node", None)
        self._local.node = {"prompt_id": call.get("prompt_id"), "node_id": call.get("node_id")}
        cm: Any = contextlib.nullcontext()
        if self.profile is not None and call.get("node_id") is not None:
            eu = sys.modules.get(f"{self.profile.execution_package}.utils")
            ctx_cls = getattr(eu, "CurrentNodeContext", None)
            if ctx_cls is not None:
                cm = ctx_cls(call.get("prompt_id"), call.get("node_id"), call.get("list_index"))
        try:
            with cm:
                yield
        finally:
            self._local.node = prev

    def reraise_interrupt(self, e: BaseException) -> None:
        """Raise the app's own ``InterruptProcessingException`` for a host-side interrupt."""
        if isinstance(e, RemoteError) and e.remote_type.endswith("InterruptProcessingException") \
                and self.profile is not None:
            mm = sys.modules.get(self.profile.model_management_module)
            exc = getattr(mm, "InterruptProcessingException", None)
            if exc is not None:
                raise exc() from None


def _import_qualname(name: str) -> Any:
    mod, _, qn = name.partition(":")
    if not mod or not qn:
        raise ValueError(f"hook {name!r}: expected 'module:function'")
    obj: Any = importlib.import_module(mod)
    for part in qn.split("."):
        obj = getattr(obj, part)
    return obj


class StudioExtension(ExtensionBase):
    """The worker-side object of a Studio node pack.

    Node functions (sync and ``async``) run one at a time on one node thread
    with an event loop of its own, as in the app's own executor, so packs need
    not be thread-safe and the worker stays responsive to other calls
    meanwhile; the pack's HTTP routes, and its validations (``VALIDATE_INPUTS``,
    ``IS_CHANGED``), each run on a thread and loop of their own.
    """

    #: The host's objects (MODEL, CLIP, VAE, the sampler's callables...) arrive as handles with
    #: attribute access and method calls, wherever they appear (see :mod:`nodecell.studio.objects`).
    remote_proxy_types = PROXY_TYPES

    def __init__(self) -> None:
        super().__init__()
        self._node_loop: Optional[asyncio.AbstractEventLoop] = None
        self._check_loop: Optional[asyncio.AbstractEventLoop] = None
        self._route_loop: Optional[asyncio.AbstractEventLoop] = None
        self.ctx = StudioContext.from_env()
        self.nodes: Dict[str, Any] = {}
        self.kinds: Dict[str, str] = {}
        self.display: Dict[str, str] = {}
        self.allowed = self.ctx.allowed
        self._route_descs: List[Dict[str, Any]] = []
        self._route_handlers: Dict[str, Any] = {}
        #: Where this worker's load spent its time (seconds; see :meth:`pack_info`).
        self.load_phases: Dict[str, Any] = {"start_s": _process_age()}
        if self.ctx.profile is not None:  # what the worker had already imported (an app cell's zygote)
            self.load_phases["preimported"] = sorted(
                m for m in (self.ctx.profile.nodes_module, self.ctx.profile.server_module, "torch")
                if m in sys.modules)

    # -- loading ----------------------------------------------------------------------------

    async def before_module_loaded(self) -> None:
        """Bring the pack's layer up to date (hot reload edits), then set the app up: the
        profile's worker hooks, then the host's extra hooks."""
        if self.ctx.layer.get("source") and self.ctx.pack_dir:
            from . import state

            try:
                state.sync(self.ctx.layer["source"], self.ctx.pack_dir, self.ctx.layer.get("record"))
            except OSError as e:  # the host synced it before the launch; edits since then are missing
                log.warning("pack %r: could not update its state layer: %s", self.ctx.pack, e)
        t0 = time.perf_counter()
        names = list(self.ctx.profile.worker_hooks) if self.ctx.profile is not None else []
        for name in names + self.ctx.hooks:
            await _maybe_await(_import_qualname(name)(self.ctx))
        self.load_phases["hooks_s"] = time.perf_counter() - t0
        if self.ctx.profile is not None:
            t0 = time.perf_counter()
            from .services import AppServices

            self._import_app_modules(AppServices().app_modules())
            self.load_phases["app_modules_s"] = time.perf_counter() - t0

    def _import_app_modules(self, names: List[str]) -> None:
        """Import the app's modules the host has imported (``names``, asked of the host when
        the pack is imported: see ``AppProfile.mirrored_packages``), as the app's own loader
        left them for its packs.

        ``sys.modules`` keeps the order imports *completed* (a module that imports another
        completes after it), not the order they began: one that fails is tried again after the
        others, while that makes progress (``comfy_extras.nodes_latent`` fails on its cycle
        first, ``nodes_post_processing`` then imports both). One that still fails (a package
        the pack's venv lacks) is left out, as the pack would meet it importing that module."""
        pending = [str(name) for name in names if str(name) not in sys.modules]
        while pending:
            failed = []
            for name in pending:
                if name in sys.modules:
                    continue
                try:
                    importlib.import_module(name)
                except Exception as e:  # noqa: BLE001 - see the docstring
                    failed.append((name, e))
            if len(failed) == len(pending):
                for name, e in failed:
                    log.debug("pack %r: the app's module %s did not import here: %s", self.ctx.pack, name, e)
                return
            pending = [name for name, _e in failed]

    def import_pack(self, module_path: str) -> ModuleType:
        """Import the pack as the app does: a package named after its folder's path (ComfyUI's
        ``nodes.load_custom_node``), never from ``sys.path``, so pack files cannot shadow app modules."""
        if self.ctx.profile is None or not self.ctx.module_name:
            from .._worker_rt import _import_pack

            return _import_pack(module_path, self.ctx.pack or os.path.basename(module_path))
        init = os.path.join(module_path, "__init__.py")
        name = self.ctx.module_name
        if os.path.isfile(init):
            spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[module_path])
        else:
            raise FileNotFoundError(f"pack {self.ctx.pack!r}: {init} not found")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load pack {self.ctx.pack!r} from {init}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        t0, before = time.perf_counter(), len(sys.modules)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            self.load_phases["import_s"] = time.perf_counter() - t0
            self.load_phases["modules_imported"] = len(sys.modules) - before
        return module

    async def on_module_loaded(self, module: ModuleType) -> None:
        """Collect the nodes as the app does: ``NODE_CLASS_MAPPINGS``, else ``comfy_entrypoint()``."""
        t0 = time.perf_counter()
        self.module = module
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if mappings is not None:
            for name, cls in mappings.items():
                self.nodes[name] = cls
                self.kinds[name] = "v3" if self._is_v3(cls) else "classic"
            self.display.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
        elif hasattr(module, "comfy_entrypoint"):
            ext = await _maybe_await(module.comfy_entrypoint())
            if hasattr(ext, "on_load"):
                await _maybe_await(ext.on_load())
            for cls in await _maybe_await(ext.get_node_list()):
                schema = _schema_of(cls)
                node_id = getattr(schema, "node_id", None) or cls.__name__
                self.nodes[node_id] = cls
                self.kinds[node_id] = "v3"
                dn = getattr(schema, "display_name", None)
                if dn is not None:
                    self.display[node_id] = dn
        if self.ctx.relative_module:
            for cls in self.nodes.values():
                try:
                    cls.RELATIVE_PYTHON_MODULE = self.ctx.relative_module
                except (AttributeError, TypeError):
                    pass
        self._collect_routes()
        self.load_phases["collect_s"] = time.perf_counter() - t0

    def _is_v3(self, cls: Any) -> bool:
        for pkg in self.allowed:
            base = getattr(sys.modules.get(f"{pkg}.internal"), "_ComfyNodeInternal", None)
            if isinstance(base, type):
                return isinstance(cls, type) and issubclass(cls, base)
        return isinstance(cls, type) and (hasattr(cls, "define_schema") or hasattr(cls, "DEFINE_SCHEMA")) \
            and not hasattr(cls, "INPUT_TYPES")

    def _collect_routes(self) -> None:
        p = self.ctx.profile
        if p is None:
            return
        server = sys.modules.get(p.server_module)
        inst = getattr(getattr(server, "PromptServer", None), "instance", None)
        table = getattr(inst, "routes", None)
        if table is None:
            return
        self._route_descs, self._route_handlers = _routes.describe(table)

    # -- description ----------------------------------------------------------------------

    def list_nodes(self) -> Dict[str, Dict[str, Any]]:
        """Every node of the pack, described as data (a node whose description fails is left out, logged)."""
        t0 = time.perf_counter()
        out: Dict[str, Dict[str, Any]] = {}
        for name, cls in self.nodes.items():
            try:
                out[name] = self._describe(name, cls)
            except Exception:  # noqa: BLE001 - as the app does: skip the broken node, keep the rest
                log.exception("node %r: cannot describe its schema; skipped", name)
        self.load_phases["describe_s"] = time.perf_counter() - t0
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
            info["is_changed_async"] = _is_async(getattr(cls, "IS_CHANGED", None))
            if hasattr(cls, "VALIDATE_INPUTS"):
                info["validate_inputs"] = _argspec(cls.VALIDATE_INPUTS)
            if hasattr(cls, "check_lazy_status"):
                info["has_check_lazy_status"] = True
            info["display_name"] = self.display.get(name)
            return info
        info = {"kind": "v3", "class_name": cls.__name__, "doc": cls.__doc__ or "",
                "schema": to_data(_schema_of(cls), self.allowed),
                "fingerprint_inputs": _override(cls, "fingerprint_inputs"),
                "check_lazy_status": _override(cls, "check_lazy_status")}
        validate = _override(cls, "validate_inputs")
        if validate:
            info["validate_inputs"] = _argspec(getattr(cls, "validate_inputs"))
        return info

    def input_types(self, node_id: str) -> Any:
        """A classic node's ``INPUT_TYPES()`` now, as data: the app asks for it each time it
        describes or validates the node, and lists in it (files, models, history) change."""
        return to_data(self._cls(node_id).INPUT_TYPES(), self.allowed)

    def pack_info(self) -> Dict[str, Any]:
        """Pack-level facts: its web folder (``WEB_DIRECTORY``, relative to the pack), its HTTP routes
        (see :mod:`nodecell.studio.routes`), its module names, node count, and where its load spent
        its time (``load_phases``: ``start_s`` the worker's age when the extension was made, i.e.
        fork or exec, pack setup and the host's init; ``hooks_s`` the app's worker hooks;
        ``import_s`` the pack's import and ``modules_imported`` the modules it added;
        ``collect_s`` collecting its nodes; ``describe_s`` describing them; ``preimported`` the
        app's ``nodes``/``server`` and torch when already imported before, by an app cell's zygote)."""
        module = getattr(self, "module", None)
        web = getattr(module, "WEB_DIRECTORY", None) if module is not None else None
        return {"web_directory": web if isinstance(web, str) else None, "nodes": len(self.nodes),
                "routes": list(self._route_descs), "module_name": self.ctx.module_name,
                "relative_module": self.ctx.relative_module, "load_phases": dict(self.load_phases)}

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

    def _v3_target(self, cls: Any, name: str, call: Dict[str, Any]) -> Any:
        """``cls.<name>`` on a clone of ``cls`` holding the hidden inputs (as the app's executor does)."""
        hidden = {str(k): v for k, v in (call.get("hidden") or {}).items()}
        prepare = getattr(cls, "PREPARE_CLASS_CLONE", None)
        clone = prepare({"hidden_inputs": hidden}) if prepare is not None else cls
        fn = getattr(cls, name)
        return functools.partial(fn.__func__, clone) if hasattr(fn, "__func__") else fn

    async def execute(self, node_id: str, inputs: Dict[str, Any], call: Optional[Dict[str, Any]] = None) -> Any:
        """Run one node; returns what it returned (classic tuple or ui/result dict, v3 output), as data."""
        call = call or {}
        cls = self._cls(node_id)
        if self.kinds[node_id] == "classic":
            fn = getattr(cls(), cls.FUNCTION)
        else:
            fn = self._v3_target(cls, "execute", call)
        out = await self._run_node(fn, inputs, call)
        return self._outgoing(out)

    def _outgoing(self, out: Any) -> Any:
        return to_data(out, self.allowed)

    async def _run_node(self, fn: Any, inputs: Dict[str, Any], call: Dict[str, Any], checks: bool = False) -> Any:
        """Run a node function on the node thread's own event loop (sync ones block it: one node at a
        time, as in the app's executor). That loop is not the worker's, so the app's services
        (``folder_paths``...) called from inside, sync or async code alike, simply return.
        ``checks``: a validation (``VALIDATE_INPUTS``, ``IS_CHANGED``) runs on a thread and loop of
        its own instead, as the app validates a new prompt on its server thread while its executor
        runs a node: it never waits behind a running node of the pack."""
        ctx = self.ctx
        inputs = adopt(dict(inputs))  # the host's objects: attributes and methods read there

        async def run() -> Any:
            with ctx.node(call):
                try:
                    r = fn(**inputs)
                    if inspect.isawaitable(r):
                        r = await r
                    return r
                except Exception as e:
                    ctx.reraise_interrupt(e)
                    raise
                except (SystemExit, KeyboardInterrupt) as e:
                    # asyncio lets these two out of the node thread's loop, which would die with
                    # the call never answered (rembg calls sys.exit(1) at import when onnxruntime
                    # is missing): the call fails with them, named, and the pack goes on.
                    raise RemoteError(type(e).__name__, str(e),
                                      "".join(traceback.format_exception(type(e), e, e.__traceback__))) from None

        if checks:
            if self._check_loop is None:
                self._check_loop = _loop_thread("studio-checks")
            loop = self._check_loop
        else:
            if self._node_loop is None:
                self._node_loop = _loop_thread("studio-node")
            loop = self._node_loop
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))

    async def _check(self, node_id: str, classic: str, v3: str, inputs: Dict[str, Any],
                     call: Optional[Dict[str, Any]]) -> Any:
        call = call or {}
        cls = self._cls(node_id)
        fn = getattr(cls, classic) if self.kinds[node_id] == "classic" else self._v3_target(cls, v3, call)
        return self._outgoing(await self._run_node(fn, inputs, call, checks=True))

    async def is_changed(self, node_id: str, inputs: Dict[str, Any], call: Optional[Dict[str, Any]] = None) -> Any:
        """The node's ``IS_CHANGED`` (classic) or ``fingerprint_inputs`` (v3) for these inputs."""
        return await self._check(node_id, "IS_CHANGED", "fingerprint_inputs", inputs, call)

    async def validate_inputs(self, node_id: str, inputs: Dict[str, Any],
                              call: Optional[Dict[str, Any]] = None) -> Any:
        """The node's ``VALIDATE_INPUTS`` (classic) or ``validate_inputs`` (v3): True or an error text."""
        return await self._check(node_id, "VALIDATE_INPUTS", "validate_inputs", inputs, call)

    async def check_lazy_status(self, node_id: str, inputs: Dict[str, Any],
                                call: Optional[Dict[str, Any]] = None) -> Any:
        """The node's ``check_lazy_status``: names of lazy inputs it still needs."""
        call = call or {}
        cls = self._cls(node_id)
        if self.kinds[node_id] == "classic":
            fn = getattr(cls(), "check_lazy_status")
        else:
            fn = self._v3_target(cls, "check_lazy_status", call)
        return self._outgoing(await self._run_node(fn, inputs, call))

    async def handle_route(self, key: str, request: Dict[str, Any]) -> Dict[str, Any]:
        """Serve one HTTP request for the pack's route ``key`` (``"GET /path"``)."""
        handler = self._route_handlers.get(key)
        if handler is None:
            raise KeyError(f"this pack has no route {key!r}")
        if self._route_loop is None:  # its own loop: routes answer while a node runs
            self._route_loop = _loop_thread("studio-routes")
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_routes.handle(handler, request), self._route_loop))


def _process_age() -> Optional[float]:
    """Seconds since this process began (its fork; ``/proc/self/stat``, 10 ms steps), or None."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _loop_thread(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop running forever on a daemon thread of its own."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name=name, daemon=True).start()
    return loop


def _is_async(fn: Any) -> bool:
    if fn is None:
        return False
    if isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__func__", None))


def _argspec(fn: Any) -> Dict[str, Any]:
    """What the app's executor reads of a validation function: its argument names and ``**kwargs``."""
    spec = inspect.getfullargspec(fn)
    return {"args": list(spec.args), "varkw": spec.varkw is not None, "async": _is_async(fn)}


def _schema_of(cls: Any) -> Any:
    for name in ("define_schema", "DEFINE_SCHEMA"):
        fn = getattr(cls, name, None)
        if fn is not None:
            return fn()
    raise TypeError(f"{cls!r} has neither define_schema nor DEFINE_SCHEMA")


def _override(cls: Any, name: str) -> bool:
    """Whether ``cls`` overrides ``name`` of its v3 base class (``first_real_override``)."""
    fn = getattr(cls, name, None)
    if fn is None:
        return False
    base_of = getattr(cls, "GET_BASE_CLASS", None)
    bases = [base_of()] if callable(base_of) else [b for b in cls.__mro__[1:] if name in vars(b)][:1]
    for base in bases:
        bf = getattr(base, name, None)
        if bf is None:
            return True
        return getattr(fn, "__func__", fn) is not getattr(bf, "__func__", bf)
    return True
