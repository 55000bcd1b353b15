"""Writable pack state: a pack may write into its own folder; the writes land in a per-pack layer.

Real packs keep settings in their own folder and write them at import
(ComfyUI-Custom-Scripts' ``pysssss.json``, WAS's ``was_suite_config.json``). An
isolated pack sees its folder at the usual path, but that path is the pack's
**layer**, ``<state root>/packs/<pack>/layer``: a copy of the pack's folder the
pack may change. The host's own folder is never written.

The layer is brought up to date from the pack's folder before every start
(copy on start): a file the pack has not changed follows the folder (new
versions of the pack, hot-reloaded edits), a file the pack changed or created
is the pack's state and is kept; files removed from the folder go away unless
the pack changed them. What was copied is recorded in ``synced.json`` next to
the layer. Workers redo the same sync from a read-only view of the folder
before importing the pack, so a hot reload sees edits.

As root, cells run as uids leased per launch, so the layer is opened to every
uid (directories ``0777``, files ``0666``) before each launch; the state root
and its ``packs`` folder are ``0711`` (a cell's launcher reaches its own layer
by its path; nobody lists the others; cells see only their own bind).
``nodecell state list|rm|gc`` manages the layers.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from typing import Dict, Iterator, Optional, Tuple

__all__ = ["state_root", "layer_of", "sync", "open_for_cells", "RECORD"]

#: The file next to a layer recording what was copied from the pack's folder.
RECORD = "synced.json"
_SKIP_DIRS = {"__pycache__", ".git", "node_modules"}


def state_root() -> str:
    """nodecell's state folder: ``$NODECELL_STATE_DIR``, else ``/var/lib/nodecell`` as root, else
    ``${XDG_STATE_HOME:-~/.local/state}/nodecell`` (the same rule as ``nodecell state``)."""
    from .. import _nodecell

    return str(_nodecell.state_root())


def layer_of(pack: str, root: Optional[str] = None) -> str:
    """The layer folder of pack ``pack`` (not created)."""
    return os.path.join(root or state_root(), "packs", pack, "layer")


def _files(top: str) -> Iterator[Tuple[str, os.stat_result]]:
    """(relative path, lstat) of every file and symlink under ``top`` (skipping caches and VCS folders)."""
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for f in sorted(files):
            p = os.path.join(root, f)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                yield os.path.relpath(p, top), st


def _sig(st: os.stat_result) -> Tuple[int, int]:
    return (st.st_size, st.st_mtime_ns)


def sync(src: str, layer: str, record: Optional[str] = None) -> Dict[str, int]:
    """Bring ``layer`` up to date from ``src`` (see the module docs); returns counts
    (``copied``, ``kept``, ``removed``).

    The record holds, per copied file, the source's and the copy's (size, mtime):
    a copy that still matches is the folder's (it follows the source); one that
    does not was changed by the pack (kept).
    """
    record = record or os.path.join(os.path.dirname(layer), RECORD)
    try:
        with open(record) as f:
            synced: Dict[str, list] = {k: list(v) for k, v in json.load(f).items()}
    except (OSError, ValueError):
        synced = {}
    os.makedirs(layer, exist_ok=True)
    counts = {"copied": 0, "kept": 0, "removed": 0}
    new: Dict[str, list] = {}
    for rel, st in _files(src):
        dst = os.path.join(layer, rel)
        try:
            dst_st: Optional[os.stat_result] = os.lstat(dst)
        except OSError:
            dst_st = None
        old = synced.get(rel)
        if dst_st is not None and (old is None or list(_sig(dst_st)) != old[2:]):
            counts["kept"] += 1  # the pack created or changed it: its state
            if old is not None:
                new[rel] = old
            continue
        if dst_st is None or old is None or list(_sig(st)) != old[:2]:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if dst_st is not None:
                os.unlink(dst)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(os.path.join(src, rel)), dst)
            else:
                shutil.copy2(os.path.join(src, rel), dst)
            counts["copied"] += 1
        new[rel] = list(_sig(st)) + list(_sig(os.lstat(dst)))
    for rel, old in synced.items():
        if rel in new:
            continue
        dst = os.path.join(layer, rel)
        try:
            if list(_sig(os.lstat(dst))) == old[2:]:
                os.unlink(dst)
                counts["removed"] += 1
        except OSError:
            pass
    tmp = record + ".tmp"
    with open(tmp, "w") as f:
        json.dump(new, f)
    os.replace(tmp, record)
    return counts


def open_for_cells(layer: str) -> None:
    """Let whichever uid the next cell gets write the layer (root hosts lease uids per launch):
    directories ``0777``, files ``0666`` (their execute bits kept). Called before every launch
    of the pack's cell, restarts too: what the last cell created belongs to the last uid. Never
    follows a symlink a cell left (each entry is opened ``O_NOFOLLOW`` and changed by its fd)."""
    for root, dirs, files in os.walk(layer):
        _chmod_nofollow(root, 0o777, directory=True)
        for f in files:
            _chmod_nofollow(os.path.join(root, f), 0o666, directory=False)


def _chmod_nofollow(path: str, mode: int, directory: bool) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # a symlink (ELOOP), or gone: nothing to open up
        return
    try:
        st = os.fstat(fd)
        if directory or stat.S_ISREG(st.st_mode):
            os.fchmod(fd, mode | (st.st_mode & 0o111 if not directory else 0))
    finally:
        os.close(fd)
