"""``RemoteObjectHandle``: a by-value reference (id, type name) to an object kept in
another process, as sealed workers return for outputs that do not cross as values.

It crosses nodecell's channel as a registered record (two strings), never pickled."""

from __future__ import annotations

import dataclasses

from ...._rpc import register_type

__all__ = ["RemoteObjectHandle"]


@dataclasses.dataclass(eq=False)
class RemoteObjectHandle:
    """``object_id`` names the object in its owner's table; ``type_name`` is for humans."""

    object_id: str
    type_name: str

    def __repr__(self) -> str:
        return f"<RemoteObject id={self.object_id} type={self.type_name}>"


register_type(RemoteObjectHandle, "pyisolate:RemoteObjectHandle")
