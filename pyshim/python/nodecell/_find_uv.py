"""Locate the ``uv`` executable that builds each pack's venv.

The nodecell wheel depends on the ``uv`` package from PyPI, which installs the
binary into the interpreter's scripts folder. The search itself lives in the
Rust provision crate (one definition for this package, the provisioner and the
``nodecell`` command line), in this order:

1. ``$NODECELL_UV`` (when set, the only candidate),
2. ``uv`` in each folder of ``$PATH``,
3. next to the host interpreter, then ``<sys.prefix>/bin/uv``,
4. the ``uv`` package's own answer (``uv.find_uv_bin()``: user-scheme and
   ``--target`` installs).

The error names every place searched.
"""

from __future__ import annotations

import sys
from typing import Optional

from . import _nodecell

__all__ = ["UvNotFound", "find_uv"]


class UvNotFound(FileNotFoundError):
    """No usable ``uv`` executable was found."""


def find_uv(host_python: Optional[str] = None) -> str:
    """Return the absolute path of uv for ``host_python`` (default: this interpreter).

    Raises :class:`UvNotFound` listing every place searched.
    """
    prefix = sys.prefix if host_python is None else None
    try:
        return _nodecell.find_uv(host_python or sys.executable, prefix)
    except FileNotFoundError as e:
        raise UvNotFound(str(e)) from None
