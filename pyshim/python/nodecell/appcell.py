"""App cells: one sandbox whose zygote has imported torch and the host app, shared by compatible packs.

Without app cells every pack gets its own sandbox whose zygote imports torch and
the app's modules again (seconds per pack). With them (``StudioHost(app_cell=True)``,
or :func:`enable` on an :class:`~nodecell.ExtensionManager`), the first pack starts
an **app cell**: the launcher with the mounts every pack of the same shape needs
(the pack's folder widened to the folder of packs, its venv to the venv cache,
its own output/temp subfolders to the app's), and a zygote that preloads torch
and the app's modules. A later pack loads by **fork + pack import**: the zygote
forks, the child takes the pack's environment, working directory and venv
(:mod:`nodecell._pack_setup`) and imports the pack.

A pack joins an app cell only when it is **compatible**; else it starts another app
cell shaped for it where that would serve (its venv, mounts or free uids differ, and
fewer than ``AppCells.max_cells`` run), or gets its own cell, and a log line says why:

* same launcher flags (sandbox mode, network, GPU, memory/CPU/pid limits, uid);
* every mount it needs is one the app cell has (mounts at other places than
  their source, such as a pack's state layer, must be the same);
* same interpreter;
* every distribution the zygote imported resolves, in the pack's venv, to the
  same file or the same version (a pack pinning ``numpy<2`` while the zygote
  imported numpy 2 does not join it: it starts an app cell of its kind, whose
  zygote imports from its venv; :class:`AppCells`).
* not marked by the host for a cell of its own (:attr:`AppCells.own_cell_only`:
  ``nodecell.studio`` marks a pack whose import wrote under the app's tree, where
  an app cell's mounts are read-only for every pack, and loads it again in its own
  cell with an app layer of its own).

Packs sharing an app cell are walled apart (``pack-separation``): each pack's
worker, right after the fork and before the pack is imported, confines itself
(:func:`nodecell._pack_setup.confine`, the sandbox's ``confine_forked_worker``):
as root, its own uid of the cell's leased range (``--uid-range``, one uid per
pack, kept across restarts); no capabilities, no_new_privs; a Landlock domain
stacked on the cell's allowing only its own paths (its folder and state layer,
its venv, the app's code and data folders, the zygote's venv, a private
``TMPDIR``) and scoping signals and abstract sockets to itself, so it cannot
read or write another pack's files, signal it or read its memory. Rootless,
every pack keeps the caller's one uid and the Landlock domain is the wall.
``ext.walls`` says which: ``pack-separation`` ``active`` with the pack's uid,
or ``missing`` with the reason where the kernel has no Landlock scoping (ABI
6); in ``SandboxMode.REQUIRED`` (the default) such a pack gets its own cell.
The zygote's death ends every pack's worker in it (each reports the crash); the
next call starts a fresh app cell.

App cells can be started before the host's event loop runs, from a host app's
prestartup step (:meth:`AppCells.start_early`, ``nodecell.studio.prestart``,
:mod:`nodecell._early`): their zygotes import torch and the app while the app
itself does, and the packs' loads adopt them.

The cell's limits (the same for every pack in it) bound the whole cell: the zygote
and every pack's worker together. A pack that allocates past the memory limit is
the process the kernel kills (its worker maps the zygote's pages and its own, so it
is the largest): its call fails naming the limit and the pack, its next call gets
a fresh fork, the zygote and the other packs' workers live on
(``tests/python/test_appcell_limits.py``).
"""

from __future__ import annotations

import asyncio
import glob
import importlib.machinery
import itertools
import json
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .cell import _Cell, _Worker
from .config import ExtensionConfig, SandboxMode

if TYPE_CHECKING:
    from .manager import ExtensionManager

__all__ = ["AppCells", "enable", "LaunchShape"]

log = logging.getLogger("nodecell")

#: Environment variables that name one pack (never part of an app cell's own environment).
PER_PACK_ENV = ("NODECELL_PACK", "NODECELL_STUDIO")
#: Host uids an app cell leases as root (``--uid-range``): its zygote's, then one per pack.
APP_CELL_UIDS = 64
_ids = itertools.count(1)


def enable(manager: "ExtensionManager", preload: Optional[List[str]] = None,
           siblings: Optional[Callable[[ExtensionConfig], List[ExtensionConfig]]] = None) -> "AppCells":
    """Turn app cells on for ``manager``: its isolated packs share app cells when compatible.
    ``preload``: modules the app cell's zygote imports besides each pack config's ``preload``
    (the host app's modules). ``siblings(cfg)``: the configs of the packs that may join an app
    cell started for ``cfg``: their mounts are added to it (a mount cannot be added later)."""
    cells = AppCells(list(preload or []), siblings)
    manager._app_cells = cells
    return cells


# -- launch shapes ----------------------------------------------------------------------------

def _split(entry: str) -> Tuple[str, str]:
    src, sep, dst = entry.partition(":")
    return src, (dst if sep else src)


