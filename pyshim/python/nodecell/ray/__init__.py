"""Cells on a Ray cluster, with the same API as local ones (``pip install 'nodecell[ray]'``).

    import ray, nodecell
    ray.init(address="auto")
    manager = nodecell.ExtensionManager(MyExtension, nodecell.ExtensionManagerConfig(backend="ray"))
    ext = await manager.load_extension(nodecell.ExtensionConfig(
        name="upscale", module_path="/packs/upscale", placement={"num_gpus": 1}))
    out = await ext.upscale(image)          # runs in the pack's sandbox on a GPU node
    ext.placement                           # {"node_id": "...", "node_ip": "10.0.0.7"}

Ray is the engine (scheduling, actors, the object store), nodecell the cell: on
the chosen node an actor provisions the pack's venv from that node's nodecell
cache and starts the worker behind the same walls as a local cell; calls,
services (``apis``), callbacks and handles travel as nodecell frames, large
arrays through Ray's object store. See :mod:`nodecell.ray.extension`;
:class:`nodecell.ray.local_cluster.LocalCluster` starts a cluster of several
raylets on one machine to try it.

Importing this package does not import Ray; using the backend does.
"""

from __future__ import annotations

from ._link import in_object_store
from ._placement import PlacementError, RayUnavailable, parse_placement, parse_ray_options

__all__ = ["PlacementError", "RayUnavailable", "in_object_store", "parse_placement", "parse_ray_options"]
