""":class:`StudioHost`: load a host app's custom-node packs into cells, as the app would load them.

One pass per pack: **profile** (which app, where its code and data are) ->
**config** (the pack's manifest, plus what the app needs inside the worker:
its code bound read-only, its requirements shared into the venv, the pack's
own writable output/temp folders, the app's services) -> **cell** (provision,
sandbox, worker; the choice of cell is :meth:`StudioHost._extension`) ->
**proxies** registered where the app looks for nodes, routes added to the
app's server, the pack's web folder registered.

    import nodes
    from nodecell import studio
    host = studio.StudioHost()              # the app is detected from this process
    await host.load_custom_node("custom_nodes/ComfyUI-KJNodes",
                                nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
"""

from __future__ import annotations

import asyncio
import copy
import enum
import errno
import importlib.util
import inspect
import json
import logging
import os
import re
import stat
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from .. import _nodecell, _reload
from ..config import ExtensionConfig, ExtensionManagerConfig
from ..errors import ConfigError, NodecellError, RemoteError
from ..extension import Extension, _LoopGone, _on_loop
from ..manager import ExtensionManager
from . import apps as _apps
from . import routes as _routes
from . import state as _state
from ._ext import ENV, StudioExtension
from .apps.worker import APP_ENV
from .proxies import is_proxy, make_proxy
from .schema import DEFAULT_ALLOWED
from .services import AppServices

__all__ = ["StudioHost", "default_host", "load_custom_node"]

log = logging.getLogger("nodecell.studio")

#: Where the host's API packages appear inside a worker when no app profile is used.
_SANDBOX_HOST = "/run/nodecell/host"
#: Where a worker sees the pack's own folder (read-only) and its state (writable).
_SOURCE_IN = "/run/nodecell/pack-source"
_STATE_IN = "/run/nodecell/pack-state"


