"""pyisolate's host-side ``Extension`` (``pyisolate.host.Extension``) on a nodecell sandbox.

The same surface as pyisolate's: ``Extension(module_path, extension_type, config,
venv_root_path)``, ``ensure_process_started()``, ``get_proxy()``, ``stop()``,
``join()``, ``register_event_handler()``, ``rpc``, ``name``, ``normalized_name``,
``venv_path``, ``module_path``, ``config``, ``extension_type``. Nothing else is
public, so an extension method of any other name is never shadowed; the nodecell
handle underneath is ``ext._nodecell`` (walls, restarts, worker versions).

Differences (see the README's pyisolate section): the process is a nodecell
sandbox (namespaces, Landlock, seccomp, cgroups) whose venv comes from nodecell's
content-addressed cache under ``venv_root_path``; it is restarted on the next call
after a crash; every synchronous method works from any thread, inside or outside
a running event loop, and callers work from any loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from pathlib import Path
from typing import Any, Dict, Generic, Optional, TypeVar

from ....config import normalize_name
from ....errors import ConfigError
from ....shared import ExtensionBase as _NodecellBase
from ...pyisolate.path_helpers import serialize_host_snapshot
from . import _nc_loop
from ._nc_bridge import HostCallees, PyisolateBridge, forget_link, new_token, register_link
from ._nc_config import convert
from ._nc_wire import prepare, rehydrate
from .event_bridge import _EventBridge
from .rpc_protocol import AsyncRPC

__all__ = ["Extension", "build_extension_snapshot", "normalize_extension_name", "validate_dependency",
           "validate_path_within_root"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_DANGEROUS = ("&&", "||", "|", "`", "$", "\n", "\r", "\0")


def normalize_extension_name(name: str) -> str:
    """The file-system and shell safe form of an extension name (ValueError when empty)."""
    return normalize_name(name)


def validate_dependency(dep: str) -> None:
    """Refuse requirement strings that look like options or shell syntax (ValueError)."""
    if not dep or dep == "-e":
        return
    if dep.startswith("-") and not dep.startswith("-e "):
        raise ValueError(f"Invalid dependency '{dep}'. Dependencies cannot start with '-' as this could be a "
                         "command option.")
    for pattern in _DANGEROUS:
        if pattern in dep:
            raise ValueError(f"Invalid dependency '{dep}'. Contains potentially dangerous character: '{pattern}'")


def validate_path_within_root(path: Path, root: Path) -> None:
    """ValueError unless ``path`` resolves inside ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError as err:
        raise ValueError(f"Path '{path}' is not within root '{root}'") from err


def build_extension_snapshot(module_path: str) -> Dict[str, Any]:
    """The host snapshot plus the registered adapter's answers for ``module_path``
    (``adapter_ref``, ``adapter_name``, ``preferred_root``, ``additional_paths``,
    ``filtered_subdirs``, ``context_data``); registers the adapter's serializers here."""
    from .adapter_registry import AdapterRegistry
    from .serialization_registry import SerializerRegistry

    snapshot: Dict[str, Any] = serialize_host_snapshot()
    adapter = AdapterRegistry.get()
    path_config: Dict[str, Any] = {}
    if adapter is not None:
        try:
            path_config = adapter.get_path_config(module_path) or {}
        except Exception as e:  # noqa: BLE001 - as pyisolate: logged, the pack loads without it
            log.warning("adapter path config failed: %s", e)
        try:
            adapter.register_serializers(SerializerRegistry.get_instance())
        except Exception as e:  # noqa: BLE001
            log.warning("adapter serializer registration failed: %s", e)
    ref = None
    if adapter is not None:
        cls = type(adapter)
        if cls.__module__ == "__main__":
            log.warning("adapter class %s is defined in __main__ and cannot be rebuilt in workers", cls.__name__)
        else:
            ref = f"{cls.__module__}:{cls.__name__}"
    snapshot.update({
        "adapter_ref": ref,
        "adapter_name": getattr(adapter, "identifier", None) if adapter is not None else None,
        "preferred_root": path_config.get("preferred_root"),
        "additional_paths": path_config.get("additional_paths", []),
        "filtered_subdirs": path_config.get("filtered_subdirs"),
        "context_data": {"module_path": module_path},
    })
    return snapshot


