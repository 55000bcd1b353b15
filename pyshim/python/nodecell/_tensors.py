"""Zero-copy numpy arrays and torch CPU tensors.

Storage lives in *arenas*: memfds the sending side owns. An arena crosses to a
peer once (its fd, over the channel's socket); afterwards a tensor crosses as a
descriptor (arena, offset, dtype, shape, strides) in a frame.

* Host-made arenas are sealed so that nobody else can map them writable-shared:
  workers see them read-only (numpy) or copy-on-write (torch): a worker cannot
  change a host tensor unless the host hands it one made with
  ``nodecell.empty(..., shared_writable=True)``.
* A private torch tensor is copied into an arena once and re-pointed there when
  nothing else shares its storage, so the next send is free (like
  ``share_memory_()``). numpy arrays cannot be re-pointed: allocate them with
  ``nodecell.empty(..., kind="numpy")`` to send them without a copy.
* Tensors a worker makes are copied once into an immutable (write-sealed) memfd.
* Small tensors (under ``INLINE_LIMIT`` bytes) travel inline in the frame.

Storage is freed by reference counts: when the last local reference to an
arena goes, the peers that mapped it are told to drop their mapping.
"""

from __future__ import annotations

import ctypes
import sys
import weakref
from typing import Any, Dict, Optional, Sequence, Tuple

from . import _nodecell

__all__ = ["empty", "is_shared", "INLINE_LIMIT"]

#: Tensors smaller than this many bytes are copied into the frame instead of an arena.
INLINE_LIMIT = 64 * 1024

_np: Any = None
_torch: Any = None


def _numpy() -> Any:
    global _np
    if _np is None:
        _np = sys.modules.get("numpy")
        if _np is None:
            import numpy

            _np = numpy
    return _np


def _torch_mod() -> Any:
    global _torch
    if _torch is None:
        import torch

        _torch = torch
    return _torch


# Canonical dtype names shared with the wire (ipc's dtype enum).
_NP_TO_NAME = {
    "b1": "bool", "i1": "int8", "i2": "int16", "i4": "int32", "i8": "int64",
    "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64",
    "f2": "float16", "f4": "float32", "f8": "float64", "c8": "complex64", "c16": "complex128",
}
_NAME_TO_NP = {v: k for k, v in _NP_TO_NAME.items()}
_TORCH_NAMES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
)


def _np_dtype_name(dt: Any) -> Optional[str]:
    if dt.byteorder == ">" or dt.hasobject or dt.fields is not None:
        return None
    return _NP_TO_NAME.get(f"{dt.kind}{dt.itemsize}")


_HAVE_TORCH: Optional[bool] = None
_HAVE_NUMPY: Optional[bool] = None


def _want_torch(kind: str) -> bool:
    """Whether to build a torch tensor: asked for, and torch importable here (else numpy)."""
    global _HAVE_TORCH, _HAVE_NUMPY
    import importlib.util

    if _HAVE_TORCH is None:
        _HAVE_TORCH = "torch" in sys.modules or importlib.util.find_spec("torch") is not None
    if kind == "torch":
        return _HAVE_TORCH
    if _HAVE_NUMPY is None:
        _HAVE_NUMPY = "numpy" in sys.modules or importlib.util.find_spec("numpy") is not None
    # A numpy array sent to a process with torch but no numpy arrives as a tensor.
    return not _HAVE_NUMPY and _HAVE_TORCH


def _torch_dtype(name: str) -> Any:
    t = _torch_mod()
    dt = getattr(t, name, None)
    if dt is None or not isinstance(dt, t.dtype):
        raise TypeError(f"torch has no dtype {name!r}")
    return dt


def _torch_dtype_name(dt: Any) -> Optional[str]:
    name = str(dt).replace("torch.", "")
    return name if name in _TORCH_NAMES else None


def _from_source(src: Any, kind: str, writable: bool) -> Any:
    """A torch tensor or numpy array over the memory a ``DLSource`` describes (no copy)."""
    if _want_torch(kind):
        return _torch_mod()._C._from_dlpack(src.__dlpack__())
    np = _numpy()
    a = np.from_dlpack(src)  # numpy 2 asks for a versioned capsule: writable unless flagged
    if not writable and a.flags.writeable:
        a.flags.writeable = False
    return a


def _new_arena(nbytes: int, shared_writable: bool = False) -> Any:
    return _nodecell.Arena(max(nbytes, 1), shared_writable=shared_writable)


