"""A pyisolate ``ExtensionConfig`` (plus the adapter's answers) as a nodecell
:class:`nodecell.ExtensionConfig`, and what the worker needs to set up its pyisolate side.

Every field is honoured or refused with a :class:`nodecell.ConfigError` naming it:

* ``dependencies``: validated as pyisolate does; a requirement on pyisolate itself
  (``pyisolate...``, or a path holding pyisolate's project, with or without ``-e``)
  is what the alias already provides in the worker, so it is not installed; other
  editable (``-e``) requirements are refused.
* ``cuda_wheels``: its index URLs become extra indexes, ``package_map`` renames the
  dependencies it names.
* ``sealed_host_ro_paths`` (``sealed_worker`` only): mounted read-only, first on ``sys.path``.
* ``conda_*``: refused (nodecell builds venvs with uv).
* the adapter's ``preferred_root`` / ``additional_paths`` (``host-coupled`` only) and
  ``get_sandbox_system_paths()``: mounted read-only; the first two also go first on
  the worker's ``sys.path``. pyisolate's forbidden system paths are refused.
* nodecell's own fields (``timeout``, ``max_memory``...) pass through; anything else
  is refused as an unknown key.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .... import _nodecell
from .... import config as nc_config
from ....errors import ConfigError
from ....manager import _module_mount
from ....shared import ProxiedSingleton as NodecellSingleton
from ....cell import SANDBOX_HOST

__all__ = ["convert", "PYISOLATE_KEYS", "FORBIDDEN_SYSTEM_PATHS"]

#: pyisolate 0.10's ExtensionConfig fields.
PYISOLATE_KEYS = frozenset({
    "name", "module_path", "module", "isolated", "dependencies", "apis", "share_torch", "share_cuda_ipc",
    "sandbox", "sandbox_mode", "env", "package_manager", "execution_model", "sealed_host_ro_paths",
    "conda_channels", "conda_dependencies", "conda_platforms", "cuda_wheels", "extra_index_urls"})
#: nodecell's own fields a pyisolate config may carry as well.
NODECELL_KEYS = frozenset({"timeout", "max_memory", "max_cpu_percent", "max_pids", "gpu", "workers", "python",
                           "preload", "reload", "version", "shared", "share", "cwd", "placement"})
#: Host paths an adapter may never have mounted (pyisolate's list).
FORBIDDEN_SYSTEM_PATHS = frozenset({"/", "/etc", "/root", "/home", "/var", "/run", "/proc", "/sys"})

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _is_pyisolate_project(path: str) -> bool:
    """Whether ``path`` holds pyisolate's own source (its pyproject names it)."""
    pp = os.path.join(path, "pyproject.toml")
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # pragma: no cover
        tomllib = None  # type: ignore[assignment]
    try:
        with open(pp, "rb") as f:
            data = tomllib.load(f) if tomllib is not None else {}
    except (OSError, ValueError):
        return os.path.isfile(os.path.join(path, "pyisolate", "__init__.py"))
    return _nodecell.normalize_name(str(data.get("project", {}).get("name", ""))) == "pyisolate"


def _dependencies(cfg: Mapping[str, Any]) -> List[str]:
    from .host import validate_dependency

    deps = cfg.get("dependencies") or []
    if isinstance(deps, (str, bytes)) or not isinstance(deps, (list, tuple)):
        raise ConfigError("dependencies", f"expected a list of requirements, got {deps!r}")
    renames = {}
    cw = cfg.get("cuda_wheels")
    if cw:
        renames = {_nodecell.normalize_name(k): v for k, v in (cw.get("package_map") or {}).items()}
    out = []
    for i, dep in enumerate(deps):
        field = f"dependencies[{i}]"
        if not isinstance(dep, str):
            raise ConfigError(field, f"expected a requirement string, got {dep!r}")
        try:
            validate_dependency(dep)
        except ValueError as e:
            raise ConfigError(field, str(e)) from None
        d = dep.strip()
        if not d or d == "-e":
            continue
        editable = d.startswith("-e ")
        target = d[3:].strip() if editable else d
        if os.path.isdir(os.path.expanduser(target)) or target.startswith(("/", "./", "../", "file:")):
            path = os.path.abspath(os.path.expanduser(target[5:] if target.startswith("file:") else target))
            if _is_pyisolate_project(path):
                continue  # the worker imports nodecell's pyisolate through the alias
            if editable:
                raise ConfigError(field, f"editable installs (-e) are not supported by nodecell's venv cache: "
                                         f"{target!r}; give the path (or a 'name @ file://...' requirement)")
            out.append(target)
            continue
        if editable:
            raise ConfigError(field, f"editable installs (-e) are not supported: {d!r}")
        m = _REQ_NAME.match(d)
        if m and _nodecell.normalize_name(m.group(1)) == "pyisolate":
            continue  # provided by the alias
        if m and _nodecell.normalize_name(m.group(1)) in renames:
            d = renames[_nodecell.normalize_name(m.group(1))] + d[m.end(1):]
        out.append(d)
    return out


