"""pyisolate 0.10's API on nodecell: ``import pyisolate`` code runs unchanged.

Reach it as ``nodecell.compat.pyisolate``, or as ``pyisolate`` after
``nodecell.compat.install_pyisolate_alias()``. Each extension runs in a nodecell
sandbox (namespaces, Landlock, seccomp, cgroups) with its venv from nodecell's
cache, calls travel over nodecell's channel (tensors zero-copy, nothing pickled).
What differs from pyisolate and why: the README's pyisolate section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ._internal.rpc_protocol import ProxiedSingleton, local_execution
from ._internal.singleton_context import singleton_scope
from ._internal.tensor_serializer import flush_tensor_keeper, purge_orphan_sender_shm_files
from .config import ExtensionConfig, ExtensionManagerConfig, SandboxMode
from .host import ExtensionBase, ExtensionManager
from .sealed import SealedNodeExtension

if TYPE_CHECKING:
    from .interfaces import IsolationAdapter

#: The pyisolate API version mirrored.
__version__ = "0.10.2"

__all__ = [
    "ExtensionBase",
    "ExtensionManager",
    "ExtensionManagerConfig",
    "ExtensionConfig",
    "SandboxMode",
    "SealedNodeExtension",
    "ProxiedSingleton",
    "local_execution",
    "singleton_scope",
    "flush_tensor_keeper",
    "purge_orphan_sender_shm_files",
    "register_adapter",
    "get_adapter",
]


def register_adapter(adapter: "IsolationAdapter") -> None:
    """Register the application's adapter (one per process)."""
    from ._internal.adapter_registry import AdapterRegistry

    AdapterRegistry.register(adapter)


def get_adapter() -> "Optional[IsolationAdapter]":
    """The registered adapter, or None."""
    from ._internal.adapter_registry import AdapterRegistry

    return AdapterRegistry.get()


