"""Hot reload of an isolated extension (``ExtensionConfig(reload=True)``).

At the start of each call the host compares a cheap fingerprint of the pack's
files (path, mtime and size of every ``*.py`` file and of the manifest files),
at most once per :data:`CHECK_INTERVAL` seconds. When it changed:

* new calls go to fresh workers, forked from the same warm zygote, which import
  the new code (tens of milliseconds with torch already loaded);
* when the manifest changed what the venv or the sandbox is made of
  (dependencies, ``share_torch``, limits, sandbox settings), the fresh workers
  run in a new sandbox; the venv is provisioned again only when the
  dependencies changed (the venv cache is content-addressed);
* calls already running finish on the old workers, which are then stopped
  (and their old sandbox with them).

A pack whose new code fails to import makes calls fail with that import error
until the files change again. Remote handles to objects of the old workers die
with them.

The Extension keeps its state in ``_reload_state``; :mod:`nodecell.host` calls
:func:`note_start` when the extension starts, :func:`maybe_reload` at the start
of each call, :func:`is_retired` when a worker ends and :func:`stop_retiring`
when the extension stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, List, Optional, Tuple

__all__ = ["CHECK_INTERVAL", "fingerprint", "generation"]

#: Seconds between two looks at a pack's files (per extension).
CHECK_INTERVAL = 0.5
#: Files besides ``*.py`` whose change reloads the pack; the first three also re-read its settings.
MANIFEST_FILES = ("manifest.yaml", "pyisolate.yaml", "pyproject.toml", "requirements.txt")
_SKIP_DIRS = {"__pycache__", "node_modules", "venv", ".venv", "site-packages"}
_MAX_FILES = 20000
#: ExtensionConfig keys a manifest sets that need a new sandbox (and maybe a new venv) when they change.
_RELAUNCH_KEYS = ("dependencies", "share_torch", "python", "extra_index_urls", "max_memory", "max_cpu_percent",
                  "max_pids", "gpu")
_SANDBOX_KEYS = ("network", "gpu", "writable_paths", "tmp_size")

log = logging.getLogger("nodecell")


class _Fingerprint(tuple):
    """(code files, manifest files): each a tuple of (relative path, mtime_ns, size)."""

    @property
    def code(self) -> Tuple[Any, ...]:
        return self[0]

    @property
    def manifest(self) -> Tuple[Any, ...]:
        return self[1]


def fingerprint(pack_dir: str) -> _Fingerprint:
    """Path, mtime and size of every ``*.py`` file (recursively) and manifest file of a pack."""
    code: List[Tuple[str, int, int]] = []
    manifest: List[Tuple[str, int, int]] = []
    n = 0
    for root, dirs, files in os.walk(pack_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        top = root == pack_dir
        for f in sorted(files):
            is_manifest = top and f in MANIFEST_FILES
            if not (f.endswith(".py") or is_manifest):
                continue
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            (manifest if is_manifest else code).append((os.path.relpath(p, pack_dir), st.st_mtime_ns, st.st_size))
            n += 1
        if n > _MAX_FILES:
            break
    return _Fingerprint((tuple(code), tuple(manifest)))


class _State:
    def __init__(self, ext: Any) -> None:
        self.fp = fingerprint(ext.config["module_path"])
        self.next_check = time.monotonic() + CHECK_INTERVAL
        self.manifest = _read_manifest(ext.config["module_path"])
        self.generation = 0
        self.retiring: List[Tuple[asyncio.Task, Any]] = []


def _read_manifest(pack_dir: str) -> Optional[Any]:
    from .config import ExtensionConfig

    if not any(os.path.isfile(os.path.join(pack_dir, f)) for f in MANIFEST_FILES[:3]):
        return None
    try:
        return ExtensionConfig.from_manifest(pack_dir)
    except Exception:  # noqa: BLE001 - a pack configured only in code
        return None


def generation(ext: Any) -> int:
    """How many times the extension was reloaded (0 when never, or when reload is off)."""
    st = ext.__dict__.get("_reload_state")
    return 0 if st is None else st.generation


def note_start(ext: Any) -> None:
    """Record the pack's files as the workers about to start will import them (first start only)."""
    if ext.__dict__.get("_reload_state") is None:
        ext._reload_state = _State(ext)


def is_retired(w: Any) -> bool:
    """Whether a worker was replaced by a reload (its end is expected, not a crash)."""
    return bool(getattr(w, "retired", False))


