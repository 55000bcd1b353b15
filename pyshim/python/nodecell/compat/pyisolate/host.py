"""pyisolate's ``ExtensionManager`` (``pyisolate.host``) on nodecell.

``load_extension(config)`` returns the handle at once (synchronously, as pyisolate
does); the sandbox starts on first use. The handle also works with ``await`` (it
then starts without blocking the event loop), so both spellings of pyisolate's own
documentation run. ``stop_all_extensions()`` has stopped everything when it
returns, from sync code and from inside a running loop alike.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Generic, List, Tuple, TypeVar

from ._internal import _nc_loop
from ._internal.host import Extension
from .config import ExtensionConfig, ExtensionManagerConfig
from .shared import ExtensionBase, ExtensionLocal

__all__ = ["ExtensionManager", "ExtensionBase", "ExtensionConfig", "ExtensionManagerConfig", "Extension"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=ExtensionBase)


class HostExtension(ExtensionLocal):
    """What :meth:`ExtensionManager.load_extension` returns.

    Attribute access finds the ``Extension``'s own API first (``stop``, ``name``,
    ``config``, ``rpc`` ... as in pyisolate), then the extension's methods in the
    worker; ``.proxy`` always reaches the extension's methods only."""

    def __init__(self, extension_instance: Extension) -> None:
        super().__init__()
        self._extension = extension_instance
        self._proxy: Any = None
        self._pending_event_handlers: List[Tuple[str, Any]] = []
        self._initialize_rpc(extension_instance.rpc)

    @property
    def proxy(self) -> Any:
        """The extension's methods. Outside a running event loop the sandbox starts here
        (pyisolate's behaviour); inside one, the first awaited call starts it."""
        ext = self._extension
        if self._proxy is not None and not ext._process_initialized:
            self._proxy = None
        if self._proxy is None:
            if hasattr(ext, "ensure_process_started"):
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    ext.ensure_process_started()
            for name, handler in self._pending_event_handlers:
                ext.register_event_handler(name, handler)
            self._proxy = ext.get_proxy()
            self._initialize_rpc(ext.rpc)
        return self._proxy

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__") and item.endswith("__"):
            raise AttributeError(item)
        ext = self.__dict__.get("_extension")
        if ext is None:
            raise AttributeError(item)
        if hasattr(ext, item):
            return getattr(ext, item)
        return getattr(self.proxy, item)

    def __await__(self) -> Any:
        """``await manager.load_extension(cfg)``: start the sandbox without blocking the loop."""
        async def start() -> "HostExtension":
            ext = self._extension
            if not ext._process_initialized and hasattr(ext, "_nc_start"):
                await _nc_loop.run_async(ext._nc_start())
            return self
        return start().__await__()

    def register_event_handler(self, name: str, handler: Any) -> None:
        """Route the worker's ``emit_event(name, payload)`` to ``handler(payload)``."""
        self._pending_event_handlers.append((name, handler))
        self._extension.register_event_handler(name, handler)

    def __repr__(self) -> str:
        return f"<pyisolate extension {getattr(self._extension, 'name', '?')!r} on nodecell>"


class ExtensionManager(Generic[T]):
    """Loads extensions and supervises their sandboxes (pyisolate's API)."""

    def __init__(self, extension_type: "type[T]", config: ExtensionManagerConfig) -> None:
        self.config = config
        self.extensions: Dict[str, Extension] = {}
        self.extension_type = extension_type

    def load_extension(self, config: ExtensionConfig) -> T:
        """Register an extension and return its handle; the sandbox starts on first use
        (or at once with ``await``). ValueError when the name is loaded already."""
        name = config["name"]
        if name in self.extensions:
            raise ValueError(f"Extension '{name}' is already loaded")
        extension = Extension(module_path=config["module_path"], extension_type=self.extension_type,
                              config=config, venv_root_path=self.config["venv_root_path"])
        self.extensions[name] = extension
        return HostExtension(extension)  # type: ignore[return-value]

    def stop_all_extensions(self) -> "_Done":
        """Stop every extension (errors are logged, not raised) and forget them. Returns an
        already-done awaitable, so ``await manager.stop_all_extensions()`` works too."""
        for name, extension in list(self.extensions.items()):
            try:
                extension.stop()
            except Exception as e:  # noqa: BLE001 - as pyisolate: logged
                logger.error(f"Error stopping extension '{name}': {e}")
        self.extensions.clear()
        return _Done()


class _Done:
    def __await__(self) -> Any:
        if False:  # pragma: no cover
            yield None
        return None
