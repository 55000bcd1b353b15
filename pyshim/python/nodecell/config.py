"""Configuration objects: :class:`ExtensionConfig`, :class:`ExtensionManagerConfig`, :class:`SandboxMode`.

Both configs are ``dict`` subclasses, like pyisolate's TypedDicts, so
``config["name"]`` and ``ExtensionConfig(name=..., ...)`` both work and code
written for pyisolate keeps working. Unlike pyisolate they are validated when
built: a wrong value raises :class:`nodecell.ConfigError` naming the field.
"""

from __future__ import annotations

import enum
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from .errors import ConfigError

__all__ = ["ExtensionConfig", "ExtensionManagerConfig", "SandboxMode", "SandboxConfig", "parse_size", "normalize_name"]


class SandboxMode(enum.Enum):
    """How strictly the sandbox's walls are enforced.

    * ``REQUIRED`` (default): refuse to start when any wall of the policy is
      missing on this kernel (raises :class:`nodecell.SandboxUnavailable`).
    * ``BEST_EFFORT``: start anyway, and report which walls are missing
      (logged, and in ``Extension.walls``).
    * ``DISABLED``: no sandbox at all: a plain child process with its own venv.
      Only for code you trust.
    """

    REQUIRED = "required"
    BEST_EFFORT = "best-effort"
    DISABLED = "disabled"

    @classmethod
    def parse(cls, value: Any, field: str = "sandbox_mode") -> "SandboxMode":
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            v = value.strip().lower().replace("_", "-")
            for m in cls:
                if m.value == v:
                    return m
        raise ConfigError(field, f"expected one of 'required', 'best-effort', 'disabled', got {value!r}")


def parse_size(value: Any, field: str) -> int:
    """Parse a byte size: an int, or a string such as ``"8GB"``, ``"512MiB"``, ``"1.5G"``, ``"4096"``.

    The one size table of nodecell (Rust's ``nodecell-units``, also behind manifests and the
    CLI): ``KB``/``MB``/``GB``/``TB`` are powers of 1000; ``K``/``M``/``G``/``T`` and
    ``KiB``/``MiB``/``GiB``/``TiB`` powers of 1024. Errors name ``field``.
    """
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a size such as '8GB' or a number of bytes, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(field, f"must be positive, got {value}")
        return value
    if isinstance(value, str):
        from . import _nodecell

        try:
            return _nodecell.parse_size(value)
        except ValueError as e:
            raise ConfigError(field, str(e)) from None
    raise ConfigError(field, f"expected a size such as '8GB', '512MiB', '2G' or a number of bytes, got {value!r}")


def _bool(cfg: Mapping, key: str, default: bool, prefix: str = "") -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(prefix + key, f"expected true or false, got {v!r}")
    return v


def _str_list(v: Any, field: str) -> List[str]:
    if v is None:
        return []
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise ConfigError(field, f"expected a list of strings, got {v!r}")
    out = []
    for i, item in enumerate(v):
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{field}[{i}]", f"expected a non-empty string, got {item!r}")
        out.append(item)
    return out


def _abs_paths(v: Any, field: str, base: Optional[str]) -> List[str]:
    """Normalize ``SRC`` or ``SRC:DST`` entries: SRC relative to ``base``, DST absolute."""
    out = []
    for i, p in enumerate(_str_list(v, field)):
        f = f"{field}[{i}]"
        if "\0" in p:
            raise ConfigError(f, "contains a NUL byte")
        src, dst = p, None
        if ":" in p:
            src, dst = p.split(":", 1)
            if not dst.startswith("/"):
                raise ConfigError(f, f"destination after ':' must be an absolute path, got {dst!r}")
        if not os.path.isabs(src):
            if base is None:
                raise ConfigError(f, f"expected an absolute path, got {src!r}")
            src = os.path.join(base, src)
        src = os.path.normpath(src)
        out.append(src if dst is None else f"{src}:{os.path.normpath(dst)}")
    return out


class SandboxConfig(dict):
    """The ``sandbox`` section: ``network`` (bool), ``writable_paths``, ``readonly_paths``
    (lists of absolute paths, each optionally ``SRC:DST``; ``readonly_paths`` may also be a
    ``{src: dst}`` dict as in pyisolate), ``gpu`` (bool), ``tmp_size`` (size)."""

    KEYS = ("network", "writable_paths", "readonly_paths", "gpu", "tmp_size")

    def __init__(self, data: Optional[Mapping] = None, *, base: Optional[str] = None, prefix: str = "sandbox.") -> None:
        data = dict(data or {})
        for k in data:
            if k not in self.KEYS:
                raise ConfigError(prefix + str(k), f"unknown key; expected one of {', '.join(self.KEYS)}")
        ro = data.get("readonly_paths", [])
        if isinstance(ro, Mapping):
            ro = [f"{s}:{d}" for s, d in ro.items()]
        super().__init__(
            network=_bool(data, "network", False, prefix),
            writable_paths=_abs_paths(data.get("writable_paths", []), prefix + "writable_paths", base),
            readonly_paths=_abs_paths(ro, prefix + "readonly_paths", base),
            gpu=_bool(data, "gpu", False, prefix),
        )
        if data.get("tmp_size") is not None:
            self["tmp_size"] = parse_size(data["tmp_size"], prefix + "tmp_size")


