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


def _want_torch(kind: str) -> bool:
    """Whether to build a torch tensor: asked for, and torch importable here (else numpy)."""
    global _HAVE_TORCH
    if kind != "torch":
        return False
    if _HAVE_TORCH is None:
        if "torch" in sys.modules:
            _HAVE_TORCH = True
        else:
            import importlib.util

            _HAVE_TORCH = importlib.util.find_spec("torch") is not None
    return _HAVE_TORCH


def _torch_dtype(name: str) -> Any:
    t = _torch_mod()
    dt = getattr(t, name, None)
    if dt is None or not isinstance(dt, t.dtype):
        raise TypeError(f"torch has no dtype {name!r}")
    return dt


def _torch_dtype_name(dt: Any) -> Optional[str]:
    name = str(dt).replace("torch.", "")
    return name if name in _TORCH_NAMES else None


class _Registry:
    """Arenas this process can name: those it made and those it mapped from a peer.

    Keyed by the mapping's base address (to find the arena behind a tensor's
    storage) and by identity. Weak: an arena lives as long as some array or
    tensor (or the channel's peer bookkeeping) holds it.
    """

    def __init__(self) -> None:
        self.by_addr: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
        # Torch storage made for each arena, so every tensor on one arena shares one storage.
        self.storages: Dict[int, Any] = {}

    def add(self, arena: Any) -> None:
        self.by_addr[arena.address] = arena

    def find(self, addr: int) -> Optional[Any]:
        return self.by_addr.get(addr)

    def torch_storage(self, arena: Any) -> Any:
        """The torch storage over the whole arena (one per arena, cached weakly)."""
        key = arena.address
        ref = self.storages.get(key)
        st = ref() if ref is not None else None
        if st is None:
            t = _torch_mod()
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # read-only buffers: we never write through them
                st = t.frombuffer(arena, dtype=t.uint8).untyped_storage()
            try:
                self.storages[key] = weakref.ref(st, lambda _r, k=key: self.storages.pop(k, None))
            except TypeError:  # storages without weakref support: do not cache
                pass
            self.by_addr[key] = arena
        return st


REGISTRY = _Registry()


def _new_arena(nbytes: int, shared_writable: bool = False) -> Any:
    a = _nodecell.Arena(max(nbytes, 1), shared_writable=shared_writable)
    REGISTRY.add(a)
    return a


def _frozen_arena(buf: Any) -> Any:
    a = _nodecell.Arena.frozen_copy(buf)
    REGISTRY.add(a)
    return a


def empty(shape: Sequence[int], dtype: str = "float32", *, kind: str = "torch",
          shared_writable: bool = False) -> Any:
    """Allocate an uninitialized array directly in an arena, so sending it never copies.

    ``kind`` is ``"torch"`` (a CPU tensor) or ``"numpy"``. With
    ``shared_writable=True`` the arena is a writable output buffer: workers it is
    sent to may write into it and the host sees their writes.
    """
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
    n = 1
    for s in shape:
        n *= s
    if kind == "numpy":
        np = _numpy()
        dt = np.dtype(dtype)
        if _np_dtype_name(dt) is None:
            raise TypeError(f"unsupported dtype {dtype!r}")
        arena = _new_arena(n * dt.itemsize, shared_writable)
        return np.ndarray(shape, dtype=dt, buffer=arena, offset=0)
    if kind == "torch":
        t = _torch_mod()
        dt = _torch_dtype(str(dtype).replace("torch.", ""))
        item = t.empty((), dtype=dt).element_size()
        arena = _new_arena(n * item, shared_writable)
        st = REGISTRY.torch_storage(arena)
        out = t.empty(0, dtype=dt)
        out.set_(st, 0, shape, _contig_strides(shape))
        return out
    raise ValueError(f"kind must be 'torch' or 'numpy', got {kind!r}")


def _contig_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    strides = []
    acc = 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def is_shared(obj: Any) -> bool:
    """Whether ``obj`` (numpy array or torch tensor) already lives in an arena."""
    try:
        return _arena_of(obj)[0] is not None
    except Exception:
        return False