class StudioHost:
    """A host app's view of its node packs: one manager, the proxies of isolated packs.

    ``app``: an :class:`~nodecell.studio.apps.AppProfile`, a profile name
    (``"comfyui"``, ``"hanzo"``), ``None`` to detect the app running this
    process (the default), or ``False`` for none (a bare host: only
    ``api_packages`` are exposed to workers). ``app_root``: where the app's code
    is, when it is not the detected one (with ``app`` naming its shape,
    ComfyUI's by default). ``hooks``: extra ``"module:function"`` hooks run in
    each worker after the app's own, before the pack is imported (the module
    must be importable here). ``apis`` are :class:`nodecell.ProxiedSingleton`
    services every pack may use; ``reload=True`` turns on hot reload for every
    isolated pack. ``state``: where packs' writable layers live (default
    nodecell's state folder, ``nodecell state list``), or ``False`` to keep
    packs' folders read-only. ``placement`` maps pack names to where their
    cells run on a Ray cluster (with ``backend="ray"``, see :mod:`nodecell.ray`),
    e.g. ``{"upscale_pack": {"num_gpus": 1}}``; ``load_custom_node(...,
    placement=...)`` overrides it for one load. Other keyword arguments go to
    :class:`nodecell.ExtensionManagerConfig`. ``app_cell=True``: compatible packs
    share one sandbox whose zygote imported torch and ``app_preload`` (the app's
    modules, e.g. ``["nodes"]``) once, started in the background as soon as the host
    is made inside a running event loop (the app's packs folder tells its shape); a
    pack then loads by fork + import and is walled off from the others in its own
    uid and Landlock domain (``pack-separation`` in its walls; see :mod:`nodecell.appcell`).
    :meth:`prestart` (or :func:`nodecell.studio.prestart`, from the app's prestartup script)
    starts the app cells, one per kind of pack venv, before the app imports torch, with no
    event loop: the packs' loads adopt them.
    ``app_preload`` also goes to the zygotes of packs' own cells (a pack whose manifest names
    no ``preload``), so their restarts too are forks that do not import the app again.
    A pack in a cell of its own has an **app layer** (:meth:`_app_layer`): a folder of its
    state bound writable at the app root, under the app's read-only entries, so what it
    makes next to the app's code (ComfyUI-Custom-Scripts: ``<app>/web/extensions/pysssss``)
    lands there, never in the app's tree. An app cell has none (its packs share its mounts):
    a pack whose import fails there writing under the app's tree is loaded again in a cell of
    its own, with a log line and :attr:`own_app_layer` saying why; so is a pack whose node
    fails at run time writing where an app layer would take it (WAS: ``./ComfyUI/output`` from
    the app root, written for the portable layout; ``models/midas``), and that call runs once
    more in the new cell (:meth:`_moved_after_failure`).
    """

    def __init__(self, venv_root_path: Optional[str] = None, *, app: Any = None, app_root: Optional[str] = None,
                 api_packages: Optional[Iterable[str]] = None, hooks: Iterable[str] = (),
                 apis: Optional[List[type]] = None, reload: bool = False, state: Any = None,
                 placement: Optional[Dict[str, Any]] = None, app_cell: bool = False,
                 app_preload: Iterable[str] = (), **manager_kw: Any) -> None:
        self.manager = ExtensionManager(StudioExtension, ExtensionManagerConfig(venv_root_path, **manager_kw))
        #: Pack name -> placement on a Ray cluster (``backend="ray"``).
        self.placement: Dict[str, Any] = dict(placement or {})
        self.profile: Optional[_apps.AppProfile] = _profile(app, app_root)
        self.manager.before_launch = self._before_launch
        #: What a zygote imports for this host's packs besides torch (empty: torch only): with
        #: ``app_preload``, the app's start-up (its zygote hooks, its early packages, the worker
        #: hooks' modules) and ``app_preload``, in the app cell and in packs' own cells alike, so a
        #: pack's restart (a fork) does not import the app again.
        self.zygote_preload: List[str] = []
        app_preload = [str(m) for m in app_preload]
        if app_cell or app_preload:
            # The host's command line first (its zygote hooks), then what the app's entry point imports.
            early = list(self.profile.zygote_hooks) + list(self.profile.preload) if self.profile is not None else []
            # The worker hooks' modules too: each forked worker then only runs them (not imports them).
            worker_hooks = list(self.profile.worker_hooks) if self.profile is not None else []
            early += [str(h).partition(":")[0] for h in worker_hooks + list(hooks)]
            self.zygote_preload = list(dict.fromkeys(early + app_preload)) if app_preload else []
            if app_cell:  # packs share an app cell whose zygote preloaded torch + app_preload (nodecell.appcell)
                from .. import appcell

                appcell.enable(self.manager, early + app_preload, self._sibling_configs)
        if api_packages is not None:
            self.api_packages = tuple(api_packages)
        elif self.profile is not None:
            self.api_packages = tuple(self.profile.api_packages)
        else:
            self.api_packages = tuple(DEFAULT_ALLOWED)
        self.allowed = tuple(self.profile.rebuild_packages) if self.profile is not None else self.api_packages
        self.hooks = [str(h) for h in hooks]
        for h in self.hooks:
            if ":" not in h:
                raise ConfigError("hooks", f"expected 'module:function', got {h!r}")
        self.apis = list(apis or [])
        if self.profile is not None and AppServices not in self.apis:
            self.apis.append(AppServices)
            AppServices.profile = self.profile
        self.reload = reload
        #: Where packs' writable layers live (None: nodecell's state folder; False: none).
        self.state: Any = state
        #: Isolated packs by name.
        self.packs: Dict[str, Extension] = {}
        #: Node id -> pack name (isolated packs) or None (packs imported in the host).
        self.node_pack: Dict[str, Optional[str]] = {}
        #: Node id -> the description the worker gave (isolated packs).
        self.node_info: Dict[str, Dict[str, Any]] = {}
        #: Pack name -> the host folder of its web extension (``WEB_DIRECTORY``), where it has one.
        self.web_directories: Dict[str, str] = {}
        #: Pack name -> the HTTP routes added to the host's server for it.
        self.routes: Dict[str, List[str]] = {}
        self._registered: Dict[str, List[Tuple[Dict[str, Any], Optional[Dict[str, str]]]]] = {}
        self._proxies: Dict[str, Dict[str, type]] = {}
        self._generation: Dict[str, int] = {}
        self._refreshing: Dict[str, asyncio.Lock] = {}
        self._pack_dirs: Dict[str, str] = {}
        self._overrides: Dict[str, Dict[str, Any]] = {}  # pack name -> load_custom_node's overrides
        self._moving: Dict[str, asyncio.Lock] = {}  # used on the loop in _load_loops only
        self._load_loops: Dict[str, asyncio.AbstractEventLoop] = {}  # pack name -> the loop that loaded it
        self._app_requirements: Optional[List[str]] = None
        self._requirements_settled = False
        #: Pack name -> its kind of venv, as :meth:`prestart` sorted the packs (``{dist: version}``
        #: where its venv differs from the host; ``{}`` for the host's versions).
        self.kinds: Dict[str, Dict[str, str]] = {}
        #: The shared requirements :meth:`prestart` started the app cells with.
        self.prestart_list: List[str] = []
        #: Pack name -> the host folder of its app layer (see :meth:`_app_layer`), for the packs
        #: that have one: every isolated pack without an app cell, and the packs an app cell
        #: sent to a cell of their own because their import wrote under the app's tree.
        self.app_layers: Dict[str, str] = {}
        #: Pack name -> why it was loaded again in a cell of its own, with an app layer (app cells).
        self.own_app_layer: Dict[str, str] = {}
        #: Pack name -> where its last load spent its time: ``start_s`` (the worker started and
        #: imported the pack), ``after_start_s`` (nodes described, proxies registered), ``worker``
        #: (the worker's own phases, see ``StudioExtension.pack_info``).
        self.load_times: Dict[str, Dict[str, Any]] = {}
        if app_cell:
            self.manager._app_cells.prewarm_soon(self.manager, self._app_pack_configs)

    # -- configuration --------------------------------------------------------------------

    def config_for(self, pack_dir: str, **overrides: Any) -> Optional[ExtensionConfig]:
        """The extension config this host uses for a pack (None when the pack has no manifest)."""
        pack_dir = os.path.abspath(pack_dir)
        if not _has_manifest(pack_dir):
            return None
        cfg = ExtensionConfig.from_manifest(pack_dir, **overrides)
        if not cfg["isolated"]:
            return cfg
        data = dict(cfg)
        ro = list(cfg["sandbox"]["readonly_paths"])
        rw = list(cfg["sandbox"]["writable_paths"])
        env = dict(cfg["env"])
        ctx: Dict[str, Any] = {"pack": cfg["name"], "pack_dir": pack_dir, "hooks": list(self.hooks),
                               "allowed": list(self.allowed)}
        if self.profile is not None:
            p = self.profile
            ctx.update(app=p.as_data(), module_name=p.module_name(pack_dir),
                       relative_module=p.relative_module(pack_dir), cli_args=self._cli_args())
            for entry in p.code_entries():
                _add(ro, entry)
            dirs, data_rw, data_ro = self._app_dirs(pack_dir)
            ctx.update(dirs=dirs)
            for d in data_ro:
                _add(ro, d)
            for d in data_rw:
                _add(rw, d)
            if "share" not in overrides:
                undeclared = _undeclared_distributions(pack_dir, cfg["dependencies"])
                if undeclared:
                    log.info("pack %r imports %s from the app's environment without declaring it: shared from "
                             "the host, as the app's requirements are", cfg["name"], ", ".join(undeclared))
                data["share"] = list(dict.fromkeys(list(cfg["share"]) + self.app_requirements() + undeclared))
        else:
            for path in _api_package_paths(self.api_packages):
                _add(ro, f"{path}:{_SANDBOX_HOST}/{os.path.basename(path)}")
        for mod in self.hooks:
            m = _module_mount(mod.partition(":")[0])
            if m is not None:
                _add(ro, f"{m[0]}:{_SANDBOX_HOST}/{m[1]}")
        if self.state is not False:
            ctx["layer"] = self._state_layer(cfg["name"], pack_dir, ro, rw)
            if self._has_app_layer(cfg["name"]):
                self._app_layer(cfg["name"], ro, rw)
        if self.profile is not None and self.profile.root is not None:
            data["cwd"] = worker_cwd(self.profile.root, ro + rw)
        env[ENV] = json.dumps(ctx)
        if self.profile is not None:  # the app-wide part: what an app cell's zygote applies before its preload
            env[APP_ENV] = json.dumps({"app": ctx["app"], "cli_args": ctx["cli_args"]})
        data["sandbox"] = dict(cfg["sandbox"], readonly_paths=ro, writable_paths=rw)
        data["env"] = env
        if self.zygote_preload and cfg["preload"] is None:  # the manifest's own preload wins
            data["preload"] = (["torch"] if cfg["share_torch"] else []) + self.zygote_preload
        data["apis"] = list(cfg["apis"]) + [a for a in self.apis if a not in cfg["apis"]]
        if self.reload and "reload" not in overrides:
            data["reload"] = True
        if "placement" not in overrides and self.placement.get(cfg["name"]) is not None:
            data["placement"] = self.placement[cfg["name"]]
        return ExtensionConfig(data)

    def _sibling_configs(self, cfg: ExtensionConfig) -> List[ExtensionConfig]:
        """The isolated packs in ``cfg``'s folder, its own included: an app cell started for ``cfg``
        also mounts what they need (their folders, state layers, output/temp), so they can join
        it; building their configs again opens their layers to the uid this launch leases."""
        return self._configs_in(os.path.dirname(cfg["module_path"]))

    def _app_pack_configs(self) -> List[ExtensionConfig]:
        """The isolated packs of the app's packs folder (what an app cell is prewarmed for)."""
        p = self.profile
        if p is None or p.root is None:
            return []
        fp = sys.modules.get(p.paths_module)
        dirs = (getattr(fp, "folder_names_and_paths", {}).get("custom_nodes") or [[]])[0] if fp else []
        folder = dirs[0] if dirs else os.path.join(p.root, "custom_nodes")
        return self._configs_in(folder) if os.path.isdir(folder) else []

    def _configs_in(self, parent: str) -> List[ExtensionConfig]:
        out = []
        for entry in sorted(os.listdir(parent)):
            d = os.path.join(parent, entry)
            if not os.path.isdir(d) or not _has_manifest(d):
                continue
            if self.manager._app_cells is not None and d in self._own_app_layer_dirs():
                continue  # in a cell of its own: its app layer is never mounted into an app cell
            try:
                c = self.config_for(d)
            except (NodecellError, OSError, ValueError) as e:
                log.info("pack folder %s: not prepared for the app cell: %s", d, e)
                continue
            if c is not None and c["isolated"]:
                out.append(c)
        return out

    def _own_app_layer_dirs(self) -> List[str]:
        return [self._pack_dirs.get(n, "") for n in self.own_app_layer]

    def _state_layer(self, pack: str, pack_dir: str, ro: List[str], rw: List[str]) -> Dict[str, str]:
        """The pack's writable layer (see :mod:`nodecell.studio.state`), at the pack's own path."""
        root = self.state or _state.state_root()
        packs = os.path.join(root, "packs")
        os.makedirs(packs, exist_ok=True)
        # The launcher opens bind sources as the cell's uid: it must traverse to its
        # own layer, but never list the others.
        for d in (root, packs):
            if os.stat(d).st_uid == os.geteuid():
                os.chmod(d, 0o711)
        pack_state = os.path.join(packs, pack)
        layer = os.path.join(pack_state, "layer")
        os.makedirs(layer, exist_ok=True)
        counts = _state.sync(pack_dir, layer)
        if os.geteuid() == 0:  # cells get a uid per launch: let the next one write its state
            os.chmod(pack_state, 0o777)
            _state.open_for_cells(layer)
        log.debug("pack %r: state layer %s (%s)", pack, layer, counts)
        _add(rw, f"{layer}:{pack_dir}")
        state_in, source_in = _STATE_IN, _SOURCE_IN
        if self.manager._app_cells is not None:  # packs may share a sandbox: each its own place there
            state_in, source_in = f"{_STATE_IN}/{pack}", f"{_SOURCE_IN}/{pack}"
        _add(rw, f"{pack_state}:{state_in}")
        _add(ro, f"{pack_dir}:{source_in}")
        return {"source": source_in, "record": f"{state_in}/{_state.RECORD}"}

    def _has_app_layer(self, pack: str) -> bool:
        """Whether ``pack`` sees the app's tree with an app layer of its own: only in a cell of
        its own (packs sharing an app cell share one mount namespace: a writable app root there
        would let one pack change what another imports)."""
        if self.profile is None or self.profile.root is None or self.state is False:
            return False
        return self.manager._app_cells is None or pack in self.own_app_layer

    def _app_layer(self, pack: str, ro: List[str], rw: List[str]) -> str:
        """Bind the pack's app layer (``<state>/packs/<pack>/app-layer``, a folder of its own)
        writable at the app root, under the app's entries (bound read-only on top of it, as
        before), so a pack that makes a new folder next to the app's code at import
        (ComfyUI-Custom-Scripts: ``<app>/web/extensions/pysssss``) makes it in its own state,
        never in the app's tree. The app's data folders it is not given stay absent. The mount
        points of the binds inside the app root are made in the layer first (the sandbox mounts
        only on existing ones), without following any symlink a cell left there."""
        p = self.profile
        assert p is not None and p.root is not None
        root = os.path.normpath(os.path.abspath(p.root))
        pack_state = os.path.join(self.state or _state.state_root(), "packs", pack)
        layer = os.path.join(pack_state, "app-layer")
        os.makedirs(layer, exist_ok=True)
        for entry in ro + rw:
            src, sep, dst = entry.partition(":")
            dst = os.path.normpath(dst if sep else src)
            if dst.startswith(root + os.sep):
                _mount_point(layer, os.path.relpath(dst, root).split(os.sep), os.path.isdir(src))
        if os.geteuid() == 0:
            _state.open_for_cells(layer)
        _add(rw, f"{layer}:{root}")
        self.app_layers[pack] = layer
        return layer

    def _own_cell_record(self, pack: str) -> str:
        """Where the host remembers that ``pack`` needs a cell of its own with an app layer:
        ``<state root>/own-cell/<pack>.json``, outside the pack's state folder (which its cells
        may write); delete it to have the pack tried in the app cell again."""
        return os.path.join(self.state or _state.state_root(), "own-cell", f"{pack}.json")

    def _remembered_own_cell(self, pack: str) -> Optional[str]:
        """Why an earlier host sent ``pack`` to a cell of its own, or None (no record, or one
        that cannot be read: the pack is then tried in the app cell again)."""
        if self.state is False or self.profile is None or self.profile.root is None:
            return None
        try:
            fd = os.open(self._own_cell_record(pack), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                why = json.loads(f.read(1 << 16)).get("why")
        except (OSError, ValueError, AttributeError):
            return None
        return why if isinstance(why, str) and why else None

    def _remember_own_cell(self, pack: str, why: str) -> None:
        """Record that ``pack`` needs a cell of its own, for the next host process."""
        if self.state is False:
            return
        path = self._own_cell_record(pack)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"why": why}, f)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("pack %r: cannot remember that it needs a cell of its own (%s): %s", pack, path, e)

    def _denied_under_app(self, text: str, cwd: Optional[str] = None) -> List[Tuple[str, str]]:
        """``(errno, path)`` of each write an ``OSError`` EROFS/EACCES/EPERM in ``text`` (the
        worker's message) names in the app's tree, the root included; a relative path is taken
        from ``cwd`` (left out without one). The text is the worker's: what it names only ever
        sends the pack to a cell of its own, never loosens a wall."""
        if self.profile is None or self.profile.root is None:
            return []
        root = os.path.normpath(os.path.abspath(self.profile.root))
        codes = {errno.EROFS, errno.EACCES, errno.EPERM}
        out = []
        for m in _OS_ERROR.finditer(text):
            path = os.path.normpath(os.path.join(cwd, m.group(2)) if cwd else m.group(2))
            if int(m.group(1)) in codes and (path == root or path.startswith(root + os.sep)):
                out.append((m.group(1), path))
        return out

    def _wrote_under_app(self, err: BaseException) -> Optional[str]:
        """The app path a failed load tried to write (see :meth:`_denied_under_app`), or None."""
        for code, path in self._denied_under_app(str(err)):
            return f"[Errno {code}] {path}"
        return None

    def _before_launch(self, cfg: ExtensionConfig) -> None:
        """Before every launch of a pack's own cell (restarts too): as root each launch leases a
        new uid, so the pack's state layer (what the last cell wrote belongs to the last uid) is
        opened to it again."""
        if self.state is False or os.geteuid() != 0:
            return
        pack_state = os.path.join(self.state or _state.state_root(), "packs", cfg["name"])
        layer = os.path.join(pack_state, "layer")
        if os.path.isdir(layer) and not os.path.islink(pack_state):
            os.chmod(pack_state, 0o777)
            _state.open_for_cells(layer)
            app_layer = os.path.join(pack_state, "app-layer")
            if cfg["name"] in self.app_layers and os.path.isdir(app_layer):
                _state.open_for_cells(app_layer)

    def app_requirements(self) -> List[str]:
        """The app's own requirements (names), shared from the host into every pack venv: its
        requirements file, and the distributions of the modules the app process has imported (a
        requirement it imports without listing it, such as ComfyUI's ``requests``).

        Before the app has booted (:meth:`prestart`: its modules not imported yet) the list
        also has what the booted app imported the last time (``<state root>/app-requirements.json``);
        once it has booted the list is made again, remembered there for the next start, and
        early starts made with a shorter list are dropped (their venvs lack what the app shares)."""
        if self.profile is None or self.profile.root is None:
            return []
        booted = all(m in sys.modules for m in self.profile.markers)
        if self._app_requirements is None or (booted and not self._requirements_settled):
            names = list(_nodecell.requirement_names(os.path.join(self.profile.root,
                                                                  self.profile.requirements_file)))
            before = list(self._app_requirements or [])
            extra = set(_imported_distributions()) | (set(before) if booted else set(self._remembered_requirements()))
            self._app_requirements = list(dict.fromkeys(names + sorted(extra - set(names))))
            if booted:
                self._requirements_settled = True
                self._settled_requirements(before)
        return list(self._app_requirements)

    def _requirements_record(self) -> str:
        return os.path.join(self.state or _state.state_root(), "app-requirements.json")

    def _remembered_requirements(self) -> List[str]:
        """What the booted app shared the last time (same app folder and interpreter), or []."""
        if self.state is False or self.profile is None:
            return []
        try:
            fd = os.open(self._requirements_record(), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                rec = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return []
        if not isinstance(rec, dict) or rec.get("app_root") != os.path.abspath(str(self.profile.root)) or \
                rec.get("python") != sys.executable:
            return []
        names = rec.get("names")
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def _settled_requirements(self, before: List[str]) -> None:
        """The app has booted: remember its list; drop early starts made with less."""
        assert self.profile is not None and self._app_requirements is not None
        now = self._app_requirements
        cells = self.manager._app_cells
        missing = sorted(set(now) - set(before))
        if before and missing and cells is not None and (cells.early or cells.early_own):
            cells.drop_early(f"the app imported {', '.join(missing)} after its prestart (shared into the packs' "
                             f"venvs; remembered in {self._requirements_record()} for its next start)")
        if self.state is False or sorted(now) == sorted(self._remembered_requirements()):
            return
        path = self._requirements_record()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"app_root": os.path.abspath(str(self.profile.root)), "python": sys.executable,
                           "names": now}, f)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot remember the app's shared requirements (%s): %s", path, e)

    def prestart(self, packs_dir: Optional[str] = None, packs: Optional[Iterable[str]] = None) -> List[Any]:
        """Start this host's app cells now, one per kind of the isolated packs in ``packs_dir``
        (default: the app's ``custom_nodes``; ``packs``: only these pack folders), and the own
        cells of the packs it remembers needing one, with no event loop needed: from the app's
        prestartup script, while the app boots (see :mod:`nodecell.studio.early`; the function
        :func:`nodecell.studio.prestart` also makes the host). The packs' loads later adopt
        them. Returns the early launches (``nodecell._early.EarlyLaunch``)."""
        from .early import start_app_cells

        return start_app_cells(self, packs_dir, packs)

    def _cli_args(self) -> Dict[str, Any]:
        p = self.profile
        assert p is not None
        mod = sys.modules.get(p.cli_args_module)
        args = getattr(mod, "args", None)
        if args is None:
            return {}
        out = {}
        for k, v in vars(args).items():
            enc = _encode_arg(v)
            if enc is not _SKIP:
                out[k] = enc
        return out

    def _app_dirs(self, pack_dir: str) -> Tuple[Dict[str, str], List[str], List[str]]:
        """(the app's folders by kind, folders bound writable, folders bound read-only), for the
        pack in ``pack_dir``.

        The app's output, temp and input folders are bound writable at their own
        paths: what a pack writes is where the app (and its UI) looks, and
        ``folder_paths`` answers the same paths inside as outside. As root,
        cells run as uids leased per launch, so those folders are made
        writable by any uid with the sticky bit (``1777``, like ``/tmp``): a
        cell can add files but not remove or replace the app's or another
        cell's. Model folders (``extra_model_paths`` included) are bound
        read-only, except those inside a pack's folder (a pack registering
        a folder of its own, such as KJNodes' ``kjnodes_fonts``): they are that
        pack's files, which it sees through its own folder and the other packs
        never do (walled apart in an app cell, not bound into their own cells),
        so a pack loaded later still fits the app cell started before.
        """
        p = self.profile
        assert p is not None
        fp = sys.modules.get(p.paths_module)
        if fp is None:
            return {}, [], []
        dirs: Dict[str, str] = {}
        for what in ("output", "temp", "input", "user"):
            getter = getattr(fp, f"get_{what}_directory", None)
            if getter is not None:
                dirs[what] = os.path.abspath(getter())
        rw: List[str] = []
        for what in ("output", "temp", "input"):
            d = dirs.get(what)
            if d is None:
                continue
            os.makedirs(d, exist_ok=True)
            if os.geteuid() == 0:
                _open_for_cells(d)
            rw.append(d)
        ro: List[str] = []
        table = getattr(fp, "folder_names_and_paths", {})
        packs = self._packs_folders(pack_dir, table)
        for name, entry in sorted(table.items()):
            if name == "custom_nodes":
                continue
            for path in entry[0]:
                if not os.path.isdir(path):
                    continue
                real = os.path.realpath(path)
                if any(real.startswith(f + os.sep) for f in packs):
                    log.debug("model folder %s (%s) lies in a pack's folder: not bound for %s", path, name, pack_dir)
                    continue
                ro.append(os.path.abspath(path))
        return dirs, rw, ro

    def _packs_folders(self, pack_dir: str, table: Dict[str, Any]) -> List[str]:
        """The folders holding pack folders (real paths): the app's ``custom_nodes`` folders,
        and the folders of ``pack_dir`` and of the packs loaded so far."""
        out = [os.path.realpath(d) for d in (table.get("custom_nodes") or [[]])[0]]
        out += [os.path.dirname(os.path.realpath(d)) for d in [pack_dir, *self._pack_dirs.values()]]
        return [d for d in dict.fromkeys(out) if d != "/"]

    async def provision(self, pack_dirs: Iterable[str], on_event: Optional[Callable[[Dict[str, Any]], Any]] = None,
                        **overrides: Any) -> Dict[str, Dict[str, Any]]:
        """Build (or find in the cache) the venvs of the isolated packs among ``pack_dirs``, one after another.

        ``on_event(event)`` receives provisioning progress events (``resolving``,
        ``downloading``, ``download``, ``installing``, ``done``, ``failed``; see
        :mod:`nodecell_provision`'s events). Returns pack name -> venv description.
        Raises :class:`nodecell.ProvisionError` when a venv cannot be built.
        """
        loop = asyncio.get_running_loop()
        out: Dict[str, Dict[str, Any]] = {}
        remove = None
        if on_event is not None:
            self.manager.on_progress(on_event)
            remove = on_event
        try:
            for d in pack_dirs:
                cfg = self.config_for(d, **overrides)
                if cfg is None or not cfg["isolated"]:
                    continue
                out[cfg["name"]] = await loop.run_in_executor(None, self.manager._provision, cfg)
        finally:
            if remove is not None:
                # let the last events (delivered with call_soon_threadsafe) run first
                await asyncio.sleep(0)
                try:
                    self.manager._progress.remove(remove)
                except ValueError:
                    pass
        return out

    @staticmethod
    def check() -> Dict[str, Any]:
        """What this kernel and user can enforce (``nodecell check``), for the host to show at start."""
        from .. import check

        return check()

    # -- loading ----------------------------------------------------------------------------

    def _extension(self, cfg: ExtensionConfig) -> Tuple[Extension, bool]:
        """The cell a pack runs in (the one place that chooses it): (extension, whether new)."""
        ext = self.manager.extensions.get(cfg["name"])
        if ext is not None:
            return ext, False
        return self.manager.load_extension(cfg), True

    async def load_custom_node(self, pack_dir: str, node_class_mappings: Dict[str, Any],
                               display_name_mappings: Optional[Dict[str, str]] = None,
                               **overrides: Any) -> List[str]:
        """Load one pack; register its nodes (or proxies) into the given mappings; return their names.

        Keyword arguments override the pack's manifest (e.g. ``isolated=False``
        imports an isolated pack into the host instead). Nodes of the app itself
        already in the mappings are never replaced (as the app's own loader does).
        """
        pack_dir = os.path.abspath(pack_dir)
        cfg = self.config_for(pack_dir, **overrides)
        if cfg is None or not cfg["isolated"]:
            names = await _load_in_host(pack_dir, node_class_mappings, display_name_mappings, self.profile)
            for n in names:
                self.node_pack[n] = None
            return names
        _import_api_packages(self.allowed)
        name = cfg["name"]
        cells = self.manager._app_cells
        remembered = self._remembered_own_cell(name) if cells is not None else None
        if remembered is not None and name not in self.own_app_layer:
            # An earlier host found its import writes under the app's tree: straight to a cell of
            # its own, without the failed try in the app cell.
            log.info("pack %r: %s (remembered in %s)", name, remembered, self._own_cell_record(name))
            self.own_app_layer[name] = remembered
            self._pack_dirs.setdefault(name, pack_dir)
            cells.own_cell_only[name] = remembered
            cfg = self.config_for(pack_dir, **overrides)
            assert cfg is not None
        t0 = time.perf_counter()
        try:
            ext, t1, nodes, info = await self._start(cfg)
        except Exception as e:
            cells = self.manager._app_cells
            wrote = self._wrote_under_app(e) if cells is not None and name not in self.own_app_layer else None
            if wrote is None:
                raise
            # Packs in an app cell share its mounts: no writable app root there. This one gets a
            # cell of its own whose app layer takes what its import writes next to the app's code.
            why = (f"its import wrote under the app's tree ({wrote}): loaded again in a cell of its own, "
                   f"with its own app layer")
            log.warning("pack %r: %s", name, why)
            self.own_app_layer[name] = why
            self._remember_own_cell(name, why)
            self._pack_dirs.setdefault(name, pack_dir)
            cells.own_cell_only[name] = why
            cfg = self.config_for(pack_dir, **overrides)
            assert cfg is not None
            t0 = time.perf_counter()
            ext, t1, nodes, info = await self._start(cfg)
        self.packs[name] = ext
        self._pack_dirs[name] = pack_dir
        self._overrides[name] = dict(overrides)
        self._load_loops[name] = asyncio.get_running_loop()
        self._generation[name] = _reload.generation(ext)
        self._registered.setdefault(name, []).append((node_class_mappings, display_name_mappings))
        self._register_pack(name, pack_dir, ext, info)
        proxies = self._proxies.setdefault(name, {})
        out = []
        for node_id, ninfo in nodes.items():
            if self._is_base_node(node_class_mappings.get(node_id)):
                log.info("pack %r: node %r is the app's own; not replaced", name, node_id)
                continue
            proxy = proxies.get(node_id)
            if proxy is None:
                proxy = proxies[node_id] = self._make_proxy(ext, node_id, ninfo, pack_dir)
            self._register(name, node_id, proxy, ninfo, node_class_mappings, display_name_mappings)
            out.append(node_id)
        self.load_times[name] = {"start_s": t1 - t0, "after_start_s": time.perf_counter() - t1,
                                 "worker": info.get("load_phases")}
        return out

    async def _start(self, cfg: ExtensionConfig) -> Tuple[Extension, float, Dict[str, Any], Dict[str, Any]]:
        """Start the pack's cell: (extension, when it started, its nodes, its pack info)."""
        ext, fresh = self._extension(cfg)
        try:
            await ext.start()
            t1 = time.perf_counter()
            nodes = await ext.list_nodes()
            info = await ext.pack_info()
        except BaseException:
            if fresh:  # a pack that cannot load leaves nothing running
                await ext.stop()
            raise
        return ext, t1, nodes, info

    def _make_proxy(self, ext: Extension, node_id: str, info: Dict[str, Any], pack_dir: str) -> type:
        async def after_call() -> None:
            if _reload.generation(ext) != self._generation.get(ext.name):
                await self._refresh_if_reloaded(ext.name)

        rel = self.profile.relative_module(pack_dir) if self.profile is not None else None
        return make_proxy(ext, node_id, info, self.allowed, self.profile, rel, after_call,
                          self._moved_after_failure)

    async def _moved_after_failure(self, ext: Extension, err: NodecellError) -> Optional[Extension]:
        """After a call of ``ext``'s pack failed: the extension the pack now runs in where that
        call can work, or None (the error stands).

        A pack in an app cell shares its mounts, where the app's tree is read-only. One whose
        node fails writing where an app layer would take it (:meth:`_app_layer_would_take`:
        WAS's ``./ComfyUI/output`` from the app root, its ``models/midas``) is moved, as at
        import, to a cell of its own whose app layer takes that write: the new cell starts
        (the pack's load), its proxies are bound to it, the host remembers it for its next
        start, the pack's worker in the app cell stops, and a log line says why. Writes into
        folders bound read-only would fail there too: those errors stand, as every error of
        a pack already in a cell of its own. Calls failing together move the pack once. The new
        cell starts on the event loop that loaded the pack (the app's: a node's call may run on a
        loop that ends with its prompt, and a cell stays on the loop it started on)."""
        if self.manager._app_cells is None or ext.name not in self.packs:
            return None
        loop = self._load_loops.get(ext.name)
        if loop is None or loop is asyncio.get_running_loop() or loop.is_closed() or not loop.is_running():
            return await self._move_to_own_cell(ext, err)
        try:
            return await _on_loop(loop, self._move_to_own_cell(ext, err), f"moving pack {ext.name!r}")
        except _LoopGone:  # that loop ended just now
            return await self._move_to_own_cell(ext, err)

    async def _move_to_own_cell(self, ext: Extension, err: NodecellError) -> Optional[Extension]:
        """:meth:`_moved_after_failure`'s move, on the loop that loaded the pack."""
        name = ext.name
        cells = self.manager._app_cells
        async with self._moving.setdefault(name, asyncio.Lock()):
            now = self.packs.get(name)
            if now is not ext:  # moved by a call that failed at the same time
                return now if name in self.own_app_layer else None
            if name in self.own_app_layer or not isinstance(err, RemoteError):
                return None
            wrote = self._app_layer_would_take(err, ext.config)
            if wrote is None:
                return None
            why = (f"a node wrote under the app's tree at run time ({wrote}): moved to a cell of its own, "
                   f"with its own app layer")
            log.warning("pack %r: %s", name, why)
            pack_dir = self._pack_dirs[name]
            self.own_app_layer[name] = why
            cells.own_cell_only[name] = why
            del self.manager.extensions[name]  # its own cell takes the name; the app cell's worker stops after
            try:
                cfg = self.config_for(pack_dir, **self._overrides.get(name, {}))
                assert cfg is not None
                moved, _t1, nodes, _info = await self._start(cfg)
            except Exception as e:  # noqa: BLE001 - the pack stays where it was; its call's error stands
                log.error("pack %r: could not start it in a cell of its own (%s); it stays in the app cell", name, e)
                del self.own_app_layer[name]
                del cells.own_cell_only[name]
                self.app_layers.pop(name, None)
                self.manager.extensions[name] = ext
                return None
            self._remember_own_cell(name, why)
            self.packs[name] = moved
            self._generation[name] = _reload.generation(moved)
            self._rebind(name, moved, nodes)
        await ext.stop()
        return moved

    def _app_layer_would_take(self, err: RemoteError, cfg: ExtensionConfig) -> Optional[str]:
        """The path a failed call of the pack configured by ``cfg`` (in an app cell) tried to
        write (an ``OSError`` EROFS/EACCES/EPERM in the worker's message; a relative path is
        the worker's, from its working directory) when an app layer would take it: a path under
        the app's root that none of the pack's binds covers (a new entry at the root, WAS's
        ``./ComfyUI/output``; a new folder in ``models/``, WAS's ``models/midas``, whose existing
        subfolders alone are bound), else None. The text is the worker's: it only ever moves the
        pack to a cell of its own, never loosens a wall."""
        if self.profile is None or self.profile.root is None:
            return None
        root = os.path.normpath(os.path.abspath(self.profile.root))
        box = cfg["sandbox"]
        binds = [os.path.normpath(e.partition(":")[2] or e) for e in
                 list(box.get("readonly_paths") or []) + list(box.get("writable_paths") or [])]
        for code, path in self._denied_under_app(err.remote_message, cfg.get("cwd") or root):
            if path != root and not any(path == b or path.startswith(b + os.sep) for b in binds):
                return f"[Errno {code}] {path}"
        return None

    def _is_base_node(self, cls: Any) -> bool:
        if cls is None or self.profile is None or is_proxy(cls):
            return False
        rel = getattr(cls, "RELATIVE_PYTHON_MODULE", None)
        return not (isinstance(rel, str) and rel.startswith(self.profile.custom_nodes_parent + "."))

    def _register_pack(self, name: str, pack_dir: str, ext: Extension, info: Dict[str, Any]) -> None:
        """What the app's own loader records for a pack: its folder, web folder, routes."""
        web = info.get("web_directory")
        if isinstance(web, str) and web:
            path = os.path.normpath(os.path.join(pack_dir, web))
            if os.path.isdir(path) and os.path.realpath(path).startswith(os.path.realpath(pack_dir)):
                self.web_directories[name] = path
        p = self.profile
        if p is None:
            return
        nodes = sys.modules.get(p.nodes_module)
        folder = os.path.basename(pack_dir.rstrip("/"))
        if nodes is not None:
            dirs = getattr(nodes, "LOADED_MODULE_DIRS", None)
            if isinstance(dirs, dict):
                dirs[folder] = pack_dir
            webdirs = getattr(nodes, "EXTENSION_WEB_DIRS", None)
            if isinstance(webdirs, dict):
                project = _pyproject_web(p, pack_dir)
                if project is not None:
                    webdirs[project[0]] = project[1]
                if name in self.web_directories:
                    webdirs[folder] = self.web_directories[name]
        server = sys.modules.get(p.server_module)
        inst = getattr(getattr(server, "PromptServer", None), "instance", None)
        table = getattr(inst, "routes", None)
        descs = info.get("routes") or []
        if table is None or not descs:
            return

        def call(key: str, req: Dict[str, Any]) -> Any:
            return self.packs.get(name, ext).call("handle_route", key, req)  # where the pack runs now

        added = _routes.register(table, descs, pack_dir, call, name)
        self.routes[name] = self.routes.get(name, []) + added
        router = getattr(getattr(inst, "app", None), "router", None)
        if added and getattr(router, "frozen", False):
            log.warning("pack %r: the app's server already started; its routes %s are served only after a "
                        "restart (load packs before the server starts)", name, ", ".join(added))

    def _register(self, pack: str, node_id: str, proxy: type, info: Dict[str, Any], mappings: Dict[str, Any],
                  display: Optional[Dict[str, str]]) -> None:
        mappings[node_id] = proxy
        if display is not None:
            dn = info.get("display_name")
            if not dn and info.get("kind") == "v3":
                dn = getattr(proxy._nodecell_schema, "display_name", None)
            if dn:
                display[node_id] = dn
        self.node_pack[node_id] = pack
        self.node_info[node_id] = info

    # -- hot reload -------------------------------------------------------------------------

    async def refresh(self, pack: Optional[str] = None) -> List[str]:
        """Look for changed files now (packs loaded with reload) and refresh changed packs' proxies.

        Returns the names of the packs that were reloaded. Proxies also refresh
        by themselves after a call that ran on reloaded code.
        """
        out = []
        for name in ([pack] if pack else list(self.packs)):
            ext = self.packs[name]
            if not ext.config["reload"]:
                continue
            st = ext.__dict__.get("_reload_state")
            if st is not None:
                st.next_check = 0.0
            await _reload.maybe_reload(ext)
            if await self._refresh_if_reloaded(name):
                out.append(name)
        return out

    async def _refresh_if_reloaded(self, pack: str) -> bool:
        ext = self.packs.get(pack)
        if ext is None or _reload.generation(ext) == self._generation.get(pack):
            return False
        lock = self._refreshing.setdefault(pack, asyncio.Lock())
        async with lock:
            gen = _reload.generation(ext)
            if gen == self._generation.get(pack):
                return False
            nodes = await ext.list_nodes()
            self._generation[pack] = gen
            self._rebind(pack, ext, nodes)
            log.info("pack %r reloaded: %d node(s)", pack, len(nodes))
            return True

    def _rebind(self, pack: str, ext: Extension, nodes: Dict[str, Any]) -> None:
        """Bind the pack's proxies to ``ext`` and its ``nodes`` (after a reload, or a move to a
        cell of its own): the same classes, updated in place, in every mapping they were
        registered in; nodes the pack no longer has are removed."""
        proxies = self._proxies.setdefault(pack, {})
        pack_dir = self._pack_dirs.get(pack, ext.config["module_path"])
        for node_id, info in nodes.items():
            fresh = self._make_proxy(ext, node_id, info, pack_dir)
            old = proxies.get(node_id)
            if old is None:
                proxies[node_id] = old = fresh
            else:
                _update_class(old, fresh)
            for mappings, display in self._registered.get(pack, []):
                self._register(pack, node_id, old, info, mappings, display)
        for node_id in [n for n in proxies if n not in nodes]:
            del proxies[node_id]
            self.node_pack.pop(node_id, None)
            self.node_info.pop(node_id, None)
            for mappings, display in self._registered.get(pack, []):
                mappings.pop(node_id, None)
                if display is not None:
                    display.pop(node_id, None)

    async def stop(self) -> None:
        """Stop every pack's sandbox."""
        if self.manager._app_cells is not None:
            await self.manager._app_cells.close()  # an app cell still starting in the background
        await self.manager.stop_all_extensions()
        self.packs.clear()