async def maybe_reload(ext: Any) -> None:
    """Reload the extension if its pack's files changed since its workers started."""
    st: Optional[_State] = ext.__dict__.get("_reload_state")
    if st is None or ext._stopped or ext._start_lock is None:
        return
    now = time.monotonic()
    if now < st.next_check:
        return
    st.next_check = now + CHECK_INTERVAL
    path = ext.config["module_path"]
    if fingerprint(path) == st.fp:
        return
    async with ext._start_lock:
        fp = fingerprint(path)
        if ext._stopped or fp == st.fp:
            return
        await _reload(ext, st, fp)


async def _reload(ext: Any, st: _State, fp: _Fingerprint) -> None:
    relaunch = False
    new_manifest = st.manifest
    if fp.manifest != st.fp.manifest and st.manifest is not None:
        from .config import ExtensionConfig

        new_manifest = ExtensionConfig.from_manifest(ext.config["module_path"])  # ConfigError names the field
        new_cfg, relaunch = _apply_manifest(ext.config, st.manifest, new_manifest)
        ext.config = new_cfg
    if ext._cell is None or ext._cell.dead:
        relaunch = True  # e.g. a previous reload could not start its sandbox
    old_workers = list(ext._workers)
    old_cell = ext._cell if relaunch else None
    for w in old_workers:
        w.retired = True
    ext._workers = []
    st.fp = fp
    st.manifest = new_manifest
    st.generation += 1
    lg = logging.getLogger(f"nodecell.{ext.name}")
    lg.info("pack %r changed on disk: new calls go to a fresh worker%s", ext.name,
            " in a new sandbox" if relaunch else "")
    if old_workers or old_cell is not None:
        task = asyncio.get_running_loop().create_task(_retire(ext, old_workers, old_cell))
        st.retiring.append((task, old_cell))
        task.add_done_callback(lambda t: _forget(st, t))
    if relaunch:
        ext._cell = None
        await ext._start_cell()
    want = ext.config["workers"]
    while len(ext._workers) < want:
        ext._workers.append(await ext._start_worker())


def _forget(st: _State, task: asyncio.Task) -> None:
    st.retiring[:] = [(t, c) for t, c in st.retiring if t is not task]


async def _retire(ext: Any, workers: List[Any], cell: Any) -> None:
    """Let the old workers finish their calls, then stop them (and their sandbox, if replaced)."""
    from ._rpc import CONTROL_ID

    while any(w.inflight > 0 and not w.dead for w in workers):
        await asyncio.sleep(0.02)
    for w in workers:
        if w.dead:
            continue
        try:
            await asyncio.wait_for(ext._call_on(w, CONTROL_ID, "stop", (), {}, internal=True), 2.0)
        except Exception:  # noqa: BLE001 - stopping anyway (a cancellation still propagates)
            w.kill()
    if cell is not None:
        await cell.stop(grace=1.0)


async def stop_retiring(ext: Any) -> None:
    """Stop what reloads left running (the extension is stopping)."""
    st: Optional[_State] = ext.__dict__.get("_reload_state")
    if st is None:
        return
    items, st.retiring = list(st.retiring), []
    for task, _cell in items:
        task.cancel()
    for _task, cell in items:
        if cell is not None:
            try:
                await cell.stop(grace=0.5)
            except Exception:  # noqa: BLE001
                pass


def _apply_manifest(cfg: Any, old: Any, new: Any) -> Tuple[Any, bool]:
    """The extension's config with what changed between two readings of its manifest applied.

    Settings given in code on top of the manifest (extra mounts, env, apis) are kept.
    Returns (config, whether a new sandbox is needed).
    """
    from .config import ExtensionConfig

    data = dict(cfg)
    changed = set()
    for k in _RELAUNCH_KEYS + ("timeout", "version"):
        if old.get(k) != new.get(k):
            data[k] = new.get(k)
            changed.add(k)
    sb = dict(cfg["sandbox"])
    osb, nsb = old["sandbox"], new["sandbox"]
    for k in _SANDBOX_KEYS:
        if osb.get(k) != nsb.get(k):
            if nsb.get(k) is None:
                sb.pop(k, None)
            else:
                sb[k] = nsb[k]
            changed.add("sandbox." + k)
    if osb["readonly_paths"] != nsb["readonly_paths"]:
        sb["readonly_paths"] = [p for p in sb["readonly_paths"] if p not in osb["readonly_paths"]] + list(
            nsb["readonly_paths"])
        changed.add("sandbox.readonly_paths")
    data["sandbox"] = sb
    if old["isolated"] != new["isolated"]:
        log.warning("pack %r: a change of 'isolated' applies when the pack is loaded again", cfg["name"])
    return ExtensionConfig(data), bool(changed - {"timeout", "version"})
