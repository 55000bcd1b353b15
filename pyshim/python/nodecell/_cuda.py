"""CUDA tensors across the sandbox (``share_cuda_ipc=True``).

Legacy CUDA IPC handles (``cudaIpcGetMemHandle``, torch's ``_share_cuda_``) are
checked against pids and fail across pid namespaces, so a CUDA tensor can only
cross zero-copy as an fd-exportable allocation (``cuMemCreate`` with POSIX fd
handles) — which needs a CUDA device and ``gpu: true`` on the pack. Without
one, sending a CUDA tensor raises a clear error instead of silently copying.
"""

from __future__ import annotations

from typing import Any


def cuda_available() -> bool:
    """Whether this process can see a CUDA device (never initializes CUDA if torch is absent)."""
    import sys

    tm = sys.modules.get("torch")
    if tm is None:
        return False
    try:
        return bool(tm.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def encode_cuda(t: Any) -> Any:
    """Refuse CUDA tensors with a message saying what to do (device-side sharing needs a GPU pack)."""
    raise TypeError(
        f"a CUDA tensor on {t.device} cannot cross this channel: zero-copy CUDA sharing needs "
        "share_cuda_ipc=True on a gpu pack with a CUDA device; move it to the CPU with .cpu() to send a copy")
