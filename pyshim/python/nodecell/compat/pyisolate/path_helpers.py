"""Host path context for children (``pyisolate.path_helpers``).

Same results as pyisolate's functions. nodecell itself never hands a worker the
host's whole ``sys.path``: it mounts and prepends only an adapter's
``preferred_root`` and ``additional_paths`` (see :class:`pyisolate.host.Extension`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

__all__ = ["serialize_host_snapshot", "build_child_sys_path"]

#: Environment variables a snapshot records by default.
DEFAULT_ENV_KEYS = ("VIRTUAL_ENV", "PYTHONPATH", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def serialize_host_snapshot(output_path: Optional[Union[str, "os.PathLike[str]"]] = None,
                            extra_env_keys: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """This interpreter's context: ``sys_path``, ``sys_executable``, ``sys_prefix`` and
    ``environment`` (the variables in :data:`DEFAULT_ENV_KEYS` plus ``extra_env_keys``
    that are set). With ``output_path`` it is also written there as JSON and the
    result gets ``snapshot_path``."""
    keys = list(DEFAULT_ENV_KEYS) + list(extra_env_keys or ())
    snapshot: Dict[str, Any] = {
        "sys_path": list(sys.path),
        "sys_executable": sys.executable,
        "sys_prefix": sys.prefix,
        "environment": {k: os.environ[k] for k in keys if k in os.environ},
    }
    if output_path is not None:
        path = Path(output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(snapshot, indent=2), encoding="utf-8")
        snapshot["snapshot_path"] = str(path)
    return snapshot


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def build_child_sys_path(host_paths: Sequence[str], extra_paths: Sequence[str],
                         preferred_root: Optional[str] = None,
                         filtered_subdirs: Optional[Sequence[str]] = None) -> List[str]:
    """A child's ``sys.path``: ``preferred_root`` first (when given), then ``host_paths`` in
    order without it and without the ``filtered_subdirs`` directly under it, then
    ``extra_paths``; empty entries and duplicates (after normalization) dropped."""
    hosts = list(host_paths)
    if preferred_root:
        root = _key(preferred_root)
        hidden = {os.path.join(root, d) for d in (filtered_subdirs or ())}
        hosts = [preferred_root] + [p for p in hosts if _key(p) != root and _key(p) not in hidden]
    out: List[str] = []
    seen = set()
    for p in list(hosts) + list(extra_paths):
        if not p:
            continue
        k = _key(p)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out
