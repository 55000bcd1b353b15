"""The host side: :class:`ExtensionManager` and :class:`Extension` (re-exported here).

An extension (node pack) runs in a **cell**: one ``nodecell run`` sandbox with
the pack's venv, in which a zygote has imported the pack's heavy modules once
and forks **workers** on demand. Each worker has its own channel (rings in a
sealed memfd + a socket for fds) registered with the process's reactor.

Failure handling: a worker that dies fails its pending calls with
:class:`WorkerCrashed` (exit code / signal / memory limit), a call past its
deadline raises :class:`CallTimeout` and its worker is killed; in both cases
the next call starts a fresh worker from the zygote (or a fresh cell if the
zygote died too). Nothing the worker sends is unpickled or imported.
"""

from __future__ import annotations

from .cell import SANDBOX_HOST, SANDBOX_LIB
from .extension import Extension
from .manager import ExtensionManager, default_interpreter

__all__ = ["ExtensionManager", "Extension", "default_interpreter", "SANDBOX_HOST", "SANDBOX_LIB"]
