"""nodecell: run each node pack in its own sandboxed process, with its own venv,
and call it as if it were local.

    import nodecell
    manager = nodecell.ExtensionManager(MyExtensionBase,
                                        nodecell.ExtensionManagerConfig(venv_root_path="./venvs"))
    ext = await manager.load_extension(nodecell.ExtensionConfig(
        name="my_pack", module_path="nodes/my_pack", dependencies=["numpy==1.26.4"]))
    out = await ext.execute_node("MyNode", image=tensor)
    await manager.stop_all_extensions()

The names follow pyisolate 0.10 (``ExtensionBase``, ``ExtensionConfig``,
``ExtensionManager``, ``ExtensionManagerConfig``, ``ProxiedSingleton``,
``local_execution``, ``SandboxMode``), so pyisolate code moves over by changing
the import; :mod:`nodecell.compat` runs it without even that (``import pyisolate``
resolves to nodecell's layer).
"""

from __future__ import annotations

from . import _nodecell
from ._rpc import RemoteCallable, RemoteObject, register_type
from ._tensors import empty, is_shared, set_tensor_pool, tensor_pool_stats
from .config import ExtensionConfig, ExtensionManagerConfig, SandboxConfig, SandboxMode, parse_size
from .errors import (CallTimeout, ChannelFull, ConfigError, ExtensionStopped, LoopEnded, NodecellError,
                     ProtocolError, ProvisionError, RemoteError, SandboxUnavailable, WorkerCrashed)
from .host import Extension, ExtensionManager
from .shared import ExtensionBase, ExtensionLocal, ProxiedSingleton, local_execution

__version__ = _nodecell.__version__

__all__ = [
    "CallTimeout",
    "ChannelFull",
    "ConfigError",
    "Extension",
    "ExtensionBase",
    "ExtensionConfig",
    "ExtensionLocal",
    "ExtensionManager",
    "ExtensionManagerConfig",
    "ExtensionStopped",
    "LoopEnded",
    "NodecellError",
    "ProtocolError",
    "ProvisionError",
    "ProxiedSingleton",
    "RemoteCallable",
    "RemoteError",
    "RemoteObject",
    "SandboxConfig",
    "SandboxMode",
    "SandboxUnavailable",
    "WorkerCrashed",
    "check",
    "empty",
    "is_shared",
    "local_execution",
    "parse_size",
    "register_type",
    "run_sync",
    "set_tensor_pool",
    "tensor_pool_stats",
]


def check() -> dict:
    """What this kernel and user can enforce (``nodecell check --json``), as a dict."""
    import json
    import subprocess

    from ._find_launcher import find_launcher

    out = subprocess.run([find_launcher(), "check", "--json"], capture_output=True, text=True, check=False)
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise NodecellError(f"nodecell check failed: {out.stderr.strip()}") from None


def run_sync(awaitable):  # type: ignore[no-untyped-def]
    """Run an awaitable to completion from synchronous code (no loop running in this thread)."""
    import asyncio

    async def _wrap():  # type: ignore[no-untyped-def]
        return await awaitable

    return asyncio.run(_wrap())