def _general(entry: str, cfg: ExtensionConfig, venv: Dict[str, Any]) -> str:
    """The shared form of one of a pack's mounts: its own folder -> the folder of packs, its venv
    -> the venv cache, a folder named after the pack -> its parent; mounts elsewhere than their
    source stay as they are (they must then be the same for every pack of the cell)."""
    src, dst = _split(entry)
    if dst != src:
        return entry
    for base in (cfg["module_path"], venv["path"]):
        if src == base or src.startswith(base.rstrip("/") + "/"):
            return os.path.dirname(base.rstrip("/"))
    parts = src.split("/")
    for name in (cfg["name"], cfg["normalized_name"]):
        if name in parts[1:]:
            return "/".join(parts[:parts.index(name)]) or "/"
    return src


class LaunchShape:
    """A pack's launcher command line, taken apart: flags, mounts (in shared form), environment,
    working directory, interpreter, preload."""

    def __init__(self, argv: List[str], host_env: Dict[str, str], cfg: ExtensionConfig,
                 venv: Dict[str, Any]) -> None:
        self.host_env = host_env
        self.flags: List[str] = []
        self.ro: List[str] = []
        self.rw: List[str] = []
        self.env: Dict[str, str] = {}
        #: The pack's own mounts as seen inside (their destinations), for its Landlock domain.
        self.own_ro: List[str] = []
        self.own_rw: List[str] = []
        self.cwd = ""
        sep = argv.index("--")
        head, tail = argv[:sep], argv[sep + 1:]
        i = 1  # head[0] is the launcher
        while i < len(head):
            a = head[i]
            if a in ("--ro", "--rw", "--env", "--cwd") and i + 1 < len(head):
                v = head[i + 1]
                if a == "--ro":
                    self.ro.append(_general(v, cfg, venv))
                    self.own_ro.append(_split(v)[1])
                elif a == "--rw":
                    self.rw.append(_general(v, cfg, venv))
                    self.own_rw.append(_split(v)[1])
                elif a == "--env":
                    k, _, val = v.partition("=")
                    self.env[k] = val
                else:
                    self.cwd = v
                i += 2
                continue
            self.flags.append(a)
            i += 1
        self.launcher = head[0]
        self.python = tail[0]
        self.python_args = tail[1:tail.index("--preload")] if "--preload" in tail else tail[1:]
        self.preload = [m for m in tail[tail.index("--preload") + 1].split(",") if m] if "--preload" in tail else []

    def add_mounts_of(self, cfg: ExtensionConfig, venv: Optional[Dict[str, Any]] = None) -> None:
        """Add the mounts another pack's config asks for (its sandbox section and folder) and,
        when its venv is known (``venv``), the host packages that venv shares (a pack sharing
        one the others do not: ComfyUI_essentials' undeclared ``cv2``)."""
        nowhere = {"path": "/nonexistent-venv"}
        self.ro.append(_general(cfg["module_path"], cfg, nowhere))
        self.ro += [_general(m, cfg, nowhere) for m in cfg["sandbox"]["readonly_paths"]]
        self.rw += [_general(m, cfg, nowhere) for m in cfg["sandbox"]["writable_paths"]]
        if venv is not None:
            self.ro += [_general(m, cfg, venv) for m in venv.get("ro_paths", [])]

    def mounts(self) -> Tuple[List[str], List[str]]:
        """(read-only, writable) mounts, de-duplicated; a folder both read-only and writable is writable."""
        rw = list(dict.fromkeys(self.rw))
        ro = [m for m in dict.fromkeys(self.ro) if m not in rw]
        return ro, rw

    def argv(self, preload: List[str], name: str, extra: Tuple[str, ...] = ()) -> List[str]:
        """The app cell's own command line (its environment without any one pack's names);
        ``extra``: launcher flags of the cell only (``--uid-range``)."""
        out = [self.launcher] + list(self.flags) + list(extra)
        ro, rw = self.mounts()
        for m in ro:
            out += ["--ro", m]
        for m in rw:
            out += ["--rw", m]
        env = {k: v for k, v in self.env.items() if k not in PER_PACK_ENV}
        env["NODECELL_PACK"] = name
        for k, v in env.items():
            out += ["--env", f"{k}={v}"]
        out += ["--cwd", self.cwd, "--", self.python] + list(self.python_args) + ["--preload", ",".join(preload)]
        return out


# -- venv facts ---------------------------------------------------------------------------------

def site_dirs(venv_path: str) -> List[str]:
    """The venv's site-packages folders."""
    return sorted(glob.glob(os.path.join(venv_path, "lib", "python*", "site-packages")))


