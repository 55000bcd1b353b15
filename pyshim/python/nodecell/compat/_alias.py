"""The import alias: ``pyisolate`` and ``pyisolate.<module>`` resolve to
:mod:`nodecell.compat.pyisolate` and its modules (the very same module objects).

A meta path finder placed first on ``sys.meta_path``; nothing of a real pyisolate
install is imported or touched while it is active, and nothing at all happens
until :func:`install` is called.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from types import ModuleType
from typing import List, Optional, Sequence

from ..errors import NodecellError

ALIAS = "pyisolate"
TARGET = "nodecell.compat.pyisolate"

_lock = threading.Lock()


class PyisolateAlreadyImported(NodecellError, RuntimeError):
    """A real ``pyisolate`` was imported before the alias was installed: code holding
    its classes would mix with nodecell's. Install the alias first thing instead."""


class _Loader(importlib.abc.Loader):
    """Hands out the already imported ``nodecell.compat.pyisolate...`` module."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        # module_from_spec() set the alias spec on it: keep the module's own.
        module.__spec__ = self.spec


class _Finder(importlib.abc.MetaPathFinder):
    """Maps ``pyisolate[.x]`` onto ``nodecell.compat.pyisolate[.x]``."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = TARGET + fullname[len(ALIAS):]
        try:
            module = importlib.import_module(real)
        except ModuleNotFoundError as e:
            if e.name == real:
                # Not one nodecell mirrors: a plain "No module named 'pyisolate.x'",
                # never a fall-through to another pyisolate on sys.path.
                raise ModuleNotFoundError(
                    f"No module named {fullname!r} (nodecell.compat.pyisolate does not mirror it)",
                    name=fullname) from None
            raise
        is_pkg = hasattr(module, "__path__")
        return importlib.machinery.ModuleSpec(fullname, _Loader(module), is_package=is_pkg)


_finder: Optional[_Finder] = None


def install() -> None:
    """Make ``import pyisolate`` resolve to nodecell's compatibility layer (idempotent)."""
    global _finder
    with _lock:
        if _finder is not None and _finder in sys.meta_path:
            return
        real = sys.modules.get(ALIAS)
        if real is not None and getattr(real, "__name__", "") != TARGET:
            raise PyisolateAlreadyImported(
                f"pyisolate was already imported from {getattr(real, '__file__', '?')}; call "
                "nodecell.compat.install_pyisolate_alias() before anything imports pyisolate")
        _finder = _Finder()
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Remove the alias and forget the ``pyisolate`` module names it created."""
    global _finder
    with _lock:
        if _finder is not None and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        _finder = None
        for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
            if getattr(sys.modules[name], "__name__", "").startswith(TARGET):
                del sys.modules[name]


def installed() -> bool:
    """Whether ``import pyisolate`` currently resolves to nodecell's layer."""
    return _finder is not None and _finder in sys.meta_path


def aliased_modules() -> List[str]:
    """The ``pyisolate...`` names imported through the alias so far."""
    return sorted(n for n, m in sys.modules.items()
                  if (n == ALIAS or n.startswith(ALIAS + ".")) and getattr(m, "__name__", "").startswith(TARGET))

