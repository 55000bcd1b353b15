"""Inside an app cell's zygote: what it imported, and one pack's setup in a freshly forked worker.

An app cell (:mod:`nodecell.appcell`) is one sandbox whose zygote has imported
torch and the host app's modules once; every compatible pack's worker is a fork
of it. The host sends, with each ``spawn``, the pack's setup: its environment,
working directory and venv. :func:`apply` runs in the forked child before the
worker serves: the zygote's venv leaves ``sys.path`` and the pack's comes in
(``.pth`` files honoured), so the pack imports its own distributions while the
modules the zygote already imported (checked compatible by the host) stay.

Only plain data crosses: lists of strings and a string-to-string dict.
"""

from __future__ import annotations

import importlib
import os
import site
import sys
import sysconfig
from typing import Any, Dict

__all__ = ["imported_modules", "apply"]


def imported_modules() -> Dict[str, str]:
    """Top-level modules imported here that do not come from the standard library:
    name -> the file they were loaded from (the host checks each against a pack's venv)."""
    paths = sysconfig.get_paths()
    std = tuple(os.path.realpath(paths[k]) + "/" for k in ("stdlib", "platstdlib") if paths.get(k))
    out: Dict[str, str] = {}
    for name, mod in list(sys.modules.items()):
        if "." in name or mod is None or name == "nodecell":
            continue
        f = getattr(mod, "__file__", None)
        if not isinstance(f, str):
            continue
        real = os.path.realpath(f)
        if real.startswith(std) and "/site-packages/" not in real and "/dist-packages/" not in real:
            continue
        out[name] = f
    return out


def apply(setup: Any) -> None:
    """Make this forked worker the pack's: environment, working directory, venv on ``sys.path``.

    ``setup``: ``{"env": {k: v}, "unset": [k], "cwd": path, "drop": [path], "site": [path]}``
    (``drop``: the zygote's venv paths; ``site``: the pack venv's site-packages folders).
    Raises ``ValueError`` on a malformed setup and ``OSError`` when the folder is missing:
    the worker then exits and the host reports it.
    """
    if not isinstance(setup, dict):
        raise ValueError(f"pack setup: expected a dict, got {type(setup).__name__}")
    env = setup.get("env") or {}
    unset = setup.get("unset") or []
    drop = setup.get("drop") or []
    sites = setup.get("site") or []
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError("pack setup: env must map strings to strings")
    for field, value in (("unset", unset), ("drop", drop), ("site", sites)):
        if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            raise ValueError(f"pack setup: {field} must be a list of strings")
    for k in unset:
        os.environ.pop(k, None)
    os.environ.update(env)
    cwd = setup.get("cwd")
    if cwd:
        os.chdir(str(cwd))
    gone = set(drop)
    sys.path[:] = [p for p in sys.path if p not in gone]
    for d in sites:
        site.addsitedir(d)
    importlib.invalidate_caches()
