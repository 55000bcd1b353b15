"""A Ray cluster of several raylets on this one machine, for trying placement out
(the demo's ``--ray``, experiments): Ray's own ``ray.cluster_utils.Cluster``.

    with LocalCluster(workers=2) as c:          # a head (this process connects to it) + 2 raylets
        host = StudioHost(venv_root, backend="ray", placement=c.spread(pack_names))

Each worker raylet offers one custom resource, ``nodecell_node_<i>``, so a
placement ``{"resources": {"nodecell_node_1": 1}}`` pins a cell to it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

__all__ = ["LocalCluster"]


class LocalCluster:
    """A head and ``workers`` raylets on this machine; ``ray.init`` connects this process."""

    def __init__(self, workers: int = 2, *, object_store_mb: int = 256, cpus_per_node: int = 1) -> None:
        import ray
        from ray.cluster_utils import Cluster

        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        store = object_store_mb << 20
        self._ray = ray
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": cpus_per_node, "object_store_memory": store})
        #: ``(resource name, Ray node id)`` of each worker raylet.
        self.nodes: List[tuple] = []
        try:
            for i in range(1, workers + 1):
                name = f"nodecell_node_{i}"
                node = self.cluster.add_node(num_cpus=cpus_per_node, resources={name: 1000},
                                             object_store_memory=store)
                self.nodes.append((name, node.node_id))
            ray.init(address=self.cluster.address, logging_level="WARNING", log_to_driver=False)
            self.cluster.wait_for_nodes()
        except BaseException:
            self.shutdown()
            raise

    @property
    def head_node_id(self) -> str:
        """The node this process is connected through."""
        return self.cluster.head_node.node_id

    def placement(self, i: int) -> Dict[str, Any]:
        """A placement that pins a cell to worker raylet ``i`` (0-based)."""
        return {"resources": {self.nodes[i % len(self.nodes)][0]: 1}}

    def spread(self, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
        """Placements assigning ``names`` to the worker raylets in turn."""
        return {n: self.placement(i) for i, n in enumerate(names)}

    def node_name(self, node_id: Optional[str]) -> str:
        """``raylet 1`` / ``head`` / the id's start, for printing."""
        for i, (_name, nid) in enumerate(self.nodes, 1):
            if nid == node_id:
                return f"raylet {i}"
        if node_id == self.head_node_id:
            return "head"
        return str(node_id)[:12]

    def shutdown(self) -> None:
        """Disconnect and stop every raylet."""
        try:
            if self._ray.is_initialized():
                self._ray.shutdown()
        finally:
            self.cluster.shutdown()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