def _index_urls(cfg: Mapping[str, Any]) -> List[str]:
    urls = list(cfg.get("extra_index_urls") or [])
    cw = cfg.get("cuda_wheels")
    if cw is not None:
        if not isinstance(cw, Mapping):
            raise ConfigError("cuda_wheels", f"expected a mapping (CUDAWheelConfig), got {cw!r}")
        for k in cw:
            if k not in ("index_url", "index_urls", "packages", "package_map"):
                raise ConfigError(f"cuda_wheels.{k}", "unknown key; expected index_url, index_urls, packages, "
                                                       "package_map")
        found = ([cw["index_url"]] if cw.get("index_url") else []) + list(cw.get("index_urls") or [])
        if not found:
            raise ConfigError("cuda_wheels.index_url", "a custom wheel index (index_url or index_urls) is required")
        pkgs = cw.get("packages")
        if not isinstance(pkgs, list) or not pkgs or not all(isinstance(p, str) and p for p in pkgs):
            raise ConfigError("cuda_wheels.packages", f"expected a non-empty list of package names, got {pkgs!r}")
        pm = cw.get("package_map") or {}
        if not isinstance(pm, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pm.items()):
            raise ConfigError("cuda_wheels.package_map", f"expected a mapping of names to names, got {pm!r}")
        urls += [u for u in found if u not in urls]
    return urls


def _mountable(path: str, field: str) -> Optional[str]:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ConfigError(field, f"expected an absolute path, got {path!r}")
    norm = os.path.normpath(path)
    for bad in FORBIDDEN_SYSTEM_PATHS:
        if norm == bad or (bad != "/" and bad.startswith(norm + "/")):
            raise ConfigError(field, f"{path!r} would show the sandbox {bad!r}: refused")
    return norm if os.path.exists(norm) else None


