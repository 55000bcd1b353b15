"""Run code written for pyisolate 0.10 on nodecell, unchanged.

:mod:`nodecell.compat.pyisolate` mirrors pyisolate's public modules (``pyisolate``,
``.config``, ``.host``, ``.interfaces``, ``.shared``, ``.sealed``, ``.path_helpers``
and the ``._internal`` names upstream ComfyUI's isolation layer imports) on top of
nodecell's sandboxes and channel. Opting in:

* in one process: call :func:`install_pyisolate_alias` before anything imports
  ``pyisolate``; from then on ``import pyisolate`` and ``import pyisolate.<module>``
  give nodecell's modules. Workers started through it get the alias too.
* for a whole process tree: ``python -m nodecell.compat exec -- CMD ARGS...`` (every
  Python process CMD starts gets the alias), or ``python -m nodecell.compat
  install-pth`` for every process of the current venv (``remove-pth`` undoes it).

Nothing here touches a real pyisolate installation unless one of these is used.
"""

from __future__ import annotations

import os
from typing import List

from . import _alias
from ._alias import PyisolateAlreadyImported

__all__ = ["install_pyisolate_alias", "uninstall_pyisolate_alias", "pyisolate_alias_installed",
           "PyisolateAlreadyImported", "autoload_path"]


def install_pyisolate_alias() -> None:
    """Make ``import pyisolate`` / ``import pyisolate.<module>`` resolve to
    :mod:`nodecell.compat.pyisolate` in this process (and in the workers of the
    extensions it loads). Idempotent. Raises :class:`PyisolateAlreadyImported` when a
    real pyisolate was imported already."""
    _alias.install()


def uninstall_pyisolate_alias() -> None:
    """Undo :func:`install_pyisolate_alias` (modules already imported keep working)."""
    _alias.uninstall()


def pyisolate_alias_installed() -> bool:
    """Whether ``import pyisolate`` resolves to nodecell's layer in this process."""
    return _alias.installed()


def autoload_path() -> str:
    """A folder to put first on ``PYTHONPATH``: its ``sitecustomize`` installs the alias in
    every Python process that starts with ``NODECELL_PYISOLATE_ALIAS=1`` (what
    ``python -m nodecell.compat exec`` sets up), then runs any other ``sitecustomize``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_autoload")


def _aliased() -> List[str]:
    return _alias.aliased_modules()
