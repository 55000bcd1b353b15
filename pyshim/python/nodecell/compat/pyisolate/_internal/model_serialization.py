"""pyisolate's explicit serialization helpers (``pyisolate._internal.model_serialization``),
as upstream ComfyUI's isolation layer calls them: the serializer registry applied
to a value, outgoing or incoming (the same walk nodecell's channel applies itself)."""

from __future__ import annotations

import inspect
from typing import Any

from ._nc_wire import prepare, rehydrate
from .remote_handle import RemoteObjectHandle

__all__ = ["serialize_for_isolation", "deserialize_from_isolation", "deserialize_proxy_result"]


def serialize_for_isolation(data: Any) -> Any:
    """``data`` with registered types serialized (handles and tensors pass unchanged)."""
    handle = getattr(data, "_pyisolate_remote_handle", None)
    if isinstance(handle, RemoteObjectHandle):
        return handle
    return prepare(data)


async def deserialize_from_isolation(data: Any, extension: Any = None, _nested: bool = False) -> Any:
    """``data`` with ``{"__type__": ...}`` dicts deserialized (awaiting async deserializers)."""
    result = rehydrate(data)
    if inspect.isawaitable(result):
        result = await result
    return result


def deserialize_proxy_result(data: Any) -> Any:
    """``data`` with ``{"__type__": ...}`` dicts deserialized."""
    return rehydrate(data)
