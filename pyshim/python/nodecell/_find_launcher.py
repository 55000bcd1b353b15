"""Locate the ``nodecell`` launcher binary that starts sandboxes.

The host never forks workers itself (it is multi-threaded; user namespaces need
a single-threaded caller), so it runs this binary. Search order:

1. ``$NODECELL_LAUNCHER`` (an explicit path),
2. ``nodecell/bin/nodecell`` inside this package (what the wheel ships),
3. ``<sys.prefix>/bin/nodecell`` and every ``nodecell`` on ``$PATH``,
4. ``target/release/nodecell`` of a source checkout this package lives in.

The error names every path tried.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["find_launcher", "LauncherNotFound"]


class LauncherNotFound(FileNotFoundError):
    """No usable ``nodecell`` launcher binary was found."""


def _candidates() -> list:
    out = []
    env = os.environ.get("NODECELL_LAUNCHER")
    if env:
        out.append(Path(env))
    here = Path(__file__).resolve().parent
    out.append(here / "bin" / "nodecell")
    out.append(Path(sys.prefix) / "bin" / "nodecell")
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d:
            out.append(Path(d) / "nodecell")
    # A development checkout: pyshim/python/nodecell -> repo root.
    for parent in here.parents:
        cand = parent / "target" / "release" / "nodecell"
        if (parent / "Cargo.toml").is_file():
            out.append(cand)
            break
    return out


def _usable(p: Path) -> bool:
    if not (p.is_file() and os.access(p, os.X_OK)):
        return False
    # A console-script shim named nodecell (the Python entry point) is not the launcher.
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def find_launcher() -> str:
    """Return the absolute path of the launcher; raise :class:`LauncherNotFound` naming every path tried."""
    tried = []
    seen = set()
    for cand in _candidates():
        key = str(cand)
        if key in seen:
            continue
        seen.add(key)
        tried.append(key)
        if _usable(cand):
            return str(cand.resolve())
    found = shutil.which("nodecell")
    raise LauncherNotFound(
        "the nodecell launcher binary was not found; tried:\n  "
        + "\n  ".join(tried)
        + ("" if found is None else f"\n(`{found}` on PATH is not an ELF launcher)")
        + "\nset NODECELL_LAUNCHER to its path, or reinstall the nodecell wheel"
    )
