"""The link between the driver and a cell's actor: nodecell frames over Ray.

Both ends are nodecell :class:`~nodecell._rpc.Endpoint` s (handle tables,
records, errors as values, releases) over a ``_nodecell.Wire``: a frame is
``(bytes, buffers)``, the bytes in nodecell's own encoding (the closed value
set, decoded by nodecell's decoder, never by pickle) and each large numpy array
or torch tensor as a ``uint8`` numpy array over its storage, which Ray carries
out of band through its object store and maps on the receiving node without
copying. Small arrays (under ``INLINE_LIMIT``) travel inline in the bytes.

How frames move (one ``Link`` per end):

* driver -> actor calls: ``actor.call(bytes, *buffers)`` returns the REPLY/ERROR
  frame (one Ray actor call per nodecell call);
* actor -> driver calls (services, callbacks, handles the driver owns), logs and
  releases: queued in the actor and fetched by the driver's long poll
  ``actor.pull()``; the driver answers with ``actor.push(frames)``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, List, Optional, Tuple

from .. import _nodecell, _tensors
from .._rpc import ERROR, RELEASE, REPLY, Endpoint, error_value

__all__ = ["Link", "Frame"]

#: ``(frame bytes, tensor buffers)`` as it travels through Ray.
Frame = Tuple[bytes, List[Any]]


def _encode_array(obj: Any) -> Any:
    """A numpy array or CPU/CUDA torch tensor as a wire marker: inline when small,
    else a ``TensorRef`` over a ``uint8`` view of its (contiguous) bytes."""
    np = _tensors._numpy()
    if isinstance(obj, np.ndarray):
        name = _tensors._np_dtype_name(obj.dtype)
        if name is None:
            raise TypeError(f"numpy arrays of dtype {obj.dtype} cannot cross (object, structured or big-endian)")
        if obj.nbytes < _tensors.INLINE_LIMIT:
            return _tensors._inline_numpy(obj, name)
        c = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
        return _nodecell.TensorRef(c.reshape(-1).view(np.uint8), 0, name, list(c.shape), list(c.strides), "numpy")
    tm = _tensors._torch_mod()
    t = obj.detach()
    if not t.is_cpu:
        t = t.cpu()  # device memory cannot leave the machine: it crosses as host memory
    if t.layout is not tm.strided:
        raise TypeError(f"torch tensors with layout {t.layout} cannot cross; use .to_dense()")
    dt = _tensors._torch_dt(t.dtype)
    if dt is None:
        raise TypeError(f"torch tensors of dtype {t.dtype} cannot cross")
    name, item = dt
    if t.numel() * item < _tensors.INLINE_LIMIT:
        return _tensors._inline_torch(t.resolve_conj().resolve_neg(), name, t.numel() * item)
    c = t.resolve_conj().resolve_neg().contiguous()
    raw = c.reshape(-1).view(tm.uint8).numpy()
    return _nodecell.TensorRef(raw, 0, name, list(c.shape), [s * item for s in c.stride()], "torch")


def _decode_array(buf: Any, offset: int, dtype: str, shape: List[int], strides: List[int], kind: str) -> Any:
    """A received tensor over ``buf`` (checked by the Wire: the elements lie inside it).

    numpy arrays are read-only views, as from a local cell. torch tensors are views
    too: torch has no read-only tensors, and the buffer is this process's private
    copy of the object (Ray maps its store read-write and the object is this call's
    alone), so a write changes nothing anyone else sees.
    """
    np = _tensors._numpy()
    if _tensors._want_torch(kind):
        tm = _tensors._torch_mod()
        tdt = _tensors._torch_dtype(dtype)
        item = _tensors._ITEMSIZE[dtype]
        u8 = np.frombuffer(buf, dtype=np.uint8)
        if not u8.flags.writeable:
            u8 = _writable_alias(u8)
        flat = tm.from_numpy(u8)
        if offset % item:
            flat = flat[offset:].clone()  # misaligned for this dtype: one copy
            offset = 0
        usable = (flat.numel() - offset) // item * item
        elems = flat[offset:offset + usable].view(tdt)
        return elems.as_strided(shape, strides)
    np_name = _tensors.DTYPES.get(dtype, (0, 0, None))[2]
    if np_name is None:
        raise TypeError(f"dtype {dtype!r} has no numpy equivalent; send it with kind 'torch'")
    npdt = np.dtype(np_name)
    a = np.ndarray(tuple(shape), dtype=npdt, buffer=buf, offset=offset,
                   strides=tuple(s * npdt.itemsize for s in strides))
    if a.flags.writeable:
        a.flags.writeable = False
    return a


_RW_RANGES: List[Tuple[int, int]] = []


def _in_writable_mapping(ptr: int, n: int) -> bool:
    """Whether ``[ptr, ptr + n)`` lies in one mapping of this process that allows writes
    (``/proc/self/maps``; ranges seen before are remembered)."""
    end = ptr + n
    for lo, hi in _RW_RANGES:
        if lo <= ptr and end <= hi:
            return True
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                span, perms = line.split(None, 2)[:2]
                lo_s, hi_s = span.split("-")
                lo, hi = int(lo_s, 16), int(hi_s, 16)
                if lo <= ptr < hi:
                    if "w" in perms and end <= hi:
                        _RW_RANGES.append((lo, hi))
                        del _RW_RANGES[:-64]
                        return True
                    return False
    except OSError:
        pass
    return False


def _writable_alias(u8: Any) -> Any:
    """The same bytes as a writable numpy array (torch has no read-only tensors), or a
    copy when the memory is not writable here.

    Only for buffers that are this process's own copy (see :func:`_decode_array`).
    """
    import ctypes

    np = _tensors._numpy()
    n = u8.nbytes
    ptr = u8.__array_interface__["data"][0]
    if n == 0 or not _in_writable_mapping(ptr, n):
        return u8.copy()
    raw = (ctypes.c_uint8 * n).from_address(ptr)
    raw._nodecell_keep = u8  # type: ignore[attr-defined]  # the alias keeps the source alive
    return np.frombuffer(raw, dtype=np.uint8)


class Link(Endpoint):
    """One end of a driver<->actor link (see the module docs).

    Subclasses say how frames leave (:meth:`send_frame`) and how calls and
    replies are waited for.
    """

    def __init__(self, side: str, peer_name: str) -> None:
        wire = _nodecell.Wire(side)
        super().__init__(wire, peer_name)
        wire.set_hooks(self.encode_hook, _decode_array, self.decode_handle, self.decode_record, self.decode_error)
        self.log = logging.getLogger("nodecell.ray")

    # -- encoding ---------------------------------------------------------------------

    def encode_hook(self, obj: Any) -> Any:
        mods = sys.modules
        np = mods.get("numpy")
        if np is not None and isinstance(obj, np.ndarray):
            return _encode_array(obj)
        tm = mods.get("torch")
        if tm is not None and isinstance(obj, tm.Tensor):
            return _encode_array(obj)
        return super().encode_hook(obj)

    def frame(self, kind: int, call_id: int, payload: Any) -> Frame:
        """Encode one frame as ``(bytes, buffers)``."""
        blob, bufs = self.channel.encode(kind, call_id, payload)
        return blob, bufs

    def reply_frame(self, call_id: int, value: Any, error: Optional[BaseException]) -> Frame:
        """A REPLY frame, or an ERROR frame when ``error`` is set or ``value`` cannot cross."""
        if error is None:
            try:
                return self.frame(REPLY, call_id, value)
            except Exception as e:  # noqa: BLE001 - e.g. a value that cannot cross
                error = e
        return self.frame(ERROR, call_id, error_value(error))

    def receive(self, blob: bytes, bufs: Any) -> Tuple[int, int, Any]:
        """Decode one frame (raises ``_nodecell.ProtocolViolation`` on malformed input)."""
        if not isinstance(blob, bytes):
            raise _nodecell.ProtocolViolation(f"a frame must be bytes, got {type(blob).__name__}")
        return self.channel.decode(blob, list(bufs))

    # -- frames out -------------------------------------------------------------------

    def send_frame(self, kind: int, call_id: int, payload: Any) -> None:
        raise NotImplementedError

    def flush_releases(self) -> None:
        if not self._release_queue or self.closed:
            return
        ids = self.take_releases()
        try:
            self.send_frame(RELEASE, 0, ids)
        except Exception:  # noqa: BLE001 - a link that is gone has nothing to release
            pass

    def close(self) -> None:
        """Stop using this link (pending work fails; hooks dropped)."""
        self.closed = True
        self.channel.close()


def in_object_store(obj: Any) -> bool:
    """Whether a numpy array's or torch tensor's data lies in Ray's object store on this
    node (a shared ``plasma`` mapping): what arrived from a remote cell without a copy."""
    tm = sys.modules.get("torch")
    if tm is not None and isinstance(obj, tm.Tensor):
        ptr = obj.data_ptr()
    else:
        try:
            ptr = obj.__array_interface__["data"][0]
        except (AttributeError, KeyError, TypeError):
            return False
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                lo_s, hi_s = parts[0].split("-")
                if int(lo_s, 16) <= ptr < int(hi_s, 16):
                    return len(parts) > 5 and "plasma" in parts[5]
    except OSError:
        pass
    return False