# -- helpers ----------------------------------------------------------------------------------

_SKIP = object()


def _encode_arg(v: Any) -> Any:
    """A command-line value as data a worker can rebuild (enums by class and value)."""
    if isinstance(v, enum.Enum):
        return {"__enum__": f"{type(v).__module__}:{type(v).__qualname__}", "value": _encode_arg(v.value)}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        items = [_encode_arg(x) for x in v]
        return _SKIP if any(x is _SKIP for x in items) else items
    if isinstance(v, (set, frozenset)):
        items = [_encode_arg(x) for x in v]
        return _SKIP if any(x is _SKIP for x in items) else {"__set__": items}
    return _SKIP


def _profile(app: Any, app_root: Optional[str]) -> Optional[_apps.AppProfile]:
    if app is False:
        return None
    if isinstance(app, _apps.AppProfile):
        return app.at(app_root) if app_root else (app if app.root else None)
    if isinstance(app, str):
        base = _apps.by_name(app)
        if app_root:
            return base.at(app_root)
        found = _apps.detect()
        return base.at(found.root) if found is not None and found.root else None
    if app is not None:
        raise ConfigError("app", f"expected an AppProfile, an app name, None or False, got {app!r}")
    if app_root:
        found = _apps.detect()
        return (found or _apps.COMFYUI).at(app_root)
    return _apps.detect()


