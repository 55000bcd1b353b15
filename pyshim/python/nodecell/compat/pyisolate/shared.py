"""pyisolate's ``ExtensionLocal`` and ``ExtensionBase`` (``pyisolate.shared``) on nodecell.

Subclasses of :class:`ExtensionBase` are nodecell extension types too. In a worker
the framework gives the object its RPC before any hook runs, as pyisolate does:
``register_callee``, ``create_caller``, ``use_remote`` and ``emit_event`` then work.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any, TypeVar

from ...shared import ExtensionBase as _NodecellExtensionBase
from ...shared import ExtensionLocal as _NodecellExtensionLocal
from ._internal.rpc_protocol import AsyncRPC, ProxiedSingleton

try:
    from typing import final
except ImportError:  # pragma: no cover
    def final(f: Any) -> Any:  # type: ignore[no-redef]
        return f

__all__ = ["ExtensionLocal", "ExtensionBase", "proxied_type"]

proxied_type = TypeVar("proxied_type", bound=object)


class ExtensionLocal(_NodecellExtensionLocal):
    """Code that runs in the extension's process, with its RPC."""

    async def before_module_loaded(self) -> None:
        """Hook: before the pack's module is imported."""

    async def on_module_loaded(self, module: ModuleType) -> None:
        """Hook: after the pack's module was imported."""

    @final
    def _initialize_rpc(self, rpc: AsyncRPC) -> None:
        """Set the RPC (the framework calls this)."""
        self._rpc = rpc

    @final
    def register_callee(self, object_instance: object, object_id: str) -> None:
        """Let the other side call ``object_instance`` as ``object_id``."""
        self._rpc.register_callee(object_instance, object_id)

    @final
    def create_caller(self, object_type: "type[proxied_type]", object_id: str) -> proxied_type:
        """A caller of the other side's ``object_id`` (methods of ``object_type``)."""
        return self._rpc.create_caller(object_type, object_id)

    @final
    def use_remote(self, proxied_singleton: "type[ProxiedSingleton]") -> None:
        """Make ``proxied_singleton()`` the other side's instance."""
        proxied_singleton.use_remote(self._rpc)

    @final
    def emit_event(self, name: str, payload: dict) -> None:
        """Send event ``name`` to the host's handler (``register_event_handler``) and wait
        for it. ``payload`` must be JSON-serializable (TypeError at once otherwise);
        ValueError-like RemoteError when the host has no handler for ``name``."""
        json.dumps(payload)
        self._rpc._emit_event(name, payload)


class ExtensionBase(ExtensionLocal, _NodecellExtensionBase):
    """Base of every extension class (pyisolate's API; also a nodecell extension type)."""

    def __init__(self) -> None:
        super().__init__()

    async def on_module_loaded(self, module: ModuleType) -> None:
        """Hook: after the pack's module was imported. Given the bare ``ExtensionBase``
        (as pyisolate's README does), the worker uses the pack's own extension class."""
        if type(self) is ExtensionBase:
            from ._internal._nc_child import adopt_from_module

            await adopt_from_module(module)

    async def stop(self) -> None:
        """Hook: the extension is being stopped."""
        rpc = getattr(self, "_rpc", None)
        if rpc is not None:
            await rpc.stop()