def site_paths(venv_path: str) -> List[str]:
    """What the venv puts on ``sys.path``: its site-packages folders and the folders their
    ``.pth`` files add (shared host distributions such as torch)."""
    out: List[str] = []
    for d in site_dirs(venv_path):
        out.append(d)
        for pth in sorted(glob.glob(os.path.join(d, "*.pth"))):
            try:
                with open(pth, encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith("#") or line.startswith(("import ", "import\t")):
                    continue
                p = line if os.path.isabs(line) else os.path.join(d, line)
                if os.path.isdir(p):
                    out.append(p)
    return list(dict.fromkeys(out))


def _dist_version(path_entry: str, top: str) -> Optional[Tuple[str, str]]:
    """(distribution, version) that installs top-level module ``top`` into ``path_entry``."""
    for info in glob.glob(os.path.join(path_entry, "*.dist-info")):
        names: List[str] = []
        try:
            with open(os.path.join(info, "top_level.txt"), encoding="utf-8") as f:
                names = f.read().split()
        except OSError:
            try:
                with open(os.path.join(info, "RECORD"), encoding="utf-8") as f:
                    names = [line.split(",", 1)[0].split("/", 1)[0].removesuffix(".py") for line in f]
            except OSError:
                continue
        if top in names:
            base = os.path.basename(info)[:-len(".dist-info")]
            dist, _, version = base.partition("-")
            return dist, version
    return None


def _version_of(path: str, top: str, entry: Optional[str]) -> Optional[Tuple[str, str]]:
    """(distribution, version) of the top-level module loaded from ``path``: from the dist-info
    beside it in ``entry``, else beside its real location (shared distributions are symlinks)."""
    found = _dist_version(entry, top) if entry else None
    if found is None:
        top_dir = os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path
        found = _dist_version(os.path.dirname(os.path.realpath(top_dir)), top)
    return found


def _entry_of(path: str, paths: List[str]) -> Optional[str]:
    """The entry of ``paths`` that ``path`` lies in (as written, else once symlinks are resolved:
    shared distributions are symlinks into the host's environment)."""
    for norm in (os.path.normpath, os.path.realpath):
        f = norm(path)
        for p in paths:
            if f.startswith(norm(p).rstrip("/") + "/"):
                return p
    return None


# -- the app cell -----------------------------------------------------------------------------

class AppCell:
    """One shared sandbox + zygote, and the packs' views of it."""

    def __init__(self, cell: _Cell, shape: LaunchShape, venv: Dict[str, Any], preload: List[str]) -> None:
        self.cell = cell
        self.shape = shape
        self.venv = venv
        self.preload = preload
        self.paths = site_paths(venv["path"])
        self.views: Dict[str, "PackView"] = {}
        #: Whether forked workers can be walled apart here (``(ok, detail)``, probed once).
        self.separation: Tuple[bool, str] = _separation()
        #: Pack name -> its slot in the cell's uid range (1, 2, ...), kept across restarts.
        self.slots: Dict[str, int] = {}
        #: What :meth:`why_not` found per venv (packs sharing a venv, a restart: no second walk).
        self._fits: Dict[str, Optional[str]] = {}
        #: Seconds the sandbox and its zygote took to start (the zygote's preload included).
        self.start_s: Optional[float] = None
        #: Whether it was started early (:meth:`AppCells.start_early`) and adopted.
        self.early = False

    def uid_of(self, pack: str) -> Optional[int]:
        """The host uid of ``pack``'s workers (None: the cell's one uid, rootless)."""
        first, count = self.cell.status.get("uid"), self.cell.status.get("uids") or 1
        if not isinstance(first, int) or count <= 1:
            return None
        slot = self.slots.get(pack)
        if slot is None:
            slot = self.slots[pack] = len(self.slots) + 1
        return first + slot if slot < count else None

    def uids_left(self) -> bool:
        count = self.cell.status.get("uids") or 1
        return count <= 1 or len(self.slots) + 1 < count

    @property
    def alive(self) -> bool:
        return not self.cell.dead

    def why_not(self, cfg: ExtensionConfig, shape: LaunchShape, venv: Dict[str, Any]) -> Optional[str]:
        """None when the pack may share this app cell, else why not (for the log)."""
        return self.shape_why_not(cfg, shape) or self.venv_why_not(venv)

    def shape_why_not(self, cfg: ExtensionConfig, shape: LaunchShape) -> Optional[str]:
        """Why not, for what is not the venv: walls, uids, launcher flags, mounts."""
        return self.settings_why_not(cfg, shape) or self.mounts_why_not(cfg, shape)

    def settings_why_not(self, cfg: ExtensionConfig, shape: LaunchShape) -> Optional[str]:
        """Why not, for what no other app cell would change: the walls it needs, its launcher
        flags (sandbox settings and limits)."""
        if not self.separation[0] and cfg["sandbox_mode"] is SandboxMode.REQUIRED:
            return f"packs in one app cell cannot be walled apart here ({self.separation[1]}) and its mode is required"
        if shape.flags != self.shape.flags:
            diff = sorted(set(shape.flags) ^ set(self.shape.flags))
            return f"its sandbox settings differ ({' '.join(diff) or 'order'})"
        return None

    def mounts_why_not(self, cfg: ExtensionConfig, shape: LaunchShape) -> Optional[str]:
        """Why not, for what an app cell started for the pack would have: uids, mounts."""
        if cfg["name"] not in self.slots and not self.uids_left():
            return f"the app cell's {self.cell.status.get('uids')} uids are all taken (one per pack)"
        ro, rw = self.shape.mounts()
        pro, prw = shape.mounts()
        for m in prw:
            if m not in rw:
                return f"it needs the writable mount {m} the app cell does not have"
        for m in pro:
            if m not in ro and m not in rw:
                return f"it needs the mount {m} the app cell does not have"
        return None

    def venv_why_not(self, venv: Dict[str, Any]) -> Optional[str]:
        """None when the pack's interpreter and venv fit what the zygote imported, else why not
        (remembered per venv: a warm reload does not walk it again)."""
        key = json.dumps([venv.get("path"), venv.get("python"), venv.get("python_version")])
        if key not in self._fits:
            self._fits[key] = self._venv_why_not(venv)
        return self._fits[key]

    def _venv_why_not(self, venv: Dict[str, Any]) -> Optional[str]:
        """Whether the pack's interpreter and venv fit what the zygote imported."""
        if os.path.realpath(venv["python"]) != os.path.realpath(self.venv["python"]) or \
                venv.get("python_version") != self.venv.get("python_version"):
            return (f"its interpreter ({venv.get('python_version')}, {os.path.realpath(venv['python'])}) is not "
                    f"the app cell's ({self.venv.get('python_version')})")
        modules = self.cell.zygote_info.get("modules") or {}
        pack_paths = site_paths(venv["path"])
        for top, f in sorted(modules.items()):
            if not isinstance(f, str):
                continue
            entry = _entry_of(f, self.paths)
            if entry is None:
                continue  # not from the zygote's venv (the app's code, nodecell)
            spec = importlib.machinery.PathFinder.find_spec(top, pack_paths)
            if spec is None or not spec.origin:
                continue  # the pack's venv lacks it: it sees the zygote's
            if os.path.realpath(spec.origin) == os.path.realpath(f):
                continue
            mine = _version_of(f, top, entry)
            theirs = _version_of(spec.origin, top, _entry_of(spec.origin, pack_paths))
            if mine is None or theirs is None or mine[1] != theirs[1]:
                return (f"its venv has {top} {theirs[1] if theirs else '(unknown version)'} while the app cell's "
                        f"zygote imported {mine[1] if mine else '(unknown version)'}")
        return None

    def view(self, ext_name: str, cfg: ExtensionConfig, shape: LaunchShape, venv: Dict[str, Any]) -> "PackView":
        drop = list(dict.fromkeys(self.paths + site_paths(venv["path"])))
        setup = {
            "env": dict(shape.env),
            "unset": [k for k in self.shape.env if k not in shape.env] + [
                k for k in PER_PACK_ENV if k not in shape.env],
            "cwd": shape.cwd,
            "drop": drop,
            "site": site_dirs(venv["path"]),
        }
        if self.separation[0]:
            setup["confine"] = self.confine_spec(ext_name, shape)
        v = PackView(self, ext_name, setup)
        self.views[ext_name] = v
        return v


    def confine_spec(self, pack: str, shape: LaunchShape) -> Dict[str, Any]:
        """What ``pack``'s forked workers may keep (see :func:`nodecell._pack_setup.confine`): its
        uid, and its own mounts plus the zygote's venv (whose modules it shares) for Landlock."""
        zyg = [self.venv["path"]] + list(self.venv.get("ro_paths", []))
        ro = list(dict.fromkeys(shape.own_ro + [_split(p)[1] for p in zyg]))
        rw = list(dict.fromkeys(shape.own_rw))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in pack)
        return {"uid": self.uid_of(pack), "ro": [p for p in ro if p not in rw], "rw": rw,
                "tmp": f"/tmp/nodecell-pack-{safe}"}