def _open_for_cells(path: str) -> None:
    """Let any cell uid add files to an app folder and its subfolders (sticky: none removes
    another's files). Subfolders the app creates later with its own mode stay closed to cells."""
    changed = 0
    for root, dirs, _files in os.walk(path):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        st = os.stat(root)
        if st.st_mode & 0o1777 != 0o1777:
            os.chmod(root, st.st_mode | 0o1777)
            changed += 1
    if changed:
        log.info("made %s (%d folder(s)) writable for sandboxed packs (mode 1777, sticky, as /tmp)", path, changed)


def _pyproject_web(profile: _apps.AppProfile, pack_dir: str) -> Optional[Tuple[str, str]]:
    """``(project name, web folder)`` from ``[tool.comfy] web`` in the pack's pyproject, as the app reads it."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        return None
    path = os.path.join(pack_dir, "pyproject.toml")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError):
        return None
    web = ((data.get("tool") or {}).get("comfy") or {}).get("web")
    name = (data.get("project") or {}).get("name")
    if not isinstance(web, str) or not web or not isinstance(name, str):
        return None
    full = os.path.join(pack_dir, web)
    return (name, full) if os.path.isdir(full) else None


_IMPORT_LINE = re.compile(r"^[ \t]*(?:import[ \t]+([A-Za-z_]\w*(?:[ \t]*,[ \t]*[A-Za-z_]\w*)*)"
                          r"|from[ \t]+([A-Za-z_]\w*)[\w.]*[ \t]+import\b)", re.M)
_pack_imports_cache: Dict[str, Tuple[float, List[str]]] = {}


def _pack_imports(pack_dir: str) -> List[str]:
    """The top-level modules the pack's ``.py`` files import (``import a, b`` and ``from a.x
    import``, at any indentation: inside ``try`` blocks too; relative imports left out),
    sorted; cached until the folder's modification time changes."""
    try:
        mtime = os.stat(pack_dir).st_mtime
    except OSError:
        return []
    hit = _pack_imports_cache.get(pack_dir)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    found = set()
    for dirpath, dirnames, filenames in os.walk(pack_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("__pycache__", "node_modules")]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                    text = f.read(4 << 20)
            except OSError:
                continue
            for m in _IMPORT_LINE.finditer(text):
                if m.group(1):
                    found.update(part.strip() for part in m.group(1).split(","))
                else:
                    found.add(m.group(2))
    out = sorted(found)
    _pack_imports_cache[pack_dir] = (mtime, out)
    return out


