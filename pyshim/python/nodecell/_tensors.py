"""Zero-copy numpy arrays and torch CPU tensors.

Storage lives in *arenas*: memfds the sending side owns. An arena crosses to a
peer once (its fd, over the channel's socket); afterwards a tensor crosses as a
descriptor (arena, offset, dtype, shape, strides) in a frame.

* Host-made arenas are sealed so that nobody else can map them writable-shared:
  workers see them read-only (numpy) or copy-on-write (torch): a worker cannot
  change a host tensor unless the host hands it one made with
  ``nodecell.empty(..., shared_writable=True)``.
* A private tensor or array is copied once into a *pooled* arena: one already
  mapped and faulted in, reused once nothing needs it any more (nothing here holds
  a tensor over it and the peer gave back every descriptor naming it). Each pooled
  arena serves one channel only (see ``ipc/src/pool.rs``).
* In the host, a private torch tensor is re-pointed into that arena when nothing
  else shares its storage, so the next send is free (like ``share_memory_()``).
  numpy arrays cannot be re-pointed: allocate them with
  ``nodecell.empty(..., kind="numpy")`` to send them without a copy.
  The private storage it leaves is freed on a background thread (``FREE_LATER``
  bytes and up) once no send queued another for ``FREE_QUIET`` seconds: unmapping
  64 MiB of faulted-in pages costs 3-10 ms, as much as half the copy, and nothing
  waits for it.
* In a worker, outputs are copied into the pool and never re-pointed: the worker's
  code keeps its own tensor, so changing it later never changes what it returned.
  With torch, the worker heap (``pyshim/src/heap.rs``; ``NODECELL_WORKER_HEAP=0``
  turns it off) allocates torch's CPU tensors of 1 MiB and more in pooled arenas
  from the start (numpy's arrays too, NumPy >= 1.22), so those outputs are sent as they are, without the copy;
  sending one remaps the worker's own mapping of it copy-on-write, so the same holds.
  A channel made with ``frozen_outputs`` gets immutable (write-sealed) copies
  instead (see SECURITY.md for what each guarantees).
* A received tensor the receiver wrote into (copy-on-write) is copied when sent on,
  so the peer gets what the receiver sees, not its own stale bytes.
* Small tensors (under ``INLINE_LIMIT`` bytes) travel inline in the frame, as the
  ``nodecell.ndarray`` record that ``_nodecell`` builds and checks.
* The common cases never reach this module: a ``torch.Tensor`` already in an arena
  (or in a view received on the same channel) is encoded by ``_nodecell`` itself, and
  a received torch tensor is built there with torch's DLPack reader
  (``pyshim/src/torchfast.rs``). Everything else comes here.
* A first send's copy of 8 MiB or more is split across the CPUs (``ipc/src/sys.rs``).

The dtype table (wire names, item sizes, numpy names) comes from ``_nodecell``.
Storage is freed by reference counts: when the last local reference to an arena
goes, the peers that mapped it are told to drop their mapping.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
from typing import Any, Dict, Optional, Sequence, Tuple

from . import _nodecell

__all__ = ["empty", "is_shared", "INLINE_LIMIT", "DTYPES", "tensor_pool_stats", "set_tensor_pool"]

#: Tensors smaller than this many bytes are copied into the frame instead of an arena
#: (``_nodecell``'s, which the Rust encoder's own torch path uses too).
INLINE_LIMIT: int = _nodecell.INLINE_LIMIT

#: The wire dtypes: name -> (code, item size, numpy name or None), from ``_nodecell``.
DTYPES: Dict[str, Tuple[int, int, Optional[str]]] = {
    name: (code, size, np_name) for name, code, size, np_name, _torch in _nodecell.dtypes()
}
_ITEMSIZE = {name: v[1] for name, v in DTYPES.items()}
_NP_TO_NAME = {v[2]: name for name, v in DTYPES.items() if v[2] is not None}
_TORCH_ATTR = {name: torch_name for name, _c, _s, _n, torch_name in _nodecell.dtypes()}

#: Private storages at least this large, replaced by an arena on a first send, are
#: freed on the background thread instead of inline (see ``_free_later``).
FREE_LATER = 1 << 20
#: At most this many bytes wait for the freer; a storage beyond it is freed inline (sends
#: that never pause must not pile frees up).
FREE_BACKLOG = 2 << 30
#: The freer frees what waits once nothing was queued for this many seconds.
FREE_QUIET = 0.02

_np: Any = None
_torch: Any = None
_free_q: "Optional[queue.SimpleQueue[Any]]" = None
_free_lock = threading.Lock()
_free_pending = 0  # bytes queued and not yet freed (under _free_lock)
_free_closed = False  # set at interpreter exit: callers free inline from then on
_FREE_STOP = object()  # queued at exit: the freer frees what waits and ends


def _freer(q: "queue.SimpleQueue[Any]") -> None:
    # Frees wait until no storage was queued for FREE_QUIET seconds: the send that
    # queued one is then (nearly always) answered, so the unmapping does not compete
    # with its copy, the peer and the reply for the CPUs. (Not a low-priority thread:
    # it takes the GIL, and one preempted while holding it would stall the host.)
    global _free_pending
    tm = _torch_mod()
    stop = False
    while not stop:
        batch = [q.get()]
        while batch[-1] is not _FREE_STOP:
            try:
                batch.append(q.get(timeout=FREE_QUIET))
            except queue.Empty:
                break
        if batch[-1] is _FREE_STOP:
            stop = True
            batch.pop()
        for t, nbytes in batch:
            try:
                # Drops the last reference to the old storage inside a torch op, which
                # releases the GIL around it: the unmapping runs while Python goes on.
                # (Inference mode: the holder is an inference tensor when the send ran
                # under it, as ComfyUI runs nodes, and those take in-place ops only there.)
                with tm.inference_mode():
                    t.set_()
            except Exception:  # noqa: BLE001 - freed below in any case
                pass
            del t
            with _free_lock:
                _free_pending -= nbytes
        del batch


def _free_later(holder: Any, nbytes: int) -> bool:
    """Free a private torch storage of ``nbytes`` on the ``nodecell-free`` thread, off the
    path of the call that replaced it; False (the caller frees it by dropping ``holder``)
    when ``FREE_BACKLOG`` bytes wait already. ``holder`` is an empty-shaped tensor over it
    holding its last reference (the caller dropped every other one first: a reference
    dropped after the hand-off could be the last one, and free it here after all)."""
    global _free_q, _free_pending
    with _free_lock:
        if _free_closed or _free_pending + nbytes > FREE_BACKLOG:
            return False
        _free_pending += nbytes
        if _free_q is None:
            q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
            th = threading.Thread(target=_freer, args=(q,), name="nodecell-free", daemon=True)
            th.start()
            atexit.register(_stop_freer, q, th)
            _free_q = q
        _free_q.put((holder, nbytes))
    return True


def _stop_freer(q: "queue.SimpleQueue[Any]", th: threading.Thread) -> None:
    """At interpreter exit (atexit runs before finalization): the ``nodecell-free`` thread
    frees what waits and ends. Left running, it could be inside ``Tensor.set_`` (which
    releases the GIL) when the interpreter finalizes: taking the GIL back then ends the
    thread with ``pthread_exit``, whose unwinding through torch's ``noexcept`` frames
    aborts the process ("terminate called without an active exception")."""
    global _free_closed
    with _free_lock:
        _free_closed = True
    q.put(_FREE_STOP)
    th.join(timeout=30)


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


def set_tensor_pool(max_free_bytes: int) -> None:
    """Keep at most ``max_free_bytes`` of free pooled arenas in this process (0: none).
    Workers read ``NODECELL_TENSOR_POOL`` from their environment at start (a size in the
    project's units: ``536870912``, ``64MiB``, ``1G``; ``0``: none; a bad value fails their start)."""
    _nodecell.set_tensor_pool(int(max_free_bytes))


def tensor_pool_stats() -> Dict[str, int]:
    """This process's tensor pool: ``hits``, ``misses``, ``dropped``, ``arenas``,
    ``bytes``, ``free_bytes``, ``limit``; ``copies`` and ``copied_bytes`` (tensors copied
    into pooled arenas to be sent)."""
    return dict(_nodecell.tensor_pool_stats())


def _np_dtype_name(dt: Any) -> Optional[str]:
    if not dt.isnative or dt.hasobject or dt.fields is not None:
        return None
    return _NP_TO_NAME.get(dt.name)


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


_TORCH_DT: Dict[Any, Tuple[str, int]] = {}


def _torch_dt(dt: Any) -> Optional[Tuple[str, int]]:
    """(wire name, item size) of a torch dtype, cached (this runs on every send)."""
    hit = _TORCH_DT.get(dt)
    if hit is None:
        name = str(dt).replace("torch.", "")
        if name not in _ITEMSIZE:
            return None
        hit = _TORCH_DT[dt] = (name, _ITEMSIZE[name])
    return hit


def _torch_dtype_name(dt: Any) -> Optional[str]:
    hit = _torch_dt(dt)
    return None if hit is None else hit[0]


def _torch_dtype(name: str) -> Any:
    """The torch dtype of a wire dtype name (TypeError when this torch has none)."""
    tm = _torch_mod()
    dt = getattr(tm, _TORCH_ATTR.get(name, ""), None)
    if dt is None or not isinstance(dt, tm.dtype):
        raise TypeError(f"torch has no dtype {name!r}")
    return dt


def _inline_numpy(arr: Any, name: str) -> Any:
    """The inline ``nodecell.ndarray`` record of a small numpy array (bytes copied)."""
    c = _numpy().ascontiguousarray(arr)
    return _nodecell.inline_tensor("numpy", name, list(c.shape),
                                   c.__array_interface__["data"][0] if c.nbytes else 0, c.nbytes)


def _inline_torch(t: Any, name: str, nbytes: int) -> Any:
    """The inline ``nodecell.ndarray`` record of a small CPU torch tensor (bytes copied)."""
    c = t.contiguous()
    return _nodecell.inline_tensor("torch", name, list(c.shape), c.data_ptr() if nbytes else 0, nbytes)


def _torch_from(src: Any) -> Any:
    """A torch tensor over a ``DLSource``; dtypes this torch's DLPack reader does not
    know (float8 before DLPack 1.1 support) are read as bytes and viewed."""
    try:
        return _torch_mod()._C._from_dlpack(src.__dlpack__())
    except (RuntimeError, TypeError, BufferError):
        name = src.dtype
        if _ITEMSIZE.get(name) != 1 or name in ("uint8", "int8", "bool"):
            raise
        tm = _torch_mod()
        dt = getattr(tm, _TORCH_ATTR[name], None)
        if dt is None:
            raise TypeError(f"a {name} tensor arrived but this torch has no {name} dtype") from None
        return tm._C._from_dlpack(src.retyped("uint8").__dlpack__()).view(dt)


def _from_source(src: Any, kind: str, writable: bool) -> Any:
    """A torch tensor or numpy array over the memory a ``DLSource`` describes (no copy)."""
    if _want_torch(kind):
        return _torch_from(src)
    np = _numpy()
    if DTYPES.get(src.dtype, (0, 0, None))[2] is None:
        raise TypeError(f"a {src.dtype} tensor cannot become a numpy array (numpy has no {src.dtype} "
                        "dtype); send it to a process with torch, or convert it first")
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
        if name not in _ITEMSIZE:
            raise TypeError(f"unsupported dtype {dtype!r}")
        arena = _new_arena(n * _ITEMSIZE[name], shared_writable)
        return _torch_from(arena.dlsource(0, name, shape))
    raise ValueError(f"kind must be 'torch' or 'numpy', got {kind!r}")


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

def encode_numpy(arr: Any, channel: Any) -> Any:
    """The wire marker for a numpy array sent on ``channel``."""
    np = _numpy()
    name = _np_dtype_name(arr.dtype)
    if name is None:
        raise TypeError(f"numpy arrays of dtype {arr.dtype} cannot cross (object, structured or big-endian)")
    if arr.nbytes < INLINE_LIMIT:
        return _inline_numpy(arr, name)
    arena, off = _arena_of(arr)
    if arena is not None and _usable_here(arena, channel.id) and all(s >= 0 for s in arr.strides):
        return _nodecell.TensorRef(arena, off, name, list(arr.shape), list(arr.strides), "numpy")
    c = np.ascontiguousarray(arr)
    arena = _nodecell.pool_arena(channel, c.nbytes, c.__array_interface__["data"][0])
    return _nodecell.TensorRef(arena, 0, name, list(c.shape), list(c.strides), "numpy")


def encode_torch(t: Any, channel: Any) -> Any:
    """The wire marker for a torch tensor sent on ``channel``."""
    if not t.is_cpu:
        from . import _cuda

        return _cuda.encode_cuda(t, channel)
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
        return _inline_torch(t, name, nbytes)
    # Fast path, a tensor already in an arena: one pointer lookup (torch strides are never negative).
    loc = _nodecell.locate(t.data_ptr(), 1)
    if loc is not None and (isinstance(loc[0], _nodecell.Arena) or loc[0].channel_id == channel.id):
        return _nodecell.TensorRef(loc[0], loc[1], name, list(shape), [s * item for s in t.stride()], "torch")
    if channel.side == "worker":
        # An output: copied into the pool, the worker's own tensor left where it is.
        c = t.contiguous()
        arena = _nodecell.pool_arena(channel, nbytes, c.data_ptr())
        return _nodecell.TensorRef(arena, 0, name, list(c.shape), [s * item for s in c.stride()], "torch")
    # Host: copy the whole storage into a pooled arena once, then re-point this tensor
    # there if nothing else shares the storage (views would silently stop aliasing).
    st = t.untyped_storage()
    snb = st.nbytes()
    arena = _nodecell.pool_arena(channel, snb, st.data_ptr())
    dst = _torch_from(arena.dlsource(0, "uint8", [snb])).untyped_storage()
    # Re-point the tensor (and the tensor it is a view of, e.g. after .reshape())
    # when they are the storage's only users: views elsewhere would silently stop aliasing.
    holders = [t] if t._base is None else [t, t._base]
    uses = tm._C._storage_Use_Count(st._cdata)  # the holders' and our local `st`
    if uses <= len(holders) + 1 and not t.is_inference():
        for h in holders:
            h.set_(dst, h.storage_offset(), h.size(), h.stride())
        if snb >= FREE_LATER:
            holder = tm.empty(0, dtype=tm.uint8)
            holder.set_(st)
            del st  # the holder has the old storage's last reference now
            _free_later(holder, snb)
            del holder  # freed here when the backlog is full
            return _nodecell.TensorRef(arena, t.storage_offset() * item, name, list(t.shape),
                                       [s * item for s in t.stride()], "torch")
    del st
    return _nodecell.TensorRef(arena, t.storage_offset() * item, name, list(t.shape),
                               [s * item for s in t.stride()], "torch")


# -- decoding ---------------------------------------------------------------------------

_FROM_DLPACK: Any = None


def decode_tensor(src: Any, kind: str, writable: bool) -> Any:
    """Wrap a received tensor (a ``DLSource`` over its validated storage, or over the
    bytes of an inline record) as a torch tensor or numpy array without copying.
    Inputs from a peer are copy-on-write mappings: numpy arrays are marked read-only,
    torch tensors may be written (the writes stay here). A torch tensor sent to a
    process without torch arrives as a numpy array, and a numpy array sent to one with
    torch but no numpy as a tensor."""
    global _FROM_DLPACK
    if kind == "torch" and _HAVE_TORCH:  # the hot path: torch here, torch sent
        if _FROM_DLPACK is None:
            _FROM_DLPACK = _torch_mod()._C._from_dlpack
        try:
            return _FROM_DLPACK(src.__dlpack__())
        except (RuntimeError, TypeError, BufferError):
            return _torch_from(src)
    return _from_source(src, kind, writable)
