"""Start a host app's app cells with the app, from its prestartup script.

ComfyUI runs every custom node's ``prestartup_script.py`` after it parsed its command
line and set its folders, and before it imports torch and its own modules (seconds of
work); its event loop comes later still. :func:`prestart` called there makes the
process's :class:`~nodecell.studio.StudioHost` (``app_cell=True``) and starts its app
cells at once, on threads of their own (no event loop needed): the packs' venvs are
provisioned (cache hits after the first start), the packs are sorted into **kinds** by
the versions their venvs give the app's shared distributions (a pack pinning
``numpy<2`` is another kind than the packs that take the app's numpy 2), one app cell
is launched per kind (up to ``AppCells.max_cells``), and the own cell of every pack the
host remembers needing one (``<state root>/own-cell/``: its import writes next to the
app's code), all side by side. The zygotes import torch and the app while the app itself does. When the app later loads
the packs (``host.load_custom_node``, the same host: :func:`prestart` again returns
it), the host's loop adopts those cells: the first pack only forks.

What the app will import is only known once it has booted, and the packs' venvs share
those distributions from the host: the host remembers the list in ``<state
root>/app-requirements.json`` for the next start. On the app's first start there is no
such list: nothing is started early (the log says so) and the first pack starts the
app cell as without :func:`prestart`. An early start made with a shorter list than the
booted app's (the app imports more than the last time) is not used: the log says why.
Any other failure of an early start (provisioning, the launcher, a zygote that dies) is
logged with the reason and the cell is started when the first pack needs it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

from .. import _nodecell
from ..appcell import site_paths
from ..config import ExtensionConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    from .loader import StudioHost

__all__ = ["prestart", "prestarted", "kind_of"]

log = logging.getLogger("nodecell.studio")

#: The host :func:`prestart` made in this process, and the arguments it was made with.
_host: Optional["StudioHost"] = None
_args: Dict[str, Any] = {}
_lock = threading.Lock()


def prestart(packs_dir: Optional[str] = None, *, packs: Optional[Iterable[str]] = None, app: Any = None,
             app_root: Optional[str] = None, app_preload: Any = ("nodes", "server"),
             venv_root_path: Optional[str] = None, state: Any = None, **host_kw: Any) -> "StudioHost":
    """Make this process's app host and start its app cells now (see the module docs).

    Call it from a prestartup script (no event loop, before the app imports torch), and
    again where the packs are loaded: the second call returns the same host (the
    arguments must be the same: else :class:`~nodecell.ConfigError` naming the first that
    differs). ``packs_dir``: the folder of the isolated packs (default the app's
    ``custom_nodes``); ``packs``: only these pack folders of it; ``app_root``: the app's
    folder (default: the folder of the ``folder_paths`` module the app imported); the other
    arguments are
    :class:`~nodecell.studio.StudioHost`'s (``app_cell=True`` always)."""
    global _host, _args
    from .loader import StudioHost

    args = {"packs_dir": os.path.abspath(packs_dir) if packs_dir else None,
            "packs": sorted(os.path.abspath(p) for p in packs) if packs is not None else None, "app": app,
            "app_root": app_root, "app_preload": [str(m) for m in app_preload],
            "venv_root_path": venv_root_path, "state": state, **host_kw}
    with _lock:
        if _host is not None:
            for k in sorted(set(args) | set(_args)):
                if args.get(k) != _args.get(k):
                    raise ConfigError(k, f"prestart was called before with {_args.get(k)!r}, now {args.get(k)!r}")
            return _host
        root = app_root
        if root is None:
            fp = sys.modules.get("folder_paths")
            f = getattr(fp, "__file__", None)
            if not f:
                raise ConfigError("app_root", "no app found in this process (no folder_paths module): pass app_root")
            root = os.path.dirname(os.path.abspath(f))
        host = StudioHost(venv_root_path, app=app if app is not None else "comfyui", app_root=root, state=state,
                          app_cell=True, app_preload=args["app_preload"], **host_kw)
        host.prestart(args["packs_dir"], args["packs"])
        _host, _args = host, args
        return host


def prestarted() -> Optional["StudioHost"]:
    """The host :func:`prestart` made in this process (None: none)."""
    return _host


def _forget() -> None:
    """Forget the prestarted host (tests: one process, several hosts)."""
    global _host, _args
    with _lock:
        _host, _args = None, {}


# -- kinds of venv ----------------------------------------------------------------------------

def _venv_versions(venv_path: str, names: List[str]) -> Dict[str, str]:
    """Versions of ``names`` (normalized) as the venv resolves them (its own site-packages
    first, then the folders its ``.pth`` files add: the host's shared distributions)."""
    want = set(names)
    out: Dict[str, str] = {}
    for d in site_paths(venv_path):
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for e in entries:
            if not e.endswith(".dist-info"):
                continue
            dist, _, version = e[:-len(".dist-info")].partition("-")
            n = _nodecell.normalize_name(dist)
            if n in want and n not in out:
                out[n] = version
    return out


def _host_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - broken metadata: unknown
        return None


