"""pyisolate's tensor helpers (``pyisolate._internal.tensor_serializer``) on nodecell.

pyisolate copies CPU tensors to ``/dev/shm`` files and keeps them alive with a
timer (the "tensor keeper"). nodecell's channel shares tensors through sealed
memfds released by reference counting: there is no keeper to flush and no
``/dev/shm`` file to purge, so :func:`flush_tensor_keeper` and
:func:`purge_orphan_sender_shm_files` report 0. The serializers registered by
:func:`register_tensor_serializer` are never applied to tensors on the channel
(tensors always cross natively); called directly they give pyisolate's JSON form.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["flush_tensor_keeper", "purge_orphan_sender_shm_files", "serialize_tensor", "deserialize_tensor",
           "register_tensor_serializer"]


def flush_tensor_keeper() -> int:
    """Tensors released by a keeper: nodecell keeps none alive on a timer, so 0."""
    return 0


def purge_orphan_sender_shm_files(min_age_seconds: float = 1.0, force: bool = False) -> int:
    """``/dev/shm`` files removed: nodecell's tensors live in memfds, never files, so 0."""
    return 0


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise RuntimeError("this feature requires PyTorch: install 'torch'") from None
    return torch


def serialize_tensor(t: Any, mode: str = "shared_memory") -> Any:
    """``"shared_memory"``: the tensor itself (nodecell's channel shares it zero-copy);
    ``"json"``: pyisolate's ``TensorValue`` dict (dtype, shape, nested lists)."""
    if mode != "json":
        return t
    return {"__type__": "TensorValue", "dtype": str(t.dtype), "tensor_size": list(t.shape),
            "requires_grad": bool(t.requires_grad), "data": t.detach().cpu().tolist()}


def deserialize_tensor(data: Any, mode: str = "shared_memory") -> Any:
    """A tensor back from :func:`serialize_tensor`'s output. ``TensorRef`` (pyisolate's
    ``/dev/shm`` file names) is refused: nodecell never opens a file a peer names."""
    torch = _torch()
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, dict) and data.get("__type__") == "TensorValue":
        dtype = getattr(torch, str(data.get("dtype", "torch.float32")).split(".")[-1])
        t = torch.tensor(data.get("data", []), dtype=dtype).reshape(data.get("tensor_size", []))
        return t.requires_grad_(bool(data.get("requires_grad"))) if t.is_floating_point() else t
    kind = data.get("__type__") if isinstance(data, dict) else type(data).__name__
    raise TypeError(f"cannot rebuild a tensor from {kind!r}: nodecell shares tensors itself and never opens "
                    "files or handles a peer names")


def register_tensor_serializer(registry: Any, mode: str = "shared_memory") -> None:
    """Register pyisolate's tensor names with ``registry`` (RuntimeError without torch)."""
    _torch_required()

    def ser(obj: Any) -> Any:
        return serialize_tensor(obj, mode=mode)

    def de(data: Dict[str, Any]) -> Any:
        return deserialize_tensor(data, mode=mode)

    registry.register("Tensor", ser, de)
    registry.register("torch.Tensor", ser, de)
    registry.register("TensorValue", None, de)


def _torch_required() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RuntimeError("register_tensor_serializer requires PyTorch. Install 'torch' to use tensor-sharing "
                           "features.") from None
