"""CUDA tensors across the sandbox (``share_cuda_ipc=True``).

Legacy CUDA IPC handles (``cudaIpcGetMemHandle``, torch's ``_share_cuda_``) are
checked against pids and fail across pid namespaces, so a CUDA tensor crosses as
an fd-exportable allocation instead (``cuMemCreate`` with POSIX fd handles,
exported with ``cuMemExportToShareableHandle``, the fd sent over the channel's
socket, imported and mapped by the peer): zero-copy, both directions.

* The sender copies a tensor's storage once into a ``CudaBuffer`` and re-points
  the tensor there when nothing else shares its storage, so sending it again is
  free (like CPU tensors and arenas).
* CUDA memory has no copy-on-write: what the worker writes into a tensor the host
  sent is what the host sees, and the reverse (as with torch's own CUDA sharing).
* The allocation stays alive on the sender while the peer holds tensors over it
  (reference counts and release frames, no timers).
* Before a call, reply or error leaves a channel that carried CUDA memory, the
  sending process waits for its GPU work to finish, so the peer reads complete data.

It needs ``share_cuda_ipc=True`` on the extension (which asks for ``share_torch``;
use ``gpu: true`` so the worker's sandbox has the NVIDIA devices), a CUDA device
and torch on both sides. Otherwise sending a CUDA tensor raises a ``TypeError``
saying why, and a CUDA tensor arriving where it cannot be mapped fails that call
only, with the reason.
"""

from __future__ import annotations

from typing import Any, Optional

from . import _nodecell

__all__ = ["cuda_available", "cuda_unavailable_reason", "encode_cuda", "decode_cuda"]


def cuda_available() -> bool:
    """Whether this process can share CUDA memory (libcuda present, ``cuInit`` OK, a
    device visible). Initializes the CUDA driver when it can; never raises."""
    return bool(_nodecell.cuda_available())


def cuda_unavailable_reason() -> Optional[str]:
    """Why CUDA memory cannot be shared in this process (None when it can)."""
    return _nodecell.cuda_status()


def _torch() -> Any:
    import torch

    return torch


def encode_cuda(t: Any, channel: Any) -> Any:
    """Wire marker for a CUDA tensor sent on ``channel``: its storage in an
    exportable allocation (copied there once, then re-pointed), or a clear TypeError.

    CUDA memory cannot be made immutable: a worker's CUDA outputs stay writable by
    it, whatever ``frozen_outputs`` says for CPU tensors."""
    channel_id = channel.id
    where = f"a CUDA tensor on {t.device}"
    if t.device.type != "cuda":
        raise TypeError(f"a tensor on {t.device} cannot cross: only CPU and CUDA tensors can; use .cpu()")
    if not _nodecell.cuda_channel(channel_id):
        raise TypeError(
            f"{where} cannot cross this channel: zero-copy CUDA sharing needs share_cuda_ipc=True "
            "on a gpu pack with a CUDA device; move it to the CPU with .cpu() to send a copy")
    reason = _nodecell.cuda_status()
    if reason is not None:
        raise TypeError(f"{where} cannot cross: this process cannot export CUDA memory ({reason}); "
                        "move it to the CPU with .cpu() to send a copy")
    tm = _torch()
    from . import _tensors

    if t.is_sparse or t.layout != tm.strided:
        raise TypeError(f"torch tensors with layout {t.layout} cannot cross; use .to_dense()")
    name = _tensors._torch_dtype_name(t.dtype)
    if name is None:
        raise TypeError(f"torch tensors of dtype {t.dtype} cannot cross")
    if t.requires_grad:
        t = t.detach()
    item = t.element_size()
    shape = list(t.shape)
    strides = [s * item for s in t.stride()]
    loc = _nodecell.cuda_locate(t.data_ptr(), max(t.numel() * item, 1)) if t.data_ptr() else None
    if loc is not None:
        mem, off = loc
        if isinstance(mem, _nodecell.CudaBuffer) or mem.channel_id == channel_id:
            return _nodecell.TensorRef(mem, off, name, shape, strides, "torch")
    # Copy the whole storage once into an exportable allocation on the same device,
    # then re-point this tensor (and the tensor it views) there when they are the
    # storage's only users: views elsewhere would silently stop aliasing.
    st = t.untyped_storage()
    snb = st.nbytes()
    dev = t.device.index if t.device.index is not None else tm.cuda.current_device()
    buf = _nodecell.CudaBuffer(max(snb, 1), dev)
    dst_u8 = tm._C._from_dlpack(buf.dlpack(0, "uint8", [snb]))
    if snb:
        dst_u8.copy_(tm.empty(0, dtype=tm.uint8, device=t.device).set_(st, 0, (snb,), (1,)))
    dst = dst_u8.untyped_storage()
    holders = [t] if t._base is None else [t, t._base]
    uses = tm._C._storage_Use_Count(st._cdata)  # the holders' and our local `st`
    del st
    if uses <= len(holders) + 1 and not t.is_inference():
        for h in holders:
            h.set_(dst, h.storage_offset(), h.size(), h.stride())
    return _nodecell.TensorRef(buf, t.storage_offset() * item, name, shape, strides, "torch")


def decode_cuda(src: Any) -> Any:
    """A torch CUDA tensor over received (already mapped) CUDA memory, without a copy.

    ``src`` is a ``DLSource`` on a CUDA device; the tensor keeps the mapping alive
    and gives the descriptor back to the sender when it dies."""
    try:
        tm = _torch()
    except ImportError:
        raise TypeError("a CUDA tensor arrived but torch is not importable in this process") from None
    try:
        tm.cuda.init()
    except Exception as e:  # noqa: BLE001 - a CPU-only torch build, or no device for torch
        raise TypeError(f"a CUDA tensor arrived but torch here cannot use CUDA: {e}") from None
    return tm._C._from_dlpack(src.__dlpack__())
