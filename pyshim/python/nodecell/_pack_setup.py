"""Inside an app cell's zygote: what it imported, and one pack's setup in a freshly forked worker.

An app cell (:mod:`nodecell.appcell`) is one sandbox whose zygote has imported
torch and the host app's modules once; every compatible pack's worker is a fork
of it. The host sends, with each ``spawn``, the pack's setup: its environment,
working directory and venv. :func:`apply` runs in the forked child before the
worker serves: the zygote's venv leaves ``sys.path`` and the pack's comes in
(``.pth`` files honoured), so the pack imports its own distributions while the
modules the zygote already imported (checked compatible by the host) stay.
Last, with ``"confine"`` in the setup, the worker walls itself off from the
other packs (``_nodecell.confine_forked_worker``): its own uid (as root, from
the cell's ``--uid-range``), no capabilities, no_new_privs, a Landlock domain of
its own paths only, a private ``TMPDIR``, signals scoped to itself.

Only plain data crosses: lists of strings and a string-to-string dict (types checked in Rust).
"""

from __future__ import annotations

import importlib
import os
import site
import sys
import sysconfig
from typing import Any, Dict, List, Optional

__all__ = ["imported_modules", "apply", "confined"]

#: What :func:`confine` applied in this worker (None: not confined).
confined: Optional[Dict[str, Any]] = None


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
    (``drop``: the zygote's venv paths; ``site``: the pack venv's site-packages folders),
    optionally ``"confine": {"uid": n | None, "ro": [path], "rw": [path], "tmp": path}``.
    The zygote reads it from a ``spawn`` control message, whose fields and their types
    ``nodecell_wire::control::PackSetup`` checks (a malformed one never gets here).
    Raises ``ValueError`` on a malformed ``confine``, ``OSError`` when the folder is missing and
    ``_nodecell.ConfineError`` when a wall cannot be applied: the worker then exits and the
    host reports it.
    """
    env = setup.get("env") or {}
    unset = setup.get("unset") or []
    drop = setup.get("drop") or []
    sites = setup.get("site") or []
    for k in unset:
        os.environ.pop(k, None)
    os.environ.update(env)
    _size_torch_pool(env)
    cwd = setup.get("cwd")
    if cwd:
        os.chdir(str(cwd))
    gone = set(drop)
    sys.path[:] = [p for p in sys.path if p not in gone]
    for d in sites:
        site.addsitedir(d)
    importlib.invalidate_caches()
    if setup.get("confine") is not None:
        confine(setup["confine"])


def _size_torch_pool(env: dict[str, str]) -> None:
    """torch sized its pool in the zygote, from the zygote's environment: a pack whose
    ``OMP_NUM_THREADS`` differs (its own CPU limit or ``env``) gets its size here."""
    torch = sys.modules.get("torch")
    want = env.get("OMP_NUM_THREADS", "")
    if torch is not None and want.isdigit() and int(want) > 0 and torch.get_num_threads() != int(want):
        torch.set_num_threads(int(want))


def _strings(field: str, value: Any) -> List[str]:
    if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
        raise ValueError(f"pack setup: confine.{field} must be a list of strings")
    return value


def confine(spec: Any) -> Dict[str, Any]:
    """Wall this forked worker off from the other packs of its app cell (see the module docs).
    ``spec``: ``{"uid": n | None, "ro": [path], "rw": [path], "tmp": path}``; ``tmp`` is made
    and becomes ``TMPDIR`` (only this worker's domain reaches it). Must run single-threaded, before any
    pack code."""
    global confined
    from . import _nodecell

    if not isinstance(spec, dict):
        raise ValueError(f"pack setup: confine: expected a dict, got {type(spec).__name__}")
    uid = spec.get("uid")
    if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0):
        raise ValueError(f"pack setup: confine.uid must be a positive int or None, got {uid!r}")
    ro, rw = _strings("ro", spec.get("ro") or []), _strings("rw", spec.get("rw") or [])
    tmp = spec.get("tmp")
    if tmp is not None:
        if not isinstance(tmp, str) or not tmp.startswith("/tmp/"):
            raise ValueError(f"pack setup: confine.tmp must be a folder under /tmp, got {tmp!r}")
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:
            pass
        # Made by the zygote's uid, which cannot chown: open to the worker's own uid when it has
        # one (the Landlock domains keep the other packs out; what the worker makes is its own).
        os.chmod(tmp, 0o700 if uid is None else 0o777)
        os.environ["TMPDIR"] = tmp
        # A sandbox's HOME is its /tmp; in a shared cell only the pack's own folder there is
        # writable, so that folder is its home (transparent-background makes ~/.transparent-background).
        if os.environ.get("HOME", "/tmp") == "/tmp":
            os.environ["HOME"] = tmp
        import tempfile

        tempfile.tempdir = None  # the zygote may have asked already
        rw = rw + [tmp]
    _list_path_entries()
    confined = dict(_nodecell.confine_forked_worker(uid, uid, ro, rw, True))
    return confined


def _list_path_entries() -> None:
    """List every ``sys.path`` folder once now, while this worker still may: the Landlock
    domain allows the folders' own entries (the app's ``comfy/``, a host module) but not the
    folders holding them (the app's root also holds the other packs), and the import system
    keeps each listing until the folder changes."""
    import importlib.machinery

    importlib.invalidate_caches()
    for entry in list(sys.path):
        if isinstance(entry, str) and os.path.isdir(entry or "."):
            importlib.machinery.PathFinder.find_spec("_nodecell_list_only_", [entry])