def empty(shape: Sequence[int], dtype: str = "float32", *, kind: str = "torch",
          shared_writable: bool = False) -> Any:
    """Allocate an uninitialized array directly in an arena, so sending it never copies.

    ``kind`` is ``"torch"`` (a CPU tensor) or ``"numpy"``. With
    ``shared_writable=True`` the arena is a writable output buffer: workers it is
    sent to may write into it and the host sees their writes.
    """
    shape = [int(s) for s in shape]
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {tuple(shape)}")
    n = 1
    for s in shape:
        n *= s
    if kind == "numpy":
        np = _numpy()
        dt = np.dtype(dtype)
        name = _np_dtype_name(dt)
        if name is None:
            raise TypeError(f"unsupported dtype {dtype!r}")
        arena = _new_arena(n * dt.itemsize, shared_writable)
        return np.from_dlpack(arena.dlsource(0, name, shape))
    if kind == "torch":
        name = str(dtype).replace("torch.", "")
        if name not in _TORCH_NAMES:
            raise TypeError(f"unsupported dtype {dtype!r}")
        arena = _new_arena(n * _ITEMSIZE[name], shared_writable)
        return _torch_mod()._C._from_dlpack(arena.dlpack(0, name, shape))
    raise ValueError(f"kind must be 'torch' or 'numpy', got {kind!r}")


_ITEMSIZE = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
             "int32": 4, "uint32": 4, "float32": 4, "int64": 8, "uint64": 8, "float64": 8,
             "complex64": 8, "complex128": 16}


def is_shared(obj: Any) -> bool:
    """Whether ``obj`` (numpy array or torch tensor) already lives in an arena."""
    try:
        return _arena_of(obj)[0] is not None
    except Exception:
        return False


def _arena_of(obj: Any) -> Tuple[Optional[Any], int]:
    """(Arena or View, byte offset of the data pointer from its start) or (None, 0)."""
    tmod = sys.modules.get("torch")
    if tmod is not None and isinstance(obj, tmod.Tensor):
        ptr = obj.data_ptr()
    else:
        np = sys.modules.get("numpy")
        if np is None or not isinstance(obj, np.ndarray):
            return None, 0
        ptr = obj.__array_interface__["data"][0]
    if not ptr:
        return None, 0
    loc = _nodecell.locate(ptr, 1)
    return (None, 0) if loc is None else loc


def _usable_here(arena: Any, channel_id: int) -> bool:
    """Our own arenas cross any channel; a received view only back to where it came from."""
    if isinstance(arena, _nodecell.Arena):
        return True
    return arena.channel_id == channel_id


# -- encoding ---------------------------------------------------------------------------

def encode_numpy(arr: Any, frozen: bool, channel_id: int) -> Any:
    np = _numpy()
    name = _np_dtype_name(arr.dtype)
    if name is None:
        raise TypeError(f"numpy arrays of dtype {arr.dtype} cannot cross (object, structured or big-endian)")
    if arr.nbytes < INLINE_LIMIT:
        return _nodecell.Record("nodecell.ndarray", {
            "kind": "numpy", "dtype": name, "shape": list(arr.shape),
            "data": np.ascontiguousarray(arr).tobytes(),
        })
    arena, off = _arena_of(arr)
    if arena is not None and _usable_here(arena, channel_id) and all(s >= 0 for s in arr.strides):
        return _nodecell.TensorRef(arena, off, name, list(arr.shape), list(arr.strides), "numpy")
    c = np.ascontiguousarray(arr)
    if frozen:
        arena = _nodecell.Arena.frozen_copy_from(c.__array_interface__["data"][0], c.nbytes)
    else:
        arena = _new_arena(c.nbytes)
        dst = np.from_dlpack(arena.dlsource(0, "uint8", [c.nbytes]))
        dst[:] = c.reshape(-1).view(np.uint8)
    return _nodecell.TensorRef(arena, 0, name, list(c.shape), list(c.strides), "numpy")


_TORCH_DT: Dict[Any, Tuple[str, int]] = {}


def _torch_dt(dt: Any) -> Optional[Tuple[str, int]]:
    """(wire name, item size) of a torch dtype, cached (this runs on every send)."""
    hit = _TORCH_DT.get(dt)
    if hit is None:
        name = _torch_dtype_name(dt)
        if name is None:
            return None
        hit = _TORCH_DT[dt] = (name, _ITEMSIZE[name])
    return hit


