"""The host's entry point: :class:`ExtensionManager` loads extensions and supervises their cells.

It provisions each pack's venv (``_nodecell.provision``), builds the launcher's
command line, keeps prewarmed cells, and stops everything on request.
"""

from __future__ import annotations

import asyncio
import collections.abc
import json
import logging
import os
import stat
import sys
from typing import Any, Callable, Dict, Generic, List, Optional, TypeVar

from . import _nodecell
from ._find_launcher import find_launcher
from ._rpc import registered_types
from ._threadpools import thread_env
from .cell import _BOOTSTRAP, _SINGLETON_BASE_ID, SANDBOX_HOST, SANDBOX_LIB, _Cell
from .config import ExtensionConfig, ExtensionManagerConfig, SandboxMode
from .errors import ConfigError, LoopEnded, ProvisionError
from .extension import Extension, _on_loop, _result_from
from .shared import ExtensionBase
from .tools import hooks as _tools

__all__ = ["ExtensionManager", "default_interpreter"]

T = TypeVar("T", bound=ExtensionBase)
log = logging.getLogger("nodecell")


def _world_usable(path: str) -> bool:
    """Whether an unprivileged uid can reach and read ``path`` (every parent searchable)."""
    p = os.path.realpath(path)
    try:
        st = os.stat(p)
    except OSError:
        return False
    if not st.st_mode & stat.S_IROTH:
        return False
    d = os.path.dirname(p)
    while True:
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


def default_interpreter() -> str:
    """The interpreter pack venvs are built from when nothing else is asked.

    This host's interpreter when an unprivileged uid can run it, else
    ``/usr/bin/python3`` (pyenv interpreters under ``/root`` are unreachable for
    sandboxed workers, which never run as host uid 0).
    """
    exe = os.path.realpath(sys.executable)
    if os.geteuid() != 0 or _world_usable(exe):
        return sys.executable
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand) and _world_usable(cand):
            return cand
    return sys.executable


def _module_mount(mod_name: str) -> Optional[tuple]:
    """(host path, name inside SANDBOX_HOST) exposing the top-level package of ``mod_name``."""
    top = mod_name.split(".")[0]
    mod = sys.modules.get(top)
    if mod is None or top in ("nodecell", "builtins"):
        return None
    f = getattr(mod, "__file__", None)
    if not f:
        return None
    if os.path.basename(f) == "__init__.py":
        return os.path.dirname(f), top
    return f, os.path.basename(f)