def _arena_of(obj: Any) -> Tuple[Optional[Any], int]:
    """(arena, byte offset of the data pointer from the arena's base) or (None, 0)."""
    tmod = sys.modules.get("torch")
    if tmod is not None and isinstance(obj, tmod.Tensor):
        st = obj.untyped_storage()
        sptr = st.data_ptr()
        arena = REGISTRY.find(sptr)
        if arena is None:
            return None, 0
        return arena, obj.storage_offset() * obj.element_size() + (sptr - arena.address)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray):
        base = obj
        while base is not None and not isinstance(base, (_nodecell.Arena, _nodecell.MappedArena)):
            if isinstance(base, memoryview):
                base = base.obj
            else:
                base = getattr(base, "base", None)
        if base is None:
            return None, 0
        return base, obj.__array_interface__["data"][0] - base.address
    return None, 0


# -- encoding ---------------------------------------------------------------------------

def encode_numpy(arr: Any, frozen: bool) -> Any:
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
    if arena is None:
        c = np.ascontiguousarray(arr)
        if frozen:
            arena = _frozen_arena(memoryview(c).cast("B"))
        else:
            arena = _new_arena(c.nbytes)
            np.frombuffer(arena, dtype=np.uint8, count=c.nbytes)[:] = c.reshape(-1).view(np.uint8)
        return _nodecell.TensorRef(arena, 0, name, list(c.shape), list(c.strides), "numpy")
    return _nodecell.TensorRef(arena, off, name, list(arr.shape), list(arr.strides), "numpy")


def encode_torch(t: Any, frozen: bool) -> Any:
    tm = _torch_mod()
    if t.device.type != "cpu":
        from . import _cuda

        return _cuda.encode_cuda(t)
    if t.is_sparse or t.layout != tm.strided:
        raise TypeError(f"torch tensors with layout {t.layout} cannot cross; use .to_dense()")
    name = _torch_dtype_name(t.dtype)
    if name is None:
        raise TypeError(f"torch tensors of dtype {t.dtype} cannot cross")
    if t.requires_grad:
        t = t.detach()
    item = t.element_size()
    nbytes = t.numel() * item
    if nbytes < INLINE_LIMIT:
        c = t.contiguous()
        raw = c.view(tm.uint8).numpy().tobytes() if c.numel() else b""
        return _nodecell.Record("nodecell.ndarray", {
            "kind": "torch", "dtype": name, "shape": list(t.shape), "data": raw,
        })
    arena, off = _arena_of(t)
    if arena is not None:
        return _nodecell.TensorRef(arena, off, name, list(t.shape), [s * item for s in t.stride()], "torch")
    st = t.untyped_storage()
    if frozen:
        c = t.contiguous()
        arena = _frozen_arena(memoryview(c.view(tm.uint8).numpy()).cast("B"))
        return _nodecell.TensorRef(arena, 0, name, list(c.shape), [s * item for s in c.stride()], "torch")
    # Host: copy the whole storage into a fresh arena once, then re-point this tensor
    # there if nothing else shares the storage (views would silently stop aliasing).
    snb = st.nbytes()
    arena = _new_arena(snb)
    dst = REGISTRY.torch_storage(arena)
    tm.empty(0, dtype=tm.uint8).set_(dst, 0, (snb,), (1,)).copy_(
        tm.empty(0, dtype=tm.uint8).set_(st, 0, (snb,), (1,)))
    unique = tm._C._storage_Use_Count(st._cdata) <= 2  # the tensor's and our local `st`
    del st
    if unique and not t.is_inference() and t._base is None:
        t.set_(dst, t.storage_offset(), t.size(), t.stride())
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


def decode_tensor(arena: Any, offset: int, dtype: str, shape: Sequence[int], strides: Sequence[int],
                  kind: str) -> Any:
    """Wrap a validated descriptor as a numpy array (read-only) or torch tensor (copy-on-write).

    A torch tensor sent to a process without torch arrives as a numpy array.
    """
    if not _want_torch(kind):
        np = _numpy()
        if dtype not in _NAME_TO_NP:
            raise TypeError(f"numpy has no dtype {dtype!r}")
        dt = np.dtype("?" if dtype == "bool" else "<" + _NAME_TO_NP[dtype])
        a = np.ndarray(tuple(shape), dtype=dt, buffer=arena, offset=offset, strides=tuple(strides))
        if not getattr(arena, "shared_writable", False):
            a.flags.writeable = False
        return a
    tm = _torch_mod()
    dt = _torch_dtype(dtype)
    item = tm.empty((), dtype=dt).element_size()
    if offset % item or any(s % item for s in strides):
        raise ValueError(f"descriptor offset/strides not aligned to {dtype} ({item} bytes)")
    st = REGISTRY.torch_storage(arena)
    out = tm.empty(0, dtype=dt)
    out.set_(st, offset // item, tuple(shape), tuple(s // item for s in strides))
    return out
