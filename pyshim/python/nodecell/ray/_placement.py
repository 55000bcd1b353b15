"""``ExtensionConfig(placement=...)``: where on a Ray cluster a cell runs.

Validated when the config is built (no Ray import here), turned into Ray actor
options when the cell is placed:

* ``{"resources": {"name": amount, ...}}``: a node offering these custom resources;
* ``{"node_id": "<hex>"}``: exactly that node (``ray.nodes()`` / ``Node.node_id``);
* ``{"num_gpus": n}`` / ``{"num_cpus": n}``: a node with that many free GPUs / CPUs,
  reserved for the cell while it lives (the worker sees the GPUs Ray assigned).

Keys combine (``{"resources": {"big_mem": 1}, "num_gpus": 1}``). Without a
placement, Ray's scheduler spreads cells over the cluster.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

from ..errors import ConfigError, NodecellError

__all__ = ["PlacementError", "RayUnavailable", "parse_placement", "parse_ray_options", "actor_options",
           "check_feasible", "manager_options", "require_ray"]


class RayUnavailable(NodecellError):
    """``backend="ray"`` without Ray: it is not installed, or this process is not connected
    to a cluster (``ray.init(address=...)`` first)."""


class PlacementError(NodecellError):
    """No node of the Ray cluster can take the cell: nothing offers what its ``placement``
    asks for, or nothing freed up within ``placement_timeout``."""


#: Defaults of ``ExtensionManagerConfig(ray={...})``.
RAY_DEFAULTS: Dict[str, Any] = {"placement_timeout": 120.0, "runtime_env": None}


def parse_ray_options(value: Any, field: str = "ray") -> Dict[str, Any]:
    """Validate ``ExtensionManagerConfig(ray={...})``: ``placement_timeout`` (seconds a cell
    may wait for a node, default 120), ``runtime_env`` (Ray's, for the cells' actors)."""
    if value is None:
        return dict(RAY_DEFAULTS)
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"expected a mapping with any of {', '.join(RAY_DEFAULTS)}, got {value!r}")
    out = dict(RAY_DEFAULTS)
    for k, v in value.items():
        if k not in RAY_DEFAULTS:
            raise ConfigError(f"{field}.{k}", f"unknown key; expected one of {', '.join(RAY_DEFAULTS)}")
        if k == "placement_timeout":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0):
                raise ConfigError(f"{field}.placement_timeout", f"expected a positive number of seconds, got {v!r}")
            out[k] = float(v)
        elif v is not None and not isinstance(v, Mapping):
            raise ConfigError(f"{field}.runtime_env", f"expected a Ray runtime_env mapping, got {v!r}")
        else:
            out[k] = dict(v) if v is not None else None
    return out


def manager_options(manager_config: Mapping[str, Any]) -> Dict[str, Any]:
    """The validated ``ray`` options of an :class:`ExtensionManagerConfig`."""
    return parse_ray_options(manager_config.get("ray"))


def require_ray() -> Any:
    """The ``ray`` module, connected to a cluster; :class:`RayUnavailable` otherwise."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"backend='ray' needs Ray ({e}): pip install 'nodecell[ray]'") from None
    if not ray.is_initialized():
        raise RayUnavailable("backend='ray' uses the Ray cluster this process is connected to, and it is "
                             "connected to none: call ray.init(address=...) before using the manager")
    return ray


def check_feasible(ray: Any, placement: Optional[Mapping[str, Any]]) -> None:
    """Fail at once, naming the field, when no live node could ever take the cell."""
    if not placement:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if placement.get("node_id"):
        ids = [n.get("NodeID") for n in nodes]
        if placement["node_id"] not in ids:
            raise PlacementError(f"placement.node_id: no live node {placement['node_id']} in the Ray cluster "
                                 f"(live: {', '.join(i[:12] for i in ids if i) or 'none'})")
        nodes = [n for n in nodes if n.get("NodeID") == placement["node_id"]]
    need = dict(placement.get("resources") or {})
    if placement.get("num_gpus"):
        need["GPU"] = placement["num_gpus"]
    if placement.get("num_cpus"):
        need["CPU"] = placement["num_cpus"]
    if not need:
        return
    for n in nodes:
        have = n.get("Resources") or {}
        if all(have.get(k, 0) >= v for k, v in need.items()):
            return
    offered = sorted({k for n in nodes for k in (n.get("Resources") or {})
                      if not k.startswith("node:") and k not in ("memory", "object_store_memory")})
    raise PlacementError(f"placement: no live node of the Ray cluster offers {need} "
                         f"(resources offered: {', '.join(offered) or 'none'})")

_KEYS = ("resources", "node_id", "num_gpus", "num_cpus")
_NODE_ID = re.compile(r"^[0-9a-f]{56}$")


def _amount(v: Any, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0) or v == float("inf"):
        raise ConfigError(field, f"expected a non-negative number, got {v!r}")
    return v


def parse_placement(value: Any, field: str = "placement") -> Optional[Dict[str, Any]]:
    """Validate a placement (see the module docs); ``None`` stays ``None``.

    Raises :class:`nodecell.ConfigError` naming the field (``placement.resources.gpu_box``).
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"expected a mapping with any of {', '.join(_KEYS)}, got {value!r}")
    out: Dict[str, Any] = {}
    for k, v in value.items():
        if k not in _KEYS:
            raise ConfigError(f"{field}.{k}", f"unknown key; expected one of {', '.join(_KEYS)}")
        if k == "resources":
            if not isinstance(v, Mapping) or not v:
                raise ConfigError(f"{field}.resources", f"expected a non-empty mapping of resource name to amount, got {v!r}")
            res = {}
            for name, amount in v.items():
                if not isinstance(name, str) or not name:
                    raise ConfigError(f"{field}.resources", f"resource names must be non-empty strings, got {name!r}")
                if name in ("CPU", "GPU"):
                    raise ConfigError(f"{field}.resources.{name}", f"use placement.num_{name.lower()}s for {name}")
                res[name] = _amount(amount, f"{field}.resources.{name}")
            out["resources"] = res
        elif k == "node_id":
            if not isinstance(v, str) or not _NODE_ID.match(v):
                raise ConfigError(f"{field}.node_id", f"expected a Ray node id (56 hex digits), got {v!r}")
            out["node_id"] = v
        else:
            out[k] = _amount(v, f"{field}.{k}")
    return out


def actor_options(placement: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Ray actor options for a validated placement (imports Ray)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    p = dict(placement or {})
    # The cell's host side only supervises; CPU for the worker is the cell's own limit.
    opts: Dict[str, Any] = {"num_cpus": p.get("num_cpus", 0)}
    if p.get("num_gpus"):
        opts["num_gpus"] = p["num_gpus"]
    if p.get("resources"):
        opts["resources"] = dict(p["resources"])
    if p.get("node_id"):
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(p["node_id"], soft=False)
    elif not p:
        opts["scheduling_strategy"] = "SPREAD"
    return opts