def _undeclared_distributions(pack_dir: str, dependencies: Iterable[str]) -> List[str]:
    """Normalized names of the host environment's distributions whose top-level modules the
    pack imports without listing them in ``dependencies`` (packs count on what the app's
    environment has: ComfyUI_Comfyroll_CustomNodes imports matplotlib, which it does not
    declare). Left out: standard-library modules, modules no installed distribution provides
    (the app's own, the pack's own), modules one of whose distributions the pack lists (its
    ``opencv-python-headless`` provides ``cv2``: the host's ``opencv-python`` is not added) and
    installers (``pip``, ``setuptools``, ``wheel``: a sandbox installs nothing)."""
    owners = _distribution_owners()
    declared = {n for n in (_nodecell.requirement_name(str(dep)) for dep in dependencies) if n}
    out: List[str] = []
    for mod in _pack_imports(pack_dir):
        dists = [_nodecell.normalize_name(d) for d in owners.get(mod, [])]
        if mod in sys.stdlib_module_names or not dists or declared.intersection(dists):
            continue
        for n in dists:
            if n not in _NEVER_SHARED and n not in out:
                out.append(n)
    return out


_owners_cache: Optional[Tuple[Tuple[Tuple[str, float], ...], Dict[str, List[str]]]] = None


def _distribution_owners() -> Dict[str, List[str]]:
    """``importlib.metadata.packages_distributions()`` of this process (top-level module ->
    distributions), read again only when a site-packages folder changed (an install): every
    pack's config asks, and one read of the metadata costs ~0.1 s ({} when it is broken)."""
    import importlib.metadata
    import site

    global _owners_cache
    key = []
    for path in site.getsitepackages() + [site.getusersitepackages()]:
        try:
            key.append((path, os.stat(path).st_mtime))
        except OSError:
            continue
    if _owners_cache is None or _owners_cache[0] != tuple(key):
        try:
            owners = importlib.metadata.packages_distributions()
        except Exception:  # noqa: BLE001 - broken metadata: nothing is added
            owners = {}
        _owners_cache = (tuple(key), owners)
    return _owners_cache[1]


