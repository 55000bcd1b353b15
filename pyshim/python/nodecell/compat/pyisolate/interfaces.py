"""The adapter and serializer-registry protocols (``pyisolate.interfaces``).

Structural (``runtime_checkable``) protocols, as in pyisolate: an application's
adapter implements them without inheriting from anything (it may inherit too).
How nodecell uses an adapter: :class:`pyisolate.host.Extension`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol, runtime_checkable

from ._internal.rpc_protocol import AsyncRPC, ProxiedSingleton

__all__ = ["SerializerRegistryProtocol", "IsolationAdapter"]


@runtime_checkable
class SerializerRegistryProtocol(Protocol):
    """Serializers for application types, by type name.

    In nodecell a serializer must turn its object into nodecell's closed value set
    (None, bool, int, float, str, bytes, lists/tuples/dicts of those, tensors,
    arrays, registered records; anything else crosses as a remote handle) and a
    deserializer gets exactly that back: nothing is pickled or imported by name.
    """

    def register(self, type_name: str, serializer: Callable[[Any], Any],
                 deserializer: Optional[Callable[[Any], Any]] = None, *, data_type: bool = False) -> None:
        """Register a serializer (and optionally a deserializer) for ``type_name``."""

    def get_serializer(self, type_name: str) -> Optional[Callable[[Any], Any]]:
        """The serializer registered for ``type_name``, or None."""

    def get_deserializer(self, type_name: str) -> Optional[Callable[[Any], Any]]:
        """The deserializer registered for ``type_name``, or None."""

    def has_handler(self, type_name: str) -> bool:
        """Whether ``type_name`` was registered."""

    def is_data_type(self, type_name: str) -> bool:
        """Whether ``type_name`` was registered as plain data (``data_type=True``)."""


@runtime_checkable
class IsolationAdapter(Protocol):
    """What an application (ComfyUI, Hanzo Studio...) plugs into pyisolate.

    nodecell calls the same hooks at the same points: ``get_path_config`` (its
    ``preferred_root`` and ``additional_paths`` are mounted read-only and put first
    on the worker's ``sys.path``; the host's own sys.path is never exposed),
    ``register_serializers`` (host and worker), ``provide_rpc_services`` (when a
    config has no ``apis``), ``setup_child_environment``, ``handle_api_registration``
    and ``setup_child_event_hooks`` (worker), ``setup_web_directory``,
    ``get_sandbox_system_paths`` (more read-only mounts).
    """

    @property
    def identifier(self) -> str:
        """A short unique name of the application (e.g. ``"comfyui"``)."""

    def get_path_config(self, module_path: str) -> Optional[Dict[str, Any]]:
        """``{"preferred_root": ..., "additional_paths": [...], "filtered_subdirs": [...]}`` for a pack."""

    def setup_child_environment(self, snapshot: Dict[str, Any]) -> None:
        """Worker side, after its sys.path is set: configure the application's state."""

    def register_serializers(self, registry: SerializerRegistryProtocol) -> None:
        """Register serializers for the application's types (called in host and worker)."""

    def setup_web_directory(self, module: Any) -> None:
        """Publish a pack's web folder."""

    def provide_rpc_services(self) -> List["type[ProxiedSingleton]"]:
        """Host services (ProxiedSingleton classes) workers may call."""

    def handle_api_registration(self, api: ProxiedSingleton, rpc: AsyncRPC) -> None:
        """Worker side, after each service got its remote caller."""

    def setup_child_event_hooks(self, extension: Any) -> None:
        """Worker side: wire UI events (progress...) to ``extension.emit_event``."""

    def get_sandbox_system_paths(self) -> Optional[List[str]]:
        """More host folders the sandbox shows read-only (never ``/``, ``/etc``, ``/root``, ``/home``...)."""

    def get_sandbox_gpu_patterns(self) -> Optional[List[str]]:
        """Device patterns for GPU access (nodecell's ``gpu`` option decides; see README)."""
