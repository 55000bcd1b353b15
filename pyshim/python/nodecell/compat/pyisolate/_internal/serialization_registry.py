"""The registry of application-type serializers (``SerializerRegistry``).

Same API and rules as pyisolate's: a serializer is found by the object's type
name (then its base classes' names), a received dict carrying ``"__type__"`` is
given to the deserializer registered under that name. In nodecell both sides
only ever run their *own* registered functions on values of the closed set the
channel carries (see :mod:`._nc_wire`); tensors and arrays always cross natively.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Optional, Set

__all__ = ["SerializerRegistry"]

log = logging.getLogger(__name__)


class SerializerRegistry:
    """One per process (:meth:`get_instance`); adapters register into it."""

    _instance: Optional["SerializerRegistry"] = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._serializers: Dict[str, Optional[Callable[[Any], Any]]] = {}
        self._deserializers: Dict[str, Callable[[Any], Any]] = {}
        self._data_types: Set[str] = set()
        #: Bumped on every change; the wire walk caches its per-type lookups against it.
        self.generation = 0

    @classmethod
    def get_instance(cls) -> "SerializerRegistry":
        """The process's registry."""
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance

    def register(self, type_name: str, serializer: Optional[Callable[[Any], Any]],
                 deserializer: Optional[Callable[[Any], Any]] = None, *, data_type: bool = False) -> None:
        """Register ``serializer`` (may be None: receive-only) and ``deserializer`` for
        ``type_name``. ``data_type=True`` marks plain data (it stays marked when the name
        is registered again without it)."""
        if type_name in self._serializers:
            log.debug("overwriting the serializer for %s", type_name)
        self._serializers[type_name] = serializer
        if deserializer:
            self._deserializers[type_name] = deserializer
        if data_type:
            self._data_types.add(type_name)
        self.generation += 1

    def get_serializer(self, type_name: str) -> Optional[Callable[[Any], Any]]:
        """The serializer for ``type_name``, or None."""
        return self._serializers.get(type_name)

    def get_deserializer(self, type_name: str) -> Optional[Callable[[Any], Any]]:
        """The deserializer for ``type_name``, or None."""
        return self._deserializers.get(type_name)

    def has_handler(self, type_name: str) -> bool:
        """Whether ``type_name`` was registered."""
        return type_name in self._serializers

    def is_data_type(self, type_name: str) -> bool:
        """Whether ``type_name`` was registered with ``data_type=True``."""
        return type_name in self._data_types

    def clear(self) -> None:
        """Forget every registration."""
        self._serializers.clear()
        self._deserializers.clear()
        self._data_types.clear()
        self.generation += 1

    def is_empty(self) -> bool:
        """Whether nothing is registered (the outgoing wire walk is skipped then)."""
        return not self._serializers

    def has_deserializers(self) -> bool:
        """Whether any deserializer is registered (the incoming wire walk is skipped if not)."""
        return bool(self._deserializers)