class ExtensionManagerConfig(dict):
    """Settings of an :class:`nodecell.ExtensionManager`.

    * ``venv_root_path``: where pack venvs are cached (content-addressed; shared
      by packs with the same dependencies). Must be readable by the unprivileged
      uid workers run as.
    * ``python``: interpreter venvs are built from (default: this one if an
      unprivileged uid can run it, else ``/usr/bin/python3``).
    * ``worker_uid``: host uid workers run as when the host is root (default 65534).
    * ``backend``: ``"local"`` (default) or ``"ray"``: cells placed on the Ray cluster this
      process is connected to (see :mod:`nodecell.ray`); ``ray``: that backend's options.
    """

    def __init__(self, venv_root_path: Optional[Union[str, os.PathLike]] = None, **kw: Any) -> None:
        allowed = {"python", "worker_uid", "on_progress", "backend", "ray"}
        for k in kw:
            if k not in allowed:
                raise ConfigError(k, f"unknown ExtensionManagerConfig key; expected venv_root_path or one of {sorted(allowed)}")
        root = None
        if venv_root_path is not None:
            root = os.path.abspath(os.fspath(venv_root_path))
        if kw.get("backend", "local") not in ("local", "ray"):
            raise ConfigError("backend", f"expected 'local' or 'ray', got {kw['backend']!r}")
        if kw.get("ray") is not None:
            from .ray._placement import parse_ray_options

            kw["ray"] = parse_ray_options(kw["ray"])
        super().__init__(venv_root_path=root, **kw)


#: Characters a pack name may not carry into file names, cgroups or shells (pyisolate's set).
_UNSAFE_NAME_CHARS = frozenset(" \t\n\r|&$`()<>\"'\\!{}[]*?~#%=,")