class ExtensionManager(Generic[T]):
    """Loads extensions (node packs) and supervises their sandboxes.

    ``ExtensionManager(MyExtensionBase, ExtensionManagerConfig(venv_root_path=...))``.
    Singletons listed in an extension's ``apis`` are served from this process.
    """

    def __init__(self, extension_type: type = ExtensionBase,
                 config: Optional[Dict[str, Any]] = None) -> None:
        if not (isinstance(extension_type, type) and issubclass(extension_type, ExtensionBase)):
            raise TypeError(f"extension_type must be an ExtensionBase subclass, got {extension_type!r}")
        self.extension_type = extension_type
        if config is None:
            config = ExtensionManagerConfig()
        elif not isinstance(config, ExtensionManagerConfig):
            config = ExtensionManagerConfig(**dict(config))
        self.config = config
        self.extensions: Dict[str, Extension] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._launcher: Optional[str] = None
        self._progress: List[Any] = []
        self._warm: Dict[str, tuple] = {}
        #: Pack name -> its venv as last provisioned (what an app cell started for its siblings
        #: mounts of the host packages their venvs share).
        self._venvs: Dict[str, Dict[str, Any]] = {}
        #: App cells shared by compatible packs (None: off; see :mod:`nodecell.appcell`).
        self._app_cells: Any = None
        #: Called as ``before_launch(config)`` (on an executor thread) before every launch of a
        #: pack's own sandbox, first start and restarts alike: a launch leases a new uid when the
        #: host is root, so what the pack's cell writes may need preparing for it (nodecell.studio
        #: opens the pack's state layer to it).
        self.before_launch: Optional[Callable[[ExtensionConfig], None]] = None
        if config.get("on_progress"):
            self._progress.append(config["on_progress"])
        if config.get("backend") == "ray":
            from .ray._placement import require_ray

            require_ray()  # a clear error now rather than at the first load
        _tools.register_manager(self)  # `nodecell top` / `nodecell debug` find this manager

    async def prewarm(self, config: Any) -> None:
        """Start a pack's sandbox and zygote ahead of time (venv provisioned, heavy
        imports such as torch done), so a later :meth:`load_extension` of the same
        config only forks a worker: tens of milliseconds instead of seconds.
        With ``backend="ray"`` it does nothing: cells are placed when loaded."""
        if not isinstance(config, ExtensionConfig):
            config = ExtensionConfig(config)
        if not config["isolated"] or self.config.get("backend") == "ray":
            return
        self._loop = asyncio.get_running_loop()
        cell, _venv = await self._start_cell_for(config)
        old = self._warm.pop(cell.key, None)
        if old is not None:
            await old[0].stop(grace=0.5)
        self._warm[cell.key] = (cell, _venv)

    def _cell_key(self, cfg: ExtensionConfig, venv: Dict[str, Any]) -> str:
        argv, env = self._launch_argv(cfg, venv)
        return json.dumps([cfg["name"], argv, sorted(env.items())])

    async def _start_cell_for(self, cfg: ExtensionConfig, venv: Optional[Dict[str, Any]] = None) -> tuple:
        loop = asyncio.get_running_loop()
        if venv is None:
            venv = await loop.run_in_executor(None, self._provision, cfg)
        if self.before_launch is not None:
            await loop.run_in_executor(None, self.before_launch, cfg)
        cell = _Cell(cfg["name"])
        argv, env = self._launch_argv(cfg, venv)
        cell.key = self._cell_key(cfg, venv)
        try:
            await cell.start(argv, env)
        except BaseException:
            await cell.stop(grace=0.5)
            raise
        return cell, venv

    async def _take_or_start_cell(self, cfg: ExtensionConfig) -> tuple:
        if self._app_cells is not None:
            venv = await asyncio.get_running_loop().run_in_executor(None, self._provision, cfg)
            view = await self._app_cells.take(self, cfg, venv)
            if view is not None:  # forked from a shared app cell's zygote
                return view, venv
            early = await self._app_cells.adopt_own(self, cfg, venv)
            if early is not None:  # its own cell, started early (nodecell.studio.prestart)
                return early, venv
            return await self._start_cell_for(cfg, venv)
        if self._warm:
            loop = asyncio.get_running_loop()
            venv = await loop.run_in_executor(None, self._provision, cfg)
            key = self._cell_key(cfg, venv)
            warm = self._warm.pop(key, None)
            if warm is not None and not warm[0].dead and warm[0].loop is loop:
                return warm[0], venv
            if warm is not None:
                await _stop_cell(warm[0], grace=0.1)
        return await self._start_cell_for(cfg)

    def on_progress(self, callback: Any) -> None:
        """Register ``callback(event: dict)`` for provisioning progress events (JSON-like dicts:
        ``{"event": "resolving"|"downloading"|"download"|"installing"|"done"|"failed"|"waiting",
        "pack": ..., "elapsed_ms": ..., ...}``), called on the manager's event loop."""
        self._progress.append(callback)

    async def progress_events(self) -> Any:
        """Async iterator over provisioning progress events (see :meth:`on_progress`), for a UI:

            async for ev in manager.progress_events():
                show(ev)
        """
        queue: asyncio.Queue = asyncio.Queue()
        self._progress.append(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            try:
                self._progress.remove(queue.put_nowait)
            except ValueError:
                pass

    def load_extension(self, config: Any) -> Extension:
        """Register an extension; returns its handle (await it to start it now).

        ``config`` is an :class:`ExtensionConfig` (or a dict of its fields).
        """
        if not isinstance(config, ExtensionConfig):
            config = ExtensionConfig(config)
        name = config["name"]
        if name in self.extensions:
            raise ConfigError("name", f"an extension named {name!r} is already loaded in this manager; "
                                      "stop it first or pick another name")
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        if self.config.get("backend") == "ray":
            from .ray.extension import RayExtension

            ext: Extension = RayExtension(self, config)
        else:
            ext = Extension(self, config)
        self.extensions[name] = ext
        return ext

    def stop_all_extensions(self) -> Any:
        """Stop every extension and forget it (its name may be loaded again).

        ``await manager.stop_all_extensions()`` stops gracefully (each worker's
        ``stop()`` hook runs). Called without ``await`` it has stopped everything
        when it returns, as pyisolate's does: from synchronous code gracefully; from
        inside a running event loop by ending the sandboxes at once (no ``stop()``
        hooks), since that loop cannot be driven while the call blocks it.
        """
        exts = list(self.extensions.values())
        warm = [c for c, _v in self._warm.values()]
        self._warm.clear()
        self.extensions.clear()

        async def stop_all() -> None:
            await _tools.manager_stopping(exts)  # the profiler takes the workers' last records
            await asyncio.gather(*(e.stop() for e in exts), *(_stop_cell(c) for c in warm),
                                 return_exceptions=True)

        def stop_now() -> None:
            for e in exts:
                e._stopped = True
                e._abandon_cell()
            for c in warm:
                c.kill_now()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            loop = self._loop
            if loop is not None and not loop.is_closed() and loop.is_running():
                # The manager's loop runs in another thread: stop there and wait (from
                # here, at once, when that loop ends first).
                try:
                    _result_from(loop, stop_all(), "stopping the extensions")
                except LoopEnded:
                    stop_now()
            elif loop is not None and not loop.is_closed():
                loop.run_until_complete(stop_all())
            else:
                asyncio.run(stop_all())
            return _Done()
        return _StopAll(stop_all, stop_now)

    # -- internals --------------------------------------------------------------------------

    def _emit(self, event: Dict[str, Any]) -> None:
        for cb in list(self._progress):
            try:
                if self._loop is not None and self._loop.is_running():
                    self._loop.call_soon_threadsafe(cb, event)
                else:
                    cb(event)
            except Exception:  # noqa: BLE001 - a UI callback must not break provisioning
                log.exception("progress callback failed")

    def _provision(self, cfg: ExtensionConfig) -> Dict[str, Any]:
        """Build (or find) the pack's venv; runs in an executor thread."""
        python = cfg["python"] or self.config.get("python")
        if python is None and default_interpreter() != sys.executable:
            python = default_interpreter()  # this host's interpreter is unreachable for workers
        spec = {
            "name": cfg["normalized_name"],
            "module_path": cfg["module_path"],
            "dependencies": list(cfg["dependencies"]),
            "share_torch": cfg["share_torch"],
            "shared": list(cfg["shared"]),
            "share": list(cfg["share"]),
            "python": python,
            "host_python": sys.executable,
            "extra_index_urls": list(cfg["extra_index_urls"]),
            "venv_root": self.config.get("venv_root_path"),
            "compile_bytecode": True,
        }
        try:
            venv = _nodecell.provision(spec, self._emit)
        except ValueError as e:
            raise ProvisionError(f"pack {cfg['name']!r}: {e}") from None
        self._venvs[cfg["name"]] = venv
        return venv

    def _launch_argv(self, cfg: ExtensionConfig, venv: Dict[str, Any]) -> tuple:
        if self._launcher is None:
            self._launcher = find_launcher()
        mode = cfg["sandbox_mode"]
        pkg_dir = os.path.dirname(os.path.abspath(__file__))
        if mode is SandboxMode.DISABLED:
            return self._unsandboxed_argv(cfg, venv, pkg_dir)
        argv = [self._launcher, "run", "--mode", mode.value, "--status-fd", "{STATUS}", "--keep-fd", "{CTL}"]
        ro: List[str] = []
        seen = set()

        def add_ro(p: str) -> None:
            if p and p not in seen:
                seen.add(p)
                ro.append(p)

        for p in venv.get("ro_paths", []):
            add_ro(p)
        add_ro(venv["path"])
        add_ro(cfg["module_path"])
        add_ro(f"{pkg_dir}:{SANDBOX_LIB}/nodecell")
        for mod in self._host_modules(cfg):
            m = _module_mount(mod)
            if m is not None:
                add_ro(f"{m[0]}:{SANDBOX_HOST}/{m[1]}")
        for p in cfg["sandbox"]["readonly_paths"]:
            add_ro(p)
        for p in ro:
            argv += ["--ro", p]
        for p in cfg["sandbox"]["writable_paths"]:
            argv += ["--rw", p]
        if cfg["sandbox"]["network"]:
            argv.append("--net")
        if cfg["sandbox"].get("gpu") or cfg["gpu"]:
            argv.append("--gpu")
        if cfg["sandbox"].get("tmp_size"):
            argv += ["--tmp-size", str(cfg["sandbox"]["tmp_size"])]
        if cfg["max_memory"]:
            argv += ["--memory", str(cfg["max_memory"])]
        if cfg["max_pids"]:
            argv += ["--pids", str(cfg["max_pids"])]
        if cfg["max_cpu_percent"]:
            argv += ["--cpu", f"{cfg['max_cpu_percent'] / 100:g}"]
        if os.geteuid() == 0 and self.config.get("worker_uid") is not None:
            argv += ["--worker-uid", str(self.config["worker_uid"])]
        env = thread_env(cfg["max_cpu_percent"], cfg["env"])  # thread pools: see _threadpools
        env.update({"NODECELL_PACK": cfg["name"], "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                    "PYISOLATE_CHILD": "1"})  # code written for pyisolate asks this to know it runs in a worker
        if cfg["share_torch"]:
            env["NODECELL_SHARE_TORCH"] = "1"
        env.update(cfg["env"])
        for k, v in env.items():
            argv += ["--env", f"{k}={v}"]
        argv += ["--cwd", cfg["cwd"] or cfg["module_path"], "--", venv["python"], "-s", "-E", "-c", _BOOTSTRAP,
                 "--ctl-fd", "{CTL}", "--preload", ",".join(self._preload(cfg))]
        host_env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "RUST_LOG")}
        return argv, host_env

    def _unsandboxed_argv(self, cfg: ExtensionConfig, venv: Dict[str, Any], pkg_dir: str) -> tuple:
        """SandboxMode.DISABLED: a plain child process, same protocol, no walls.

        The worker's sys.path gets a private folder of symlinks (nodecell and the
        host modules it needs), never the host's whole site-packages.
        """
        import tempfile

        shim = tempfile.mkdtemp(prefix=f"nodecell-{cfg['name']}-")
        os.symlink(pkg_dir, os.path.join(shim, "nodecell"))
        for mod in self._host_modules(cfg):
            m = _module_mount(mod)
            if m is not None and not os.path.exists(os.path.join(shim, m[1])):
                os.symlink(m[0], os.path.join(shim, m[1]))
        for p in cfg["sandbox"]["readonly_paths"]:
            src, _, dst = p.partition(":")
            if dst.startswith(SANDBOX_HOST + "/"):
                link = os.path.join(shim, dst[len(SANDBOX_HOST) + 1:])
                if "/" not in dst[len(SANDBOX_HOST) + 1:] and not os.path.exists(link):
                    os.symlink(src, link)
        boot = _BOOTSTRAP.replace(SANDBOX_LIB, shim).replace(SANDBOX_HOST, shim)
        argv = [venv["python"], "-s", "-E", "-c", boot, "--ctl-fd", "{CTL}",
                "--preload", ",".join(self._preload(cfg))]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME")}
        env.update(thread_env(cfg["max_cpu_percent"], cfg["env"]))
        env.update({"NODECELL_PACK": cfg["name"], "PYTHONUNBUFFERED": "1", "PYISOLATE_CHILD": "1"})
        env.update(cfg["env"])
        return argv, env

    def _preload(self, cfg: ExtensionConfig) -> List[str]:
        if cfg["preload"] is not None:
            return list(cfg["preload"])
        return ["torch"] if cfg["share_torch"] else []

    def _host_modules(self, cfg: ExtensionConfig) -> List[str]:
        mods = [self.extension_type.__module__]
        mods += [a.__module__ for a in cfg["apis"]]
        mods += [t.__module__ for t in registered_types().values()]
        return [m for m in dict.fromkeys(mods) if m not in ("nodecell", "__main__") and not m.startswith("nodecell.")]

    def _init_config(self, ext: Extension) -> Dict[str, Any]:
        cfg = ext.config
        apis = []
        for i, api in enumerate(cfg["apis"]):
            hid = _SINGLETON_BASE_ID + i
            apis.append({"id": hid, "module": api.__module__, "qualname": api.__qualname__})
        et = self.extension_type
        if et.__module__ == "__main__":
            raise TypeError(
                f"{et.__qualname__} is defined in __main__; define it in an importable module so the worker can import it")
        return {
            "name": cfg["name"],
            "module_path": cfg["module_path"],
            "extension_type": {"module": et.__module__, "qualname": et.__qualname__},
            "apis": apis,
            "records": [{"name": n, "module": t.__module__, "qualname": t.__qualname__}
                        for n, t in registered_types().items() if t.__module__ != "__main__"],
            "log_level": logging.getLogger(f"nodecell.{cfg['name']}").getEffectiveLevel(),
        }


async def _stop_cell(cell: _Cell, grace: float = 2.0) -> None:
    """Stop a cell from whatever loop is running: on its own loop (here or in its thread),
    or synchronously when that loop is gone."""
    if cell.loop is asyncio.get_running_loop():
        await cell.stop(grace=grace)
    elif cell.loop.is_running():
        try:
            await _on_loop(cell.loop, cell.stop(grace=grace), "stopping a sandbox")
        except LoopEnded:  # that loop ended first
            cell.kill_now(grace)
    else:
        cell.kill_now(grace)


class _StopAll(collections.abc.Coroutine):
    """What ``stop_all_extensions()`` returns inside a running loop: awaiting it (or making a
    task of it) stops gracefully; dropping it unawaited stops everything at once, before
    the statement that called it ends (CPython frees it right there)."""

    def __init__(self, graceful: Any, now: Any) -> None:
        self._graceful = graceful
        self._now: Any = now
        self._coro: Any = None

    def _inner(self) -> Any:
        if self._coro is None:
            self._now = None
            self._coro = self._graceful()
        return self._coro

    def send(self, value: Any) -> Any:
        return self._inner().send(value)

    def throw(self, *args: Any) -> Any:
        return self._inner().throw(*args)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()
        else:
            self._stop_now()

    def __await__(self) -> Any:
        return self._inner().__await__()

    def _stop_now(self) -> None:
        now, self._now = self._now, None
        if now is not None:
            now()

    def __del__(self) -> None:
        try:
            self._stop_now()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            log.exception("stopping the extensions failed")


class _Done(collections.abc.Coroutine):
    """An already-finished coroutine (what sync-called ``stop_all_extensions`` returns): it
    can be awaited, or handed to ``run_coroutine_threadsafe`` / ``create_task``."""

    def send(self, value: Any) -> Any:
        raise StopIteration(None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        raise typ if val is None else val

    def __await__(self) -> Any:
        if False:  # pragma: no cover
            yield None
        return None