def kind_of(venv_path: str, shared: List[str]) -> Tuple[Tuple[str, str], ...]:
    """A pack venv's kind: the app's shared distributions (``shared``) it gives other versions
    than the host has, as ``((name, version), ...)``; ``()`` for a venv that takes the host's."""
    names = [_nodecell.normalize_name(n) for n in shared]
    mine = _venv_versions(venv_path, names)
    return tuple(sorted((n, v) for n, v in mine.items() if v != _host_version(n)))


class _Plan:
    """The kinds of the packs, computed once (on the first early start's thread)."""

    def __init__(self, host: "StudioHost", configs: List[ExtensionConfig]) -> None:
        self.host = host
        self.configs = configs
        self._lock = threading.Lock()
        self._groups: Optional[List[List[ExtensionConfig]]] = None

    def groups(self) -> List[List[ExtensionConfig]]:
        """Packs by kind, the kind of the host's own versions first, then the larger kinds."""
        with self._lock:
            if self._groups is None:
                shared = self.host.prestart_list
                kinds: Dict[Tuple[Tuple[str, str], ...], List[ExtensionConfig]] = {}
                for cfg in self.configs:
                    try:
                        venv = self.host.manager._provision(cfg)
                    except Exception as e:  # noqa: BLE001 - this pack's load reports it
                        log.info("pack %r: no early start for it: %s", cfg["name"], e)
                        continue
                    kinds.setdefault(kind_of(venv["path"], shared), []).append(cfg)
                order = sorted(kinds.items(), key=lambda kv: (kv[0] != (), -len(kv[1]), kv[0]))
                for k, cfgs in order:
                    log.info("packs of kind %s: %s", dict(k) or "host's versions", ", ".join(c["name"] for c in cfgs))
                self.host.kinds = {c["name"]: dict(k) for k, cfgs in order for c in cfgs}
                self._groups = [cfgs for _k, cfgs in order]
            return self._groups


def start_app_cells(host: "StudioHost", packs_dir: Optional[str], packs: Optional[Iterable[str]] = None) -> List[Any]:
    """:meth:`StudioHost.prestart`: start one app cell per kind of the packs in ``packs_dir``
    (at most ``AppCells.max_cells``), on threads; returns the early launches."""
    cells = host.manager._app_cells
    if cells is None:
        raise ConfigError("app_cell", "prestart needs a host with app_cell=True")
    p = host.profile
    if packs_dir is None:
        if p is None or p.root is None:
            raise ConfigError("packs_dir", "no app folder to find the packs in: pass packs_dir")
        packs_dir = os.path.join(p.root, "custom_nodes")
    if not os.path.isdir(packs_dir):
        raise ConfigError("packs_dir", f"not a folder: {packs_dir}")
    booted = p is not None and all(m in sys.modules for m in p.markers)
    if not booted and not host._remembered_requirements():
        # The venvs share what the booted app imports: not known before its first boot. Early
        # cells made now would be dropped once it has booted (and their venvs made twice).
        log.info("prestart: the app's first start here (no %s yet): its cells start with the first "
                 "packs; from its next start on, with the app", host._requirements_record())
        return []
    host.prestart_list = host.app_requirements()
    configs = host._configs_in(packs_dir)
    if packs is not None:
        only = {os.path.realpath(p) for p in packs}
        configs = [c for c in configs if os.path.realpath(c["module_path"]) in only]
    out = []
    # Packs an earlier host found needing a cell of their own (their import writes next to the
    # app's code): that cell, with its app layer, starts now too.
    own = [c for c in configs if host._remembered_own_cell(c["name"]) is not None]
    for c in own:
        name = c["name"]
        why = host._remembered_own_cell(name)
        assert why is not None
        host.own_app_layer[name] = why
        host._pack_dirs.setdefault(name, c["module_path"])
        cells.own_cell_only[name] = why
        cfg = host.config_for(c["module_path"])
        if cfg is not None:
            out.append(cells.start_early_own(host.manager, cfg, what=f"pack {name!r}'s own cell (prestart: {why})"))
    configs = [c for c in configs if c not in own]
    if not configs:
        log.info("prestart: no isolated packs for an app cell in %s", packs_dir)
        return out
    plan = _Plan(host, configs)
    for slot in range(cells.max_cells):
        out.append(cells.start_early(host.manager, _Slot(plan, slot), configs,
                                     what=f"app cell {slot + 1} (prestart, {packs_dir})"))
    return out


class _Slot:
    """The config an early start is shaped for, known once the plan is made: the pack with the
    fewest dependencies of kind number ``slot`` (:class:`EarlyNotNeeded` when there is none)."""

    def __init__(self, plan: _Plan, slot: int) -> None:
        self.plan = plan
        self.slot = slot

    def resolve(self) -> ExtensionConfig:
        from .._early import EarlyNotNeeded

        groups = self.plan.groups()
        if self.slot >= len(groups):
            raise EarlyNotNeeded(f"the packs are of {len(groups)} kind(s)")
        return min(groups[self.slot], key=lambda c: (len(c["dependencies"]), c["name"]))