def normalize_name(name: Any, field: str = "name") -> str:
    """The file-system and shell safe form of a pack name, as pyisolate 0.10 makes it.

    Path separators and the characters in ``_UNSAFE_NAME_CHARS`` become ``_``,
    leading dots and ``..`` are removed, runs of ``_`` collapse and the result is
    stripped of ``_``; other Unicode letters stay (``"my pack"`` -> ``"my_pack"``,
    ``"你好 世界"`` -> ``"你好_世界"``). Raises :class:`ConfigError` (a ``ValueError``)
    naming ``field`` when nothing is left or ``name`` is not a non-empty string.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(field, f"Extension name cannot be empty (expected a non-empty string, got {name!r})")
    if "\0" in name or len(name) > 200:
        raise ConfigError(field, f"expected a pack name without NUL, at most 200 characters, got {name!r}")
    out = name.replace("/", "_").replace("\\", "_").lstrip(".").replace("..", "_")
    out = "".join("_" if c in _UNSAFE_NAME_CHARS else c for c in out)
    out = re.sub(r"_+", "_", out).strip("_")
    if not out:
        raise ConfigError(field, f"Extension name contains only invalid characters: {name!r}")
    return out


#: ``execution_model`` values (pyisolate's names) and ``package_manager`` values nodecell honours.
EXECUTION_MODELS = ("host-coupled", "sealed_worker")
PACKAGE_MANAGERS = ("uv",)


class ExtensionConfig(dict):
    """Configuration of one extension (node pack). pyisolate 0.10's fields, plus nodecell's.

    pyisolate fields: ``name``, ``module_path``, ``isolated`` (default True),
    ``dependencies``, ``apis`` (ProxiedSingleton classes the pack may use),
    ``share_torch``, ``share_cuda_ipc``, ``sandbox`` (see :class:`SandboxConfig`),
    ``sandbox_mode`` (:class:`SandboxMode`), ``env`` (extra environment for the worker;
    its thread pools default to one CPU less than the host's, or ``max_cpu_percent``:
    ``OMP_NUM_THREADS`` here sets them, see :mod:`nodecell._threadpools`),
    ``extra_index_urls``, ``package_manager`` (``"uv"``, the only one nodecell builds
    venvs with), ``execution_model`` (``"host-coupled"``, the default, or
    ``"sealed_worker"``, which requires ``share_torch=False``; in both a nodecell
    worker sees its own venv, never the host's site-packages). ``name`` may hold any
    characters; ``normalized_name`` (derived, see :func:`normalize_name`) is the form
    used where a file-system safe name is needed. pyisolate fields nodecell cannot
    honour (``conda_*``, ``cuda_wheels``, ``sealed_host_ro_paths``) raise a
    :class:`ConfigError` saying why (:mod:`nodecell.compat.pyisolate` maps the last two).

    nodecell fields: ``timeout`` (seconds per call; the worker is killed and
    restarted when a call runs past it; None = no limit), ``max_memory`` (e.g.
    ``"8GB"``), ``max_cpu_percent`` (of one CPU, e.g. 80, or 200 for two CPUs),
    ``max_pids``, ``gpu``, ``workers`` (parallel workers, default 1),
    ``python`` (interpreter for the venv), ``preload`` (modules the warm zygote
    imports once, default ``["torch"]`` when ``share_torch``), ``reload``
    (restart on source changes), ``version``, ``shared`` (requirements taken
    from the host's environment when its copy satisfies them, else installed),
    ``share`` (names of host distributions shared with their dependency
    closure and never installed: a host app's own requirements), ``cwd`` (the
    worker's working directory; default the pack folder), ``placement`` (where
    a Ray backend runs the cell, see :mod:`nodecell.ray`), ``frozen_outputs``
    (the worker's CPU tensor outputs are immutable, write-sealed copies instead
    of pooled arenas it could still write until the host releases them; slower:
    see SECURITY.md).
    """

    _DEFAULTS: Dict[str, Any] = {
        "isolated": True,
        "dependencies": [],
        "apis": [],
        "share_torch": False,
        "share_cuda_ipc": False,
        "frozen_outputs": False,
        "env": {},
        "extra_index_urls": [],
        "timeout": None,
        "max_memory": None,
        "max_cpu_percent": None,
        "max_pids": None,
        "gpu": False,
        "workers": 1,
        "python": None,
        "preload": None,
        "reload": False,
        "version": None,
        "shared": [],
        "share": [],
        "cwd": None,
        "placement": None,
    }
    _KNOWN = set(_DEFAULTS) | {"name", "normalized_name", "module_path", "module", "sandbox", "sandbox_mode",
                               "package_manager", "execution_model"}
    #: pyisolate 0.10 fields nodecell cannot honour, and why (a clear error instead of "unknown key").
    _UNSUPPORTED = {
        "conda_channels": "conda/pixi environments are not supported: nodecell builds venvs with uv",
        "conda_dependencies": "conda/pixi environments are not supported: nodecell builds venvs with uv",
        "conda_platforms": "conda/pixi environments are not supported: nodecell builds venvs with uv",
        "cuda_wheels": "not supported here: list the index in extra_index_urls (nodecell.compat.pyisolate "
                       "maps pyisolate's cuda_wheels onto it)",
        "sealed_host_ro_paths": "not supported here: mount host folders with sandbox.readonly_paths "
                                "(nodecell.compat.pyisolate maps it onto those and sys.path)",
    }

    def __init__(self, data: Optional[Mapping] = None, **kw: Any) -> None:
        merged: Dict[str, Any] = dict(data or {})
        merged.update(kw)
        for k in merged:
            if k in self._UNSUPPORTED:
                raise ConfigError(str(k), self._UNSUPPORTED[k])
            if k not in self._KNOWN:
                raise ConfigError(str(k), f"unknown ExtensionConfig key; expected one of {', '.join(sorted(self._KNOWN))}")
        name = merged.get("name")
        out: Dict[str, Any] = {"name": name, "normalized_name": normalize_name(name)}
        mp = merged.get("module_path", merged.get("module"))
        if mp is None:
            raise ConfigError("module_path", "required: the folder holding the pack's __init__.py")
        mp = os.path.abspath(os.fspath(mp))
        out["module_path"] = mp
        for k, d in self._DEFAULTS.items():
            out[k] = merged.get(k, d)
        for k in ("isolated", "share_torch", "share_cuda_ipc", "frozen_outputs", "gpu", "reload"):
            if not isinstance(out[k], bool):
                raise ConfigError(k, f"expected true or false, got {out[k]!r}")
        out["dependencies"] = _str_list(out["dependencies"], "dependencies")
        out["shared"] = _str_list(out["shared"], "shared")
        out["share"] = _str_list(out["share"], "share")
        if out["cwd"] is not None:
            cwd = os.fspath(out["cwd"])
            if not isinstance(cwd, str) or not os.path.isabs(cwd) or "\0" in cwd:
                raise ConfigError("cwd", f"expected an absolute path, got {out['cwd']!r}")
            out["cwd"] = os.path.normpath(cwd)
        out["extra_index_urls"] = _str_list(out["extra_index_urls"], "extra_index_urls")
        apis = list(out["apis"] or [])
        from .shared import ProxiedSingleton  # local: avoid an import cycle

        for i, a in enumerate(apis):
            if not (isinstance(a, type) and issubclass(a, ProxiedSingleton)):
                raise ConfigError(f"apis[{i}]", f"expected a ProxiedSingleton subclass, got {a!r}")
        out["apis"] = apis
        env = out["env"] or {}
        if not isinstance(env, Mapping):
            raise ConfigError("env", f"expected a mapping of str to str, got {env!r}")
        for k, v in env.items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise ConfigError(f"env[{k!r}]", "expected a variable name without '=' or NUL")
            if not isinstance(v, str) or "\0" in v:
                raise ConfigError(f"env[{k!r}]", f"expected a string value, got {v!r}")
        out["env"] = dict(env)
        t = out["timeout"]
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0):
                raise ConfigError("timeout", f"expected a positive number of seconds or None, got {t!r}")
            out["timeout"] = float(t)
        if out["max_memory"] is not None:
            out["max_memory"] = parse_size(out["max_memory"], "max_memory")
        for k in ("max_cpu_percent", "max_pids", "workers"):
            v = out[k]
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(k, f"expected a positive integer, got {v!r}")
        if out["workers"] is None:
            out["workers"] = 1
        if out["python"] is not None:
            out["python"] = os.fspath(out["python"])
        if out["preload"] is not None:
            out["preload"] = _str_list(out["preload"], "preload")
        out["sandbox"] = SandboxConfig(merged.get("sandbox"), base=mp)
        if out["gpu"]:
            out["sandbox"]["gpu"] = True
        out["sandbox_mode"] = SandboxMode.parse(merged.get("sandbox_mode", SandboxMode.REQUIRED))
        from .ray._placement import parse_placement  # local: the Ray backend's own rules

        out["placement"] = parse_placement(out["placement"])
        if out["share_cuda_ipc"] and not out["share_torch"]:
            raise ConfigError("share_cuda_ipc", "requires share_torch=True")
        pm = merged.get("package_manager", "uv")
        if pm not in PACKAGE_MANAGERS:
            raise ConfigError("package_manager", f"nodecell builds every pack's venv with uv; {pm!r} "
                              "(conda/pixi environments) is not supported")
        out["package_manager"] = pm
        em = merged.get("execution_model", "host-coupled")
        if em not in EXECUTION_MODELS:
            raise ConfigError("execution_model", f"expected 'host-coupled' or 'sealed_worker', got {em!r}")
        if em == "sealed_worker" and out["share_torch"]:
            raise ConfigError("execution_model", "'sealed_worker' shares nothing with the host: it requires "
                              "share_torch=False")
        out["execution_model"] = em
        super().__init__(out)

    # -- construction from a pack's files -------------------------------------------------

    @classmethod
    def from_manifest(cls, path: Union[str, os.PathLike], **overrides: Any) -> "ExtensionConfig":
        """Build a config from a pack's ``manifest.yaml`` (or ``pyisolate.yaml`` /
        ``[tool.nodecell]`` in ``pyproject.toml``). ``path`` is the pack folder or the
        manifest file; keyword arguments override what the manifest says.

        Manifest errors raise :class:`nodecell.ConfigError` naming the file, field and line.
        """
        from . import _nodecell

        p = os.path.abspath(os.fspath(path))
        pack_dir = p if os.path.isdir(p) else os.path.dirname(p)
        try:
            m = _nodecell.read_manifest(p)
        except ValueError as e:
            raise ConfigError(str(p), str(e)) from None
        sb = dict(m.get("sandbox") or {})
        data: Dict[str, Any] = {
            "name": m["name"],
            "module_path": pack_dir,
            "dependencies": list(m.get("dependencies") or []),
            "isolated": bool(m.get("isolated", True)),
            "share_torch": bool(m.get("share_torch", False)),
            "shared": [str(r) for r in m.get("shared") or []],
            "version": m.get("version"),
        }
        if m.get("python"):
            data["python"] = m["python"]
        index = m.get("index") or {}
        extra = list(index.get("extra_index_urls") or m.get("extra_index_urls") or [])
        if index.get("index_url"):
            extra.insert(0, index["index_url"])
        if extra:
            data["extra_index_urls"] = extra
        sandbox: Dict[str, Any] = {}
        for k in ("network", "writable_paths", "readonly_paths", "gpu"):
            if sb.get(k) is not None:
                sandbox[k] = sb[k]
        data["sandbox"] = sandbox
        for src, dst in (("max_memory", "max_memory"), ("max_cpu_percent", "max_cpu_percent"),
                         ("max_pids", "max_pids"), ("timeout", "timeout")):
            if sb.get(src) is not None:
                data[dst] = sb[src]
        if sb.get("gpu"):
            data["gpu"] = True
        data.update(overrides)
        return cls(data)