def _cuda_ipc_supported() -> bool:
    try:
        from ...._cuda import cuda_available
    except ImportError:
        return False
    try:
        return bool(cuda_available())
    except Exception:  # noqa: BLE001
        return False


class _HostRPC(AsyncRPC):
    """The host side of one extension's pyisolate RPC (``ext.rpc``)."""

    def __init__(self, ext: "Extension") -> None:
        super().__init__()
        self._ext = ext

    async def _call(self, object_id: str, method: str, args: tuple, kwargs: dict) -> Any:
        return await _nc_loop.run_async(self._ext._nc_call(object_id, method, args, kwargs))

    def _defers(self, abc: type, object_id: str, name: str) -> bool:
        # Given the bare ExtensionBase, the worker uses the pack's own extension class:
        # its methods are known once the worker runs (checked when called).
        return object_id == "extension" and abc in _bare_bases()


def _bare_bases() -> tuple:
    from ..shared import ExtensionBase

    return (ExtensionBase, _NodecellBase)


class Extension(Generic[T]):
    """One extension (node pack) in its own nodecell sandbox; see the module doc."""

    def __init__(self, module_path: str, extension_type: "type[T]", config: Dict[str, Any],
                 venv_root_path: str) -> None:
        if "share_cuda_ipc" not in config:
            config["share_cuda_ipc"] = os.environ.get("PYISOLATE_FORCE_CUDA_IPC") == "1" or (
                bool(config.get("share_torch", False)) and _cuda_ipc_supported())
        elif os.environ.get("PYISOLATE_FORCE_CUDA_IPC") == "1":
            config["share_cuda_ipc"] = True
        self.name = config["name"]
        self.normalized_name = normalize_extension_name(self.name)
        for i, dep in enumerate(config.get("dependencies") or []):
            try:
                validate_dependency(dep)
            except ValueError as e:
                raise ConfigError(f"dependencies[{i}]", str(e)) from None
        venv_root = Path(venv_root_path).resolve()
        self.venv_path = venv_root / self.normalized_name
        validate_path_within_root(self.venv_path, venv_root)
        self.module_path = module_path
        self.config = config
        self.extension_type = extension_type
        if "apis" not in self.config:
            from .adapter_registry import AdapterRegistry

            adapter = AdapterRegistry.get()
            try:
                self.config["apis"] = list(adapter.provide_rpc_services()) if adapter is not None else []
            except Exception as e:  # noqa: BLE001 - as pyisolate: logged
                log.warning("could not load the adapter's RPC services: %s", e)
                self.config["apis"] = []
        if self.config.get("share_torch"):
            try:
                import torch  # noqa: F401
            except ImportError:
                raise RuntimeError("share_torch=True requires PyTorch. Install 'torch' to use tensor-sharing "
                                   "features.") from None
        self._process_initialized = False
        self.extension_proxy: Optional[T] = None
        self.rpc: AsyncRPC = _HostRPC(self)
        self._event_bridge = _EventBridge()
        self.rpc.register_callee(self._event_bridge, "_event_bridge")
        self._nc_callees = HostCallees(self.rpc, cuda=bool(self.config.get("share_cuda_ipc")))
        self._nc_token = new_token()
        self._nc_services_registered = False
        self._nc_venv_root = str(venv_root)
        self._nc_worker: Dict[str, Any] = {}
        self._nc_dispatcher: Any = None
        self._nc_worker_methods: Optional[list] = None
        self._nodecell: Any = None  # the nodecell Extension, once started
        self._nc_manager: Any = None
        self._nc_check_config()

    def __repr__(self) -> str:
        return f"<pyisolate Extension {self.name!r} on nodecell>"

    # -- starting ---------------------------------------------------------------------------

    def _nc_check_config(self) -> None:
        """Refuse what nodecell cannot honour now, not at the first call."""
        from .adapter_registry import AdapterRegistry

        convert(self.config, os.path.abspath(self.module_path), self._nc_token, adapter=AdapterRegistry.get(),
                snapshot={}, bridge=PyisolateBridge)

    def ensure_process_started(self) -> None:
        """Start the sandbox now (blocks: provisioning the venv may take a while)."""
        if self._process_initialized:
            return
        _nc_loop.run_sync(self._nc_start())

    async def _nc_start(self) -> None:
        """On the compat loop: (re)make the nodecell extension and start it."""
        import nodecell

        from .adapter_registry import AdapterRegistry

        # share_cuda_ipc without share_torch is refused by the config check. Without a CUDA
        # device it is accepted (pyisolate refuses to start): no CUDA tensor can exist to share.
        if not self._nc_services_registered:
            services = self.config.get("apis") or []
            if self.config.get("execution_model") == "sealed_worker":
                adapter = AdapterRegistry.get()
                services = list(adapter.provide_rpc_services()) if adapter is not None else []
            from .rpc_protocol import ProxiedSingleton

            for api in services:
                if isinstance(api, type) and issubclass(api, ProxiedSingleton):
                    api()._register(self.rpc)
            self._nc_services_registered = True
        self.rpc._stopped.clear()
        if self._nodecell is None:
            module_path = os.path.abspath(self.module_path)
            adapter = AdapterRegistry.get()
            snapshot = build_extension_snapshot(module_path)
            nc_cfg, self._nc_worker = convert(self.config, module_path, self._nc_token, adapter=adapter,
                                              snapshot=snapshot, bridge=PyisolateBridge)
            ext_type = self.extension_type
            if not (isinstance(ext_type, type) and issubclass(ext_type, _NodecellBase)):
                raise TypeError(f"extension_type must be a pyisolate ExtensionBase subclass, got {ext_type!r}")
            self._nc_drop_unwritable(nc_cfg)
            register_link(self._nc_token, self)
            self._nc_manager = nodecell.ExtensionManager(
                ext_type, nodecell.ExtensionManagerConfig(venv_root_path=self._nc_venv_root_for(nc_cfg)))
            self._nodecell = self._nc_manager.load_extension(nc_cfg)
            _live.add(self)
            self._nc_dispatcher = None
            self._nc_worker_methods = None
        await self._nodecell.start()
        self._process_initialized = True
        venv = getattr(self._nodecell, "venv", None) or {}
        if venv.get("path"):
            self.venv_path = Path(venv["path"])

    def _nc_venv_root_for(self, nc_cfg: Any) -> Optional[str]:
        """``venv_root_path``, unless sandboxed workers (never host uid 0) could not reach it:
        pyisolate's own test host puts it in a private temporary folder. nodecell's shared
        venv cache is used then (content-addressed: nothing is built twice), with a warning."""
        root = self._nc_venv_root
        if os.geteuid() != 0:  # nodecell's cache is shared with sandboxed workers only when root
            return root
        blocked = _unreachable_by_others(root)
        if blocked is None:
            return root
        log.warning("venv_root_path %s: %s is mode %o, out of reach of sandboxed workers (they never run as "
                    "uid 0); using nodecell's venv cache instead", root, blocked, os.stat(blocked).st_mode & 0o777)
        return None

    def _nc_drop_unwritable(self, nc_cfg: Any) -> None:
        """pyisolate's children run as the host user; nodecell's never run as host root. A
        ``writable_paths`` entry the worker's uid could not write anyway (e.g. the folder
        pyisolate's test host shares for torch's file_system tensors) is left out, with a
        warning, instead of failing the sandbox."""
        if not _workers_are_another_uid(nc_cfg):
            return
        keep = []
        for p in nc_cfg["sandbox"]["writable_paths"]:
            src = p.split(":", 1)[0]
            why = _unreachable_by_others(src)
            if why is None and os.path.exists(src) and not os.stat(src).st_mode & 0o002:
                why = src
            if why is None:
                keep.append(p)
            else:
                log.warning("sandbox.writable_paths: %s is left out: the worker's uid cannot write it (%s is mode "
                            "%o; nodecell workers never run as host root)", src, why, os.stat(why).st_mode & 0o777)
        nc_cfg["sandbox"]["writable_paths"] = keep

    def _nc_attached(self, dispatcher: Any) -> Dict[str, Any]:
        """A worker of this extension attached (``PyisolateBridge.attach``, on the compat loop)."""
        self._nc_dispatcher = dispatcher
        self._nc_worker_methods = None
        return dict(self._nc_worker, callees=self._nc_callees)

    # -- calls ------------------------------------------------------------------------------

    def get_proxy(self) -> T:
        """The caller of the extension object in the worker (calls start it when needed)."""
        if self.extension_proxy is None:
            self.extension_proxy = self.rpc.create_caller(self.extension_type, "extension")
        return self.extension_proxy

    async def _nc_call(self, object_id: str, method: str, args: tuple, kwargs: dict) -> Any:
        """On the compat loop: call ``method`` of the worker's callee ``object_id``."""
        nc = self._nodecell
        if nc is None or not self._process_initialized:
            await self._nc_start()
            nc = self._nodecell
        elif self.config.get("isolated", True) and not nc.worker_pids:
            await nc.start()  # the worker died: the next call gets a fresh one
        if not self.config.get("isolated", True):
            if object_id != "extension":
                raise LookupError(f"no object {object_id!r}: extensions loaded with isolated=False have "
                                  "only the extension object")
            return await nc.call(method, *args, **kwargs)
        d = self._nc_dispatcher
        if d is None:
            raise RuntimeError(f"extension {self.name!r}: its worker did not attach")
        if object_id == "extension" and not callable(getattr(self.extension_type, method, None)):
            if self._nc_worker_methods is None:
                self._nc_worker_methods = await d.methods("extension")
            if method not in self._nc_worker_methods:
                raise AttributeError(f"{method} is not a valid method")
        cuda = bool(self.config.get("share_cuda_ipc"))
        return rehydrate(await d.call(object_id, method, prepare(tuple(args), cuda=cuda),
                                      prepare(dict(kwargs), cuda=cuda)))

    def register_event_handler(self, name: str, handler: Any) -> None:
        """Route the worker's ``emit_event(name, payload)`` to ``handler(payload)`` (sync or async;
        it runs on nodecell's compat loop thread)."""
        self._event_bridge.register_handler(name, handler)

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> "_Done":
        """Stop the sandbox (blocks until it is gone). Returns an already-done awaitable,
        so ``await ext.stop()`` works as well; the extension can be started again."""
        nc = self._nodecell
        self._process_initialized = False
        self.extension_proxy = None
        if nc is not None:
            self._nodecell = None
            if _nc_loop.on_loop_thread():
                asyncio.ensure_future(nc.stop())  # cannot block the loop that does the stopping
            else:
                try:
                    _nc_loop.run_sync(nc.stop())
                except Exception as e:  # noqa: BLE001
                    raise RuntimeError(f"Errors stopping {self.name}: {e}") from e
        forget_link(self._nc_token)
        self.rpc.shutdown()
        return _Done()

    def join(self) -> None:
        """Block until the sandbox has ended (e.g. stopped from another thread)."""
        async def wait() -> None:
            while self._nodecell is not None and self._nodecell.worker_pids:
                await asyncio.sleep(0.1)

        _nc_loop.run_sync(wait())


def _workers_are_another_uid(nc_cfg: Any) -> bool:
    """Whether sandboxed workers run as a uid other than this host's (the host is root)."""
    return os.geteuid() == 0 and nc_cfg["sandbox_mode"].value != "disabled"


def _unreachable_by_others(path: str) -> Optional[str]:
    """The first folder on the way to ``path`` (or its nearest existing parent) that other
    users cannot enter, or None."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    blocked = None
    while True:
        if not os.stat(p).st_mode & 0o001:
            blocked = p
        if p == "/":
            return blocked
        p = os.path.dirname(p)


class _Done:
    """An already finished awaitable."""

    def __await__(self) -> Any:
        if False:  # pragma: no cover
            yield None
        return None


_live: "weakref.WeakSet[Extension]" = weakref.WeakSet()


def _stop_everything() -> None:
    """At interpreter exit: end the sandboxes still running, without waiting long."""
    for ext in list(_live):
        nc = ext._nodecell
        if nc is not None:
            ext._nodecell = None
            try:
                _nc_loop.run_sync(nc.stop(), timeout=5)
            except Exception:  # noqa: BLE001 - they end with this process anyway
                pass


_nc_loop.at_exit(_stop_everything)