def convert(cfg: Mapping[str, Any], module_path: str, token: str, *, adapter: Any, snapshot: Dict[str, Any],
            bridge: type) -> Tuple[nc_config.ExtensionConfig, Dict[str, Any]]:
    """``(nodecell config, worker set-up)`` for a pyisolate config (see the module doc)."""
    for k in cfg:
        if k not in PYISOLATE_KEYS and k not in NODECELL_KEYS:
            raise ConfigError(str(k), "unknown ExtensionConfig key (pyisolate 0.10's fields and nodecell's "
                                      f"{', '.join(sorted(NODECELL_KEYS))} are accepted)")
    for k in ("conda_channels", "conda_dependencies", "conda_platforms"):
        if cfg.get(k):
            raise ConfigError(k, "conda environments are not supported: nodecell builds each pack's venv with uv")
    execution_model = cfg.get("execution_model") or "host-coupled"
    sealed = execution_model == "sealed_worker"
    from .rpc_protocol import ProxiedSingleton

    compat_apis: List[type] = []
    nodecell_apis: List[type] = [bridge]
    for i, api in enumerate(cfg.get("apis") or []):
        if isinstance(api, type) and issubclass(api, ProxiedSingleton):
            compat_apis.append(api)
        elif isinstance(api, type) and issubclass(api, NodecellSingleton):
            nodecell_apis.append(api)  # nodecell's own services work as they do in nodecell
        else:
            raise ConfigError(f"apis[{i}]", f"expected a ProxiedSingleton subclass, got {api!r}")

    sandbox = cfg.get("sandbox") or {}
    if isinstance(sandbox, bool):
        sandbox = {}
    if not isinstance(sandbox, Mapping):
        raise ConfigError("sandbox", f"expected a mapping, got {sandbox!r}")
    sandbox = dict(sandbox)
    ro = sandbox.get("readonly_paths") or []
    ro = [f"{s}:{d}" for s, d in ro.items()] if isinstance(ro, Mapping) else list(ro)

    sys_path: List[str] = []
    if sealed:
        for i, p in enumerate(cfg.get("sealed_host_ro_paths") or []):
            m = _mountable(p, f"sealed_host_ro_paths[{i}]")
            if m:
                ro.append(m)
                sys_path.append(m)
    elif cfg.get("sealed_host_ro_paths"):
        raise ConfigError("sealed_host_ro_paths", "requires execution_model='sealed_worker'")
    if adapter is not None and not sealed:
        roots = ([snapshot["preferred_root"]] if snapshot.get("preferred_root") else []) + \
            list(snapshot.get("additional_paths") or [])
        for i, p in enumerate(roots):
            m = _mountable(os.path.abspath(p), f"adapter.get_path_config()[{i}]")
            if m:
                ro.append(m)
                sys_path.append(m)
    if adapter is not None:
        get = getattr(adapter, "get_sandbox_system_paths", None)
        for i, p in enumerate((get() if callable(get) else None) or []):
            m = _mountable(p, f"adapter.get_sandbox_system_paths()[{i}]")
            if m:
                ro.append(m)
    # The modules the worker imports from the host: services, the adapter.
    mods = [a.__module__ for a in compat_apis]
    if adapter is not None and type(adapter).__module__ != "__main__":
        mods.append(type(adapter).__module__)
    for mod in dict.fromkeys(mods):
        mm = _module_mount(mod)
        if mm is not None:
            ro.append(f"{mm[0]}:{SANDBOX_HOST}/{mm[1]}")
    sandbox["readonly_paths"] = list(dict.fromkeys(ro))

    share_torch = bool(cfg.get("share_torch", False))
    env = dict(cfg.get("env") or {})
    env.update({
        "PYISOLATE_CHILD": "1",
        "PYISOLATE_EXTENSION": str(cfg.get("name")),
        "PYISOLATE_MODULE_PATH": module_path,
        "PYISOLATE_ENABLE_CUDA_IPC": "1" if cfg.get("share_cuda_ipc") else "0",
        "NODECELL_PYISOLATE_ALIAS": "1",
        "NODECELL_PYISOLATE_TOKEN": token,
    })
    if not share_torch:
        env["PYISOLATE_IMPORT_TORCH"] = "0"
    data: Dict[str, Any] = {
        "name": cfg.get("name"),
        "module_path": module_path,
        "isolated": cfg.get("isolated", True),
        "dependencies": _dependencies(cfg),
        "apis": nodecell_apis,
        "share_torch": share_torch,
        "share_cuda_ipc": bool(cfg.get("share_cuda_ipc", False)),
        "sandbox": sandbox,
        "sandbox_mode": cfg.get("sandbox_mode", nc_config.SandboxMode.REQUIRED),
        "env": env,
        "extra_index_urls": _index_urls(cfg),
        "package_manager": cfg.get("package_manager") or "uv",
        "execution_model": execution_model,
    }
    # pyisolate shows its children the GPU device nodes (allow_gpu=True): so does this layer
    # where there are any, unless the config says gpu=False (nodecell's own default is off).
    data["gpu"] = bool(glob.glob("/dev/nvidia[0-9]*"))
    for k in NODECELL_KEYS:
        if k in cfg:
            data[k] = cfg[k]
    nc_cfg = nc_config.ExtensionConfig(data)
    adapter_ref = None
    if adapter is not None and type(adapter).__module__ != "__main__":
        adapter_ref = f"{type(adapter).__module__}:{type(adapter).__qualname__}"
    worker = {
        "sys_path": sys_path,
        "apis": [f"{a.__module__}:{a.__qualname__}" for a in compat_apis],
        "adapter": adapter_ref,
        "execution_model": execution_model,
        # What pyisolate's adapters read; never the host's sys.path or environment.
        "snapshot": {k: snapshot.get(k) for k in ("adapter_name", "preferred_root", "additional_paths",
                                                  "filtered_subdirs", "context_data")},
    }
    return nc_cfg, worker