_probe: Optional[Tuple[bool, str]] = None


def _separation() -> Tuple[bool, str]:
    global _probe
    if _probe is None:
        from . import _nodecell

        _probe = _nodecell.confine_probe()
    return _probe


class AppCells:
    """The app cells of one manager (see the module docs).

    **Kinds.** A pack that fits no running app cell only because of its venv (it pins a
    distribution the zygote imported at another version: ``numpy<2`` while the app imported
    numpy 2) starts another app cell shaped for it, up to :attr:`max_cells`: the packs of
    that kind then share a zygote of their own (each a fork of it, walled apart), instead of
    a cell per pack. Memory: one zygote per kind (torch and the app imported again), no
    more than the pack's own cell would take (own cells preload the app too), and less from
    the second such pack on.

    **Early start.** :meth:`start_early` starts app cells before the host's event loop runs
    (a host app's prestartup script: ``nodecell.studio.prestart``); the first :meth:`take`
    (or :meth:`prewarm_soon`) on the loop adopts them, so the first pack only forks."""

    #: Most app cells one manager runs at once (one per kind of venv); a pack that would need
    #: another gets a cell of its own.
    max_cells = 2

    def __init__(self, preload: List[str],
                 siblings: Optional[Callable[[ExtensionConfig], List[ExtensionConfig]]] = None) -> None:
        self.preload = preload
        self.siblings = siblings
        self.cells: List[AppCell] = []
        #: Pack name -> why it got a cell of its own (last decision), for the host to show.
        self.own_cell: Dict[str, str] = {}
        #: Pack name -> why it always gets a cell of its own (set by the host: a pack whose import
        #: wrote under the app's tree is loaded again in its own cell, with an app layer of its own).
        self.own_cell_only: Dict[str, str] = {}
        #: Early starts not adopted yet (:meth:`start_early`).
        self.early: List[Any] = []
        #: Pack name -> its own cell's early start, not adopted yet (:meth:`start_early_own`).
        self.early_own: Dict[str, Any] = {}
        #: App cell name -> what became of its early start: ``{"state": "adopted"|"failed",
        #: "why", "waited_s" (the adopter's wait for its zygote), "start_s"}``.
        self.early_report: Dict[str, Dict[str, Any]] = {}
        self._locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()
        self._prewarm: Optional["asyncio.Task[None]"] = None
        #: Seconds the last :meth:`prewarm` took to start the app cell (None: none did).
        self.prewarm_s: Optional[float] = None

    def _lock(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def take(self, manager: "ExtensionManager", cfg: ExtensionConfig,
                   venv: Dict[str, Any]) -> Optional[_Cell]:
        """A view of a compatible app cell for ``cfg`` (adopting early starts, starting the first
        or one for the pack's kind of venv, or waiting for the one :meth:`prewarm` is starting),
        or None: the pack gets its own cell (the reason is logged and kept in :attr:`own_cell`)."""
        if cfg["sandbox_mode"] is SandboxMode.DISABLED:
            return None
        if cfg["name"] in self.own_cell_only:
            self.own_cell[cfg["name"]] = self.own_cell_only[cfg["name"]]
            return None
        loop = asyncio.get_running_loop()
        argv, host_env = manager._launch_argv(cfg, venv)
        shape = LaunchShape(argv, host_env, cfg, venv)
        async with self._lock(loop):
            while True:
                self.cells = [c for c in self.cells if c.alive and c.cell.loop is loop]
                reasons = []
                # Whether an app cell started for this pack would serve where these do not (they
                # differ in its venv, mounts or free uids, not in its sandbox settings or walls).
                another_helps = True
                for ac in self.cells:
                    why = ac.settings_why_not(cfg, shape)
                    if why is None:
                        why = ac.mounts_why_not(cfg, shape) or ac.venv_why_not(venv)
                        if why is None:
                            self.own_cell.pop(cfg["name"], None)
                            return ac.view(cfg["name"], cfg, shape, venv)
                    else:
                        another_helps = False
                    reasons.append(why)
                if not self.early:
                    break
                await self._adopt_next(manager, loop)  # an early start (waiting for its zygote)
            if reasons and not (another_helps and len(self.cells) < self.max_cells):
                self.own_cell[cfg["name"]] = "; ".join(reasons)
                logging.getLogger(f"nodecell.{cfg['name']}").info(
                    "pack %r gets its own cell, not the app cell: %s", cfg["name"], self.own_cell[cfg["name"]])
                return None
            if reasons:
                logging.getLogger(f"nodecell.{cfg['name']}").info(
                    "pack %r starts another app cell (%s)", cfg["name"], "; ".join(reasons))
            ac = await self._start(manager, cfg, venv, argv, host_env)
        self.own_cell.pop(cfg["name"], None)
        return ac.view(cfg["name"], cfg, shape, venv)

    def _cell_argv(self, manager: "ExtensionManager", cfg: ExtensionConfig, venv: Dict[str, Any],
                   argv: List[str], host_env: Dict[str, str],
                   siblings: Optional[List[ExtensionConfig]]) -> Tuple[str, LaunchShape, List[str], List[str]]:
        """(name, shape, preload, command line) of an app cell shaped for ``cfg`` and ``siblings``."""
        # nodecell's side of every worker too: the extension type, the services, the record types.
        from ._rpc import registered_types

        ours = [manager.extension_type.__module__] + [a.__module__ for a in cfg["apis"]] + [
            t.__module__ for t in registered_types().values()]
        first = LaunchShape(argv, host_env, cfg, venv)
        preload = list(dict.fromkeys(first.preload + self.preload + [m for m in ours if m != "__main__"]))
        name = f"app-cell-{next(_ids)}"
        cell_shape = LaunchShape(argv, host_env, cfg, venv)
        if siblings is None and self.siblings is not None:
            siblings = self.siblings(cfg)
        for other in siblings or []:
            cell_shape.add_mounts_of(other, getattr(manager, "_venvs", {}).get(other["name"]))
        extra = ("--uid-range", str(APP_CELL_UIDS)) if os.geteuid() == 0 else ()
        return name, cell_shape, preload, cell_shape.argv(preload, name, extra)

    async def _start(self, manager: "ExtensionManager", cfg: ExtensionConfig, venv: Dict[str, Any],
                     argv: List[str], host_env: Dict[str, str],
                     siblings: Optional[List[ExtensionConfig]] = None) -> AppCell:
        """Start an app cell shaped for ``cfg`` (and, with :attr:`siblings`, its sibling packs)."""
        name, cell_shape, preload, cell_argv = self._cell_argv(manager, cfg, venv, argv, host_env, siblings)
        cell = _Cell(name)
        cell.key = name
        t0 = time.perf_counter()
        try:
            await cell.start(cell_argv, host_env)
        except BaseException:
            await cell.stop(grace=0.5)
            raise
        ac = AppCell(cell, cell_shape, venv, preload)
        ac.start_s = time.perf_counter() - t0
        self.cells.append(ac)
        # Stopped with the manager's warm cells (stop_all_extensions).
        manager._warm[f"{name}"] = (cell, venv)
        return ac

    # -- early start (no event loop yet) -------------------------------------------------------

    def start_early(self, manager: "ExtensionManager", target: Any,
                    siblings: Optional[List[ExtensionConfig]] = None, what: str = "the app cell") -> Any:
        """Start an app cell shaped for ``target`` (an :class:`~nodecell.ExtensionConfig`, or an
        object whose ``resolve()`` gives one on the launch thread, or raises
        :class:`nodecell._early.EarlyNotNeeded`) and ``siblings`` now, without an event loop: its
        venv is provisioned and its launcher started on a thread of its own (several early cells
        start side by side); the first :meth:`take` on the host's loop that needs it adopts it.
        Returns the :class:`nodecell._early.EarlyLaunch`; a failure is logged with the reason and
        the cell is then started the ordinary way."""
        from ._early import EarlyLaunch

        def prepare() -> Tuple[List[str], Dict[str, str], Dict[str, Any]]:
            cfg = target.resolve() if hasattr(target, "resolve") else target
            venv = manager._provision(cfg)
            argv, host_env = manager._launch_argv(cfg, venv)
            name, shape, preload, cell_argv = self._cell_argv(manager, cfg, venv, argv, host_env, siblings)
            e.name = name
            return cell_argv, host_env, {"venv": venv, "shape": shape, "preload": preload, "pack": cfg["name"]}

        e = EarlyLaunch(f"app-cell-early-{next(_ids)}", what, prepare)
        self.early.append(e)
        return e.start()

    def start_early_own(self, manager: "ExtensionManager", cfg: ExtensionConfig, what: str) -> Any:
        """Start ``cfg``'s own cell now, without an event loop (a pack the host knows needs a
        cell of its own); the pack's first load adopts it when its launch is the one that load
        would make (else it is ended and the log says why)."""
        from ._early import EarlyLaunch

        def prepare() -> Tuple[List[str], Dict[str, str], Dict[str, Any]]:
            venv = manager._provision(cfg)
            if manager.before_launch is not None:
                manager.before_launch(cfg)
            argv, env = manager._launch_argv(cfg, venv)
            return argv, env, {"venv": venv, "key": manager._cell_key(cfg, venv), "pack": cfg["name"]}

        e = EarlyLaunch(cfg["name"], what, prepare)
        self.early_own[cfg["name"]] = e
        return e.start()

    async def adopt_own(self, manager: "ExtensionManager", cfg: ExtensionConfig,
                        venv: Dict[str, Any]) -> Optional[_Cell]:
        """The pack's own cell started early (:meth:`start_early_own`), adopted on this loop, or
        None (none, or it failed or no longer fits: logged with the reason)."""
        from ._early import AdoptedCell

        e = self.early_own.pop(cfg["name"], None)
        if e is None:
            return None
        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, e.join)
        report: Dict[str, Any] = {"pack": cfg["name"], "what": e.what}
        cell: Optional[_Cell] = None
        if e.failure is None and e.facts.get("key") != manager._cell_key(cfg, venv):
            e.failure = "the pack's launch changed since the early start (its config or venv)"
        if e.failure is None:
            cell = AdoptedCell(cfg["name"], e)
            cell.key = e.facts["key"]
            try:
                await cell.start([], {})
                report.update(state="adopted", start_s=time.perf_counter() - e.t0)
            except Exception as err:  # noqa: BLE001 - reported; the ordinary start follows
                await cell.stop(grace=0.5)
                e.failure, cell = f"{type(err).__name__}: {err}", None
        if e.failure is not None:
            e.kill()
            log.warning("early start of %s failed (it starts now): %s", e.what, e.failure)
            report.update(state="failed", why=e.failure)
        report["waited_s"] = time.perf_counter() - t0
        self.early_report[cfg["name"]] = report
        return cell

    async def _adopt_next(self, manager: "ExtensionManager", loop: asyncio.AbstractEventLoop) -> None:
        """Make the next early start an app cell of this loop (waiting for its zygote); one that
        failed is logged with the reason (the first pack that needs it starts the cell itself)."""
        from ._early import AdoptedCell

        if self.early:
            e = self.early.pop(0)
            t0 = time.perf_counter()
            await loop.run_in_executor(None, e.join)
            report: Dict[str, Any] = {"pack": e.facts.get("pack"), "what": e.what}
            if e.failure is None:
                cell = AdoptedCell(e.name, e)
                cell.key = e.name
                try:
                    await cell.start([], {})
                except Exception as err:  # noqa: BLE001 - reported; the ordinary start follows
                    await cell.stop(grace=0.5)
                    e.failure = f"{type(err).__name__}: {err}"
                else:
                    ac = AppCell(cell, e.facts["shape"], e.facts["venv"], e.facts["preload"])
                    ac.start_s = time.perf_counter() - e.t0
                    ac.early = True
                    self.cells.append(ac)
                    manager._warm[e.name] = (cell, e.facts["venv"])
                    report.update(state="adopted", start_s=ac.start_s)
            if e.not_needed is not None:
                self.early_report[e.name] = {"what": e.what, "state": "not needed", "why": e.not_needed}
                return
            if e.failure is not None:
                e.kill()
                log.warning("early start of %s failed (it starts when the first pack needs it): %s",
                            e.what, e.failure)
                report.update(state="failed", why=e.failure)
            report["waited_s"] = time.perf_counter() - t0
            self.early_report[e.name] = report

    def drop_early(self, why: str) -> None:
        """End the early starts not adopted yet (they no longer fit the host), saying why."""
        for key, e in [(e.name, e) for e in self.early] + list(self.early_own.items()):
            e.kill()
            log.warning("early start of %s not used: %s (it starts when a pack needs it)", e.what, why)
            self.early_report[key] = {"pack": e.facts.get("pack"), "what": e.what, "state": "failed", "why": why}
        self.early, self.early_own = [], {}

    # -- prewarm on the loop -------------------------------------------------------------------

    async def prewarm(self, manager: "ExtensionManager", cfg: ExtensionConfig,
                      siblings: Optional[List[ExtensionConfig]] = None) -> None:
        """Start the app cell for ``cfg``'s shape now (its venv provisioned, the zygote's
        imports done), unless a live one is there: the first pack then only forks.
        ``siblings``: the packs' configs when known (else :attr:`siblings` is asked)."""
        if cfg["sandbox_mode"] is SandboxMode.DISABLED or not cfg["isolated"]:
            return
        loop = asyncio.get_running_loop()
        manager._loop = manager._loop or loop
        venv = await loop.run_in_executor(None, manager._provision, cfg)
        argv, host_env = manager._launch_argv(cfg, venv)
        async with self._lock(loop):
            if self.early:
                await self._adopt_next(manager, loop)
            if any(c.alive and c.cell.loop is loop for c in self.cells):
                return
            t0 = time.perf_counter()
            await self._start(manager, cfg, venv, argv, host_env, siblings)
            self.prewarm_s = time.perf_counter() - t0

    def prewarm_soon(self, manager: "ExtensionManager",
                     configs: Callable[[], List[ExtensionConfig]]) -> Optional["asyncio.Task[None]"]:
        """Start an app cell in the background on the running loop (None: no loop runs), shaped
        for the pack with the fewest dependencies among ``configs()`` (the packs that may join,
        read on the loop), or adopt the early starts (:meth:`start_early`) where there are: the
        host app goes on starting meanwhile, and its first pack waits at most for what is left.
        A failure is logged; the first pack then starts the app cell itself."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None

        async def run() -> None:
            try:
                if self.early:  # the first early start (later ones when a pack needs them)
                    manager._loop = manager._loop or loop
                    async with self._lock(loop):
                        await self._adopt_next(manager, loop)
                    return
                cfgs = configs()
                cands = [c for c in cfgs if c["isolated"] and c["sandbox_mode"] is not SandboxMode.DISABLED]
                if cands:
                    best = min(cands, key=lambda c: (len(c["dependencies"]), c["name"]))
                    await self.prewarm(manager, best, cfgs)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the first pack starts the app cell itself
                log.warning("app cell prewarm failed (the first pack starts it): %s", e)

        self._prewarm = loop.create_task(run())
        return self._prewarm

    async def wait_prewarmed(self) -> None:
        """Wait for the background start of :meth:`prewarm_soon` (if any) to end."""
        if self._prewarm is not None:
            await asyncio.shield(self._prewarm)

    async def close(self) -> None:
        """Cancel a background start still running (the host is stopping); end early starts
        nobody adopted."""
        for e in self.early + list(self.early_own.values()):
            e.kill()
        self.early, self.early_own = [], {}
        t, self._prewarm = self._prewarm, None
        if t is not None and not t.done():
            t.cancel()
            try:
                await t
            except BaseException:  # noqa: BLE001 - cancelled or failed: stopping anyway
                pass


# -- one pack's view of an app cell ------------------------------------------------------------

class PackView(_Cell):
    """What an :class:`~nodecell.Extension` sees as its cell when it shares an app cell: its own
    workers (forked from the shared zygote with the pack's setup), the shared sandbox's status
    (walls plus ``pack-separation``), stop/kill of its own workers only."""

    def __init__(self, app: AppCell, name: str, setup: Dict[str, Any]) -> None:
        self._app = app
        self._closed = False
        super().__init__(name)
        self.setup = setup
        self.key = app.cell.key
        # Worker ids and spawn replies are the app cell's (its zygote answers them).
        self._wids = app.cell._wids
        self.spawned = app.cell.spawned

    # Shared state, read through to the app cell.
    @property  # type: ignore[override]
    def dead(self) -> bool:
        return self._closed or self._app.cell.dead

    @dead.setter
    def dead(self, value: bool) -> None:
        if value:
            self._closed = True

    @property  # type: ignore[override]
    def status(self) -> Dict[str, Any]:
        st = dict(self._app.cell.status)
        others = sorted(n for n in self._app.views if n != self.name)
        walls = list(st.get("walls", []))
        with_ = f"shares app cell {self._app.cell.name!r} with {', '.join(others) or 'the packs that join it'}"
        ok, detail = self._app.separation
        spec = self.setup.get("confine")
        if ok and spec is not None:
            who = (f"its own uid {spec['uid']}" if spec["uid"] is not None else
                   f"the cell's one uid {st.get('uid')} (rootless: the Landlock domain is the wall)")
            walls.append({"name": "pack-separation", "state": "active",
                          "detail": f"{with_}; each worker confined after the fork: {who}, no capabilities, "
                                    f"no_new_privs, Landlock of its own {len(spec['ro']) + len(spec['rw']) + 1} "
                                    f"paths, {detail}"})
        else:
            walls.append({"name": "pack-separation", "state": "missing",
                          "detail": f"{with_}: one sandbox, no per-pack walls ({detail})"})
        st["walls"] = walls
        return st

    @status.setter
    def status(self, value: Dict[str, Any]) -> None:
        pass

    @property  # type: ignore[override]
    def zygote_info(self) -> Dict[str, Any]:
        return self._app.cell.zygote_info

    @zygote_info.setter
    def zygote_info(self, value: Dict[str, Any]) -> None:
        pass

    @property
    def app_cell(self) -> str:
        """The name of the app cell this pack shares."""
        return self._app.cell.name

    @property
    def zygote_pid(self) -> Optional[int]:
        """The shared zygote's pid (inside the sandbox's pid namespace)."""
        return self._app.cell.zygote_info.get("pid")

    @property  # type: ignore[override]
    def ctl(self) -> Any:
        """The app cell's control socket (spawn_worker_now reads the zygote's answers from it)."""
        return self._app.cell.ctl

    @ctl.setter
    def ctl(self, value: Any) -> None:
        pass

    def _on_ctl(self) -> None:
        self._app.cell._on_ctl()

    def ctl_send(self, msg: Dict[str, Any], fds: tuple = ()) -> None:
        if msg.get("op") == "spawn":
            w = self.workers.get(msg.get("wid"))
            if w is not None:
                self._app.cell.workers[w.wid] = w  # its "exited" report comes to the app cell
            msg = dict(msg, pack=self.setup)
        self._app.cell.ctl_send(msg, fds)

    def oom_killed(self) -> bool:
        return self._app.cell.oom_killed()

    async def start(self, argv: List[str], env: Dict[str, str]) -> None:  # pragma: no cover - never
        raise RuntimeError("a pack's view of an app cell is not started on its own")

    async def spawn_worker(self) -> _Worker:
        """Fork a worker from the shared zygote (the base class's spawn, with the pack's setup
        added to the spawn message and the worker known to the app cell for its exit reports)."""
        shared = self._app.cell
        try:
            return await super().spawn_worker()
        except BaseException:
            for wid in [k for k, w in shared.workers.items() if w.cell is self and k not in self.workers]:
                del shared.workers[wid]
            raise

    def _finish_death(self, w: _Worker) -> None:
        self._app.cell.workers.pop(w.wid, None)
        super()._finish_death(w)

    def _forget(self) -> None:
        self._closed = True
        if self._app.views.get(self.name) is self:
            del self._app.views[self.name]

    async def stop(self, grace: float = 2.0) -> None:
        """Stop this pack's workers (their ``stop()`` hooks run); the app cell stays for the others."""
        from ._rpc import CONTROL_ID

        for w in list(self.workers.values()):
            if w.alive and not w.dead and self.ext is not None:
                try:
                    await asyncio.wait_for(self.ext._call_on(w, CONTROL_ID, "stop", (), {}, internal=True), grace)
                except BaseException:  # noqa: BLE001 - stopping anyway
                    pass
        self.kill_now(grace)

    def kill_now(self, grace: float = 2.0) -> None:
        """Kill this pack's workers now, from any thread; the app cell stays."""
        workers = list(self.workers.values())
        self.workers.clear()
        for w in workers:
            self._app.cell.workers.pop(w.wid, None)
            w.dead = True
            w.alive = False
            if w.pidfd >= 0:
                try:
                    import signal

                    signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
                except OSError:
                    pass
            self._app.cell.ctl_send({"op": "kill", "wid": w.wid})
            try:
                w.close()
            except Exception:  # noqa: BLE001 - futures of a closed loop
                pass
        self._forget()