#: Distributions never added for a pack's undeclared imports.
_NEVER_SHARED = frozenset({"nodecell", "pip", "setuptools", "wheel"})


def _imported_distributions() -> List[str]:
    """Normalized names of the distributions whose top-level modules this process has imported
    from site-packages (nodecell's own left out), sorted."""
    import site

    sites = [os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages()]]
    owners = _distribution_owners()  # {} with broken metadata: only the requirements file counts
    out = set()
    for name, mod in list(sys.modules.items()):
        if "." in name or name == "nodecell" or mod is None:
            continue
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        real = os.path.realpath(f)
        if not any(real.startswith(s + os.sep) for s in sites):
            continue
        for dist in owners.get(name, []):
            out.add(_nodecell.normalize_name(dist))
    out.discard("nodecell")
    return sorted(out)


def worker_cwd(app_root: str, binds: Iterable[str], host_cwd: Optional[str] = None) -> str:
    """The working directory of an app's pack worker: the host process's own
    (``host_cwd``, default :func:`os.getcwd`) where the worker sees that folder
    at the same path, else the app root.

    What the app gives its packs is its own working directory, and packs build
    paths from it (WAS: ``os.getcwd() + "/ComfyUI/custom_nodes"``, written for
    the portable layout that starts ``python ComfyUI/main.py`` from the folder
    above the app); the worker has it when it is the app root or a folder above
    it (the sandbox holds those folders: the app's entries are bound under
    them), or a folder inside a bind (``binds``: ``SRC`` or ``SRC:DST`` entries)
    bound at its own path. A folder the worker does not see (the host's home, a
    checkout of something else) would fail to ``chdir`` or show other things:
    the app root then, as for an app started from its own folder. The working
    directory is never on the worker's ``sys.path`` (the app's hook puts the
    app root where ``''`` stood), so no file there shadows a module.
    """
    root = os.path.realpath(app_root)
    try:
        cwd = os.path.realpath(host_cwd if host_cwd is not None else os.getcwd())
    except OSError:  # the host's working directory was removed
        return root
    if root == cwd or root.startswith(cwd.rstrip("/") + "/"):
        return cwd
    for b in binds:
        src, _, dst = b.partition(":")
        if dst and os.path.normpath(dst) != os.path.normpath(src):
            continue
        src = os.path.realpath(src)
        if os.path.isdir(src) and (cwd == src or cwd.startswith(src.rstrip("/") + "/")):
            return cwd
    return root