def encode_torch(t: Any, frozen: bool, channel_id: int) -> Any:
    if not t.is_cpu:
        from . import _cuda

        return _cuda.encode_cuda(t, frozen, channel_id)
    tm = _torch_mod()
    if t.layout is not tm.strided:
        raise TypeError(f"torch tensors with layout {t.layout} cannot cross; use .to_dense()")
    dt = _torch_dt(t.dtype)
    if dt is None:
        raise TypeError(f"torch tensors of dtype {t.dtype} cannot cross")
    name, item = dt
    if t.requires_grad:
        t = t.detach()
    shape = t.shape
    nbytes = t.numel() * item
    if nbytes < INLINE_LIMIT:
        c = t.contiguous()
        raw = ctypes.string_at(c.data_ptr(), nbytes) if nbytes else b""
        return _nodecell.Record("nodecell.ndarray", {
            "kind": "torch", "dtype": name, "shape": list(shape), "data": raw,
        })
    # Fast path, a tensor already in an arena: one pointer lookup (torch strides are never negative).
    loc = _nodecell.locate(t.data_ptr(), 1)
    if loc is not None and (isinstance(loc[0], _nodecell.Arena) or loc[0].channel_id == channel_id):
        return _nodecell.TensorRef(loc[0], loc[1], name, list(shape), [s * item for s in t.stride()], "torch")
    if frozen:
        c = t.contiguous()
        arena = _nodecell.Arena.frozen_copy_from(c.data_ptr(), c.numel() * item)
        return _nodecell.TensorRef(arena, 0, name, list(c.shape), [s * item for s in c.stride()], "torch")
    # Host: copy the whole storage into a fresh arena once, then re-point this tensor
    # there if nothing else shares the storage (views would silently stop aliasing).
    st = t.untyped_storage()
    snb = st.nbytes()
    arena = _new_arena(snb)
    dst_u8 = tm._C._from_dlpack(arena.dlpack(0, "uint8", [snb]))
    dst_u8.copy_(tm.empty(0, dtype=tm.uint8).set_(st, 0, (snb,), (1,)))
    dst = dst_u8.untyped_storage()
    # Re-point the tensor (and the tensor it is a view of, e.g. after .reshape())
    # when they are the storage's only users: views elsewhere would silently stop aliasing.
    holders = [t] if t._base is None else [t, t._base]
    uses = tm._C._storage_Use_Count(st._cdata)  # the holders' and our local `st`
    del st
    if uses <= len(holders) + 1 and not t.is_inference():
        for h in holders:
            h.set_(dst, h.storage_offset(), h.size(), h.stride())
    return _nodecell.TensorRef(arena, t.storage_offset() * item, name, list(t.shape),
                               [s * item for s in t.stride()], "torch")


# -- decoding ---------------------------------------------------------------------------

def decode_inline(fields: Dict[str, Any]) -> Any:
    kind, dtype, shape, data = fields["kind"], fields["dtype"], tuple(fields["shape"]), fields["data"]
    if not _want_torch(kind):
        np = _numpy()
        if dtype not in _NAME_TO_NP:
            raise TypeError(f"unknown dtype {dtype!r}")
        a = np.frombuffer(bytearray(data), dtype=np.dtype("<" + _NAME_TO_NP[dtype] if dtype != "bool" else "?"))
        return a.reshape(shape)
    tm = _torch_mod()
    dt = _torch_dtype(dtype)
    if not data:
        return tm.empty(shape, dtype=dt)
    return tm.frombuffer(bytearray(data), dtype=tm.uint8).view(dt).reshape(shape).clone()


_FROM_DLPACK: Any = None


def decode_tensor(capsule: Any, kind: str, writable: bool) -> Any:
    """Wrap a received tensor (a DLPack capsule over its validated storage) as a torch
    tensor or numpy array without copying. Inputs from a peer are copy-on-write
    mappings: numpy arrays are marked read-only, torch tensors may be written (the
    writes stay here). A torch tensor sent to a process without torch arrives as a
    numpy array, and a numpy array sent to one with torch but no numpy as a tensor."""
    global _FROM_DLPACK
    if kind == "torch" and _HAVE_TORCH:  # the hot path: torch here, torch sent
        if _FROM_DLPACK is None:
            _FROM_DLPACK = _torch_mod()._C._from_dlpack
        return _FROM_DLPACK(capsule.__dlpack__())
    return _from_source(capsule, kind, writable)