#: An ``OSError``'s text: ``[Errno 30] Read-only file system: '/app/web'``.
_OS_ERROR = re.compile(r"\[Errno (\d+)\] [^'\n]*?: '([^'\n]+)'")


def _mount_point(layer: str, parts: List[str], is_dir: bool) -> None:
    """Make ``layer/<parts>`` (folders, the last one a folder or an empty file as ``is_dir``
    says) without following a symlink: the layer is the cell's to write, this runs in the
    host. An entry of the wrong kind a cell left there is removed (a folder where a file
    must be: a :class:`ConfigError` naming it)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(layer, flags)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            want_dir = is_dir or not last
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode) != want_dir:
                if stat.S_ISDIR(st.st_mode):
                    raise ConfigError("app-layer", f"{os.path.join(layer, *parts[:i + 1])}: a folder where the app "
                                                   "has a file; remove it")
                os.unlink(part, dir_fd=fd)
                st = None
            if not want_dir:
                if st is None:
                    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o644, dir_fd=fd))
                return
            if st is None:
                os.mkdir(part, 0o755, dir_fd=fd)
            nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def _add(lst: List[str], item: str) -> None:
    if item not in lst:
        lst.append(item)


def _api_package_paths(packages: Iterable[str]) -> List[str]:
    """Host folders of API packages (e.g. comfy_api) to expose read-only in workers (no app profile)."""
    out = []
    for name in packages:
        mod = sys.modules.get(name)
        if mod is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            if spec is None or not spec.submodule_search_locations:
                continue
            path = list(spec.submodule_search_locations)[0]
        else:
            f = getattr(mod, "__file__", None)
            if not f:
                continue
            path = os.path.dirname(f) if os.path.basename(f) == "__init__.py" else f
        out.append(os.path.realpath(path))
    return out


def _module_mount(mod_name: str) -> Optional[Tuple[str, str]]:
    """(host path, name inside the sandbox's host folder) of the top-level package of ``mod_name``."""
    top = mod_name.split(".")[0]
    if top == "nodecell":
        return None
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise ConfigError("hooks", f"module {mod_name!r} is not importable here")
    if spec.submodule_search_locations:
        return os.path.realpath(list(spec.submodule_search_locations)[0]), top
    if spec.origin:
        return os.path.realpath(spec.origin), os.path.basename(spec.origin)
    return None


def _import_api_packages(packages: Iterable[str]) -> None:
    """Import the app's own API packages (and their ``latest`` module) in the host, so objects of
    v3 nodes can be rebuilt here; names come from the host's configuration, never a worker."""
    for name in packages:
        for mod in (name, f"{name}.latest"):
            if mod in sys.modules:
                continue
            try:
                if importlib.util.find_spec(mod) is None:
                    break
                importlib.import_module(mod)
            except ImportError:
                break


def _update_class(old: type, fresh: type) -> None:
    """Make an existing proxy class behave like a freshly built one (same class object, new schema)."""
    skip = {"__dict__", "__weakref__"}
    for k in [k for k in vars(old) if k not in skip and k not in vars(fresh)]:
        try:
            delattr(old, k)
        except (AttributeError, TypeError):
            pass
    for k, v in vars(fresh).items():
        if k not in skip:
            setattr(old, k, v)


def _has_manifest(pack_dir: str) -> bool:
    if os.path.isfile(os.path.join(pack_dir, "manifest.yaml")) or os.path.isfile(
            os.path.join(pack_dir, "pyisolate.yaml")):
        return True
    pp = os.path.join(pack_dir, "pyproject.toml")
    if os.path.isfile(pp):
        with open(pp, "rb") as f:
            text = f.read()
        # nodecell's own table, or upstream ComfyUI's isolation opt-in
        return b"[tool.nodecell" in text or b"[tool.comfy.isolation" in text
    return False


async def _maybe_await(x: Any) -> Any:
    if inspect.isawaitable(x):
        return await x
    return x


async def _load_in_host(pack_dir: str, mappings: Dict[str, Any], display: Optional[Dict[str, str]],
                        profile: Optional[_apps.AppProfile]) -> List[str]:
    """Import a pack into the host process, as the app does for packs that are not isolated."""
    if profile is not None:
        nodes = sys.modules.get(profile.nodes_module)
        loader = getattr(nodes, "load_custom_node", None)
        if loader is not None and mappings is getattr(nodes, "NODE_CLASS_MAPPINGS", None):
            before = set(mappings)
            ok = await _maybe_await(loader(pack_dir))
            if not ok:
                raise NodecellError(f"the app could not load pack {pack_dir} (see its log)")
            return [n for n in mappings if n not in before]
    name = os.path.basename(pack_dir.rstrip("/")).replace("-", "_").replace(".", "_")
    init = os.path.join(pack_dir, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[pack_dir])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import pack {pack_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    found: Dict[str, Any] = dict(getattr(module, "NODE_CLASS_MAPPINGS", None) or {})
    shown: Dict[str, str] = dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
    entry = getattr(module, "comfy_entrypoint", None)
    if entry is not None and not found:
        ext = await _maybe_await(entry())
        if hasattr(ext, "on_load"):
            await _maybe_await(ext.on_load())
        for cls in await _maybe_await(ext.get_node_list()):
            schema = cls.define_schema() if hasattr(cls, "define_schema") else cls.DEFINE_SCHEMA()
            node_id = getattr(schema, "node_id", None) or cls.__name__
            found[node_id] = cls
            dn = getattr(schema, "display_name", None)
            if dn:
                shown.setdefault(node_id, dn)
    mappings.update(found)
    if display is not None:
        display.update({k: v for k, v in shown.items() if k in found})
    return list(found)


_default: Optional[StudioHost] = None


def default_host() -> StudioHost:
    """The process-wide :class:`StudioHost` used by :func:`load_custom_node`
    (venvs under ``$NODECELL_VENV_ROOT``; hot reload when ``NODECELL_RELOAD=1``)."""
    global _default
    if _default is None:
        _default = StudioHost(os.environ.get("NODECELL_VENV_ROOT"),
                              reload=os.environ.get("NODECELL_RELOAD", "") in ("1", "true", "yes"))
    return _default


async def load_custom_node(pack_dir: str, node_class_mappings: Dict[str, Any],
                           display_name_mappings: Optional[Dict[str, str]] = None, **overrides: Any) -> List[str]:
    """Load a pack with the process-wide :class:`StudioHost` (see :meth:`StudioHost.load_custom_node`)."""
    return await default_host().load_custom_node(pack_dir, node_class_mappings, display_name_mappings, **overrides)


_ = (copy, Union)
