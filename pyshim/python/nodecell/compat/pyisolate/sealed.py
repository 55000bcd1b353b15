"""``SealedNodeExtension`` (``pyisolate.sealed``): a ComfyUI-style node wrapper for
workers that import nothing of the host application.

Outputs that are not plain values cross back as :class:`RemoteObjectHandle` s (the
object stays in the worker's ``remote_objects``), as in pyisolate. In nodecell,
tensors and numpy arrays are values: they cross zero-copy instead of as handles or
JSON lists.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import uuid
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

from ._internal.remote_handle import RemoteObjectHandle
from .shared import ExtensionBase

__all__ = ["SealedNodeExtension"]

logger = logging.getLogger(__name__)

_NUMPY_TO_TORCH = {
    "float32": "torch.float32", "float64": "torch.float64", "float16": "torch.float16",
    "int32": "torch.int32", "int64": "torch.int64", "int16": "torch.int16", "int8": "torch.int8",
    "uint8": "torch.uint8", "bool": "torch.bool",
}


def _sanitize_for_transport(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, dict):
        return {k: _sanitize_for_transport(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_sanitize_for_transport(v) for v in value)
    if isinstance(value, list):
        return [_sanitize_for_transport(v) for v in value]
    return str(value)


def _native(value: Any) -> bool:
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


class SealedNodeExtension(ExtensionBase):
    """Serves a pack's ``NODE_CLASS_MAPPINGS`` nodes (V1 style) from the worker."""

    def __init__(self) -> None:
        super().__init__()
        self.node_classes: Dict[str, type] = {}
        self.display_names: Dict[str, str] = {}
        self.node_instances: Dict[str, Any] = {}
        self.remote_objects: Dict[str, Any] = {}
        self._module: Optional[ModuleType] = None
        self._register_ndarray_serializer()

    @staticmethod
    def _register_ndarray_serializer() -> None:
        """Register ``ndarray`` as a data type with pyisolate's ``TensorValue`` form (for code
        that serializes explicitly; nodecell's channel itself sends arrays natively)."""
        try:
            import numpy as np
        except ImportError:
            return
        from ._internal.serialization_registry import SerializerRegistry

        registry = SerializerRegistry.get_instance()
        if registry.has_handler("ndarray"):
            return

        def serialize(obj: Any) -> Dict[str, Any]:
            arr = np.asarray(obj)
            dtype = _NUMPY_TO_TORCH.get(arr.dtype.name)
            if dtype is None:
                raise TypeError(f"Unsupported ndarray dtype {arr.dtype}. Supported dtypes: "
                                f"{', '.join(sorted(_NUMPY_TO_TORCH))}")
            return {"__type__": "TensorValue", "dtype": dtype, "tensor_size": list(arr.shape),
                    "requires_grad": False, "data": arr.tolist()}

        registry.register("ndarray", serialize, None, data_type=True)

    async def on_module_loaded(self, module: ModuleType) -> None:
        self._module = module
        self.node_classes = getattr(module, "NODE_CLASS_MAPPINGS", {}) or {}
        self.display_names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}) or {}
        self.node_instances = {}
        if getattr(module, "WEB_DIRECTORY", None) is not None:
            from ._internal.adapter_registry import AdapterRegistry

            adapter = AdapterRegistry.get()
            if adapter is not None and hasattr(adapter, "setup_web_directory"):
                adapter.setup_web_directory(module)

    async def list_nodes(self) -> Dict[str, str]:
        """Node name -> display name."""
        return {name: self.display_names.get(name, name) for name in self.node_classes}

    async def get_node_info(self, node_name: str) -> Dict[str, Any]:
        """Same as :meth:`get_node_details`."""
        return await self.get_node_details(node_name)

    async def get_node_details(self, node_name: str) -> Dict[str, Any]:
        """A node's schema as plain values."""
        cls = self._get_node_class(node_name)
        inputs = cls.INPUT_TYPES() if hasattr(cls, "INPUT_TYPES") else {}
        out_list = getattr(cls, "OUTPUT_IS_LIST", None)
        if out_list is not None:
            out_list = tuple(bool(x) for x in out_list)
        return {
            "input_types": _sanitize_for_transport(inputs),
            "return_types": tuple(str(t) for t in getattr(cls, "RETURN_TYPES", ())),
            "return_names": getattr(cls, "RETURN_NAMES", None),
            "function": str(getattr(cls, "FUNCTION", "execute")),
            "category": str(getattr(cls, "CATEGORY", "")),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
            "output_is_list": out_list,
            "is_v3": False,
        }

    async def get_input_types(self, node_name: str) -> Dict[str, Any]:
        """A node's ``INPUT_TYPES()``."""
        cls = self._get_node_class(node_name)
        return cls.INPUT_TYPES() if hasattr(cls, "INPUT_TYPES") else {}

    def _wrap_for_transport(self, data: Any) -> Any:
        if isinstance(data, (str, int, float, bool, type(None))) or _native(data):
            return data
        if isinstance(data, dict):
            return {k: self._wrap_for_transport(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self._wrap_for_transport(v) for v in data)
        from ._internal.serialization_registry import SerializerRegistry

        registry = SerializerRegistry.get_instance()
        type_name = type(data).__name__
        if registry.has_handler(type_name) and registry.is_data_type(type_name):
            return data
        object_id = str(uuid.uuid4())
        self.remote_objects[object_id] = data
        return RemoteObjectHandle(object_id, type_name=type_name)

    def _resolve_handles(self, data: Any) -> Any:
        if isinstance(data, RemoteObjectHandle):
            if data.object_id not in self.remote_objects:
                raise KeyError(f"Remote object {data.object_id} not found")
            return self.remote_objects[data.object_id]
        if isinstance(data, dict):
            return {k: self._resolve_handles(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self._resolve_handles(v) for v in data)
        return data

    async def execute_node(self, node_name: str, **inputs: Any) -> Tuple[Any, ...]:
        """Run a node: inputs' handles resolved, outputs wrapped for transport."""
        instance = self._get_node_instance(node_name)
        cls = self._get_node_class(node_name)
        function_name = getattr(cls, "FUNCTION", "execute")
        if not hasattr(instance, function_name):
            raise AttributeError(f"Node {node_name} missing callable '{function_name}'")
        inputs = {k: self._resolve_handles(v) for k, v in inputs.items()}
        if getattr(cls, "INPUT_IS_LIST", False):
            inputs = {k: v if isinstance(v, list) else [v] for k, v in inputs.items()}
        handler = getattr(instance, function_name)
        if inspect.iscoroutinefunction(handler):
            result = await handler(**inputs)
        else:
            result = await asyncio.get_running_loop().run_in_executor(None, lambda: handler(**inputs))
        if not isinstance(result, tuple):
            result = (result,)
        return tuple(self._wrap_for_transport(item) for item in result)

    async def flush_transport_state(self) -> int:
        """Forget the objects kept for handles; returns how many tensors were released."""
        from ._internal.tensor_serializer import flush_tensor_keeper

        flushed = int(flush_tensor_keeper())
        self.remote_objects.clear()
        return flushed

    async def get_remote_object(self, object_id: str) -> Any:
        """The object a handle names."""
        if object_id not in self.remote_objects:
            raise KeyError(f"Remote object {object_id} not found")
        return self.remote_objects[object_id]

    def _get_node_class(self, node_name: str) -> type:
        if node_name not in self.node_classes:
            raise KeyError(f"Node {node_name} not found")
        return self.node_classes[node_name]

    def _get_node_instance(self, node_name: str) -> Any:
        if node_name not in self.node_instances:
            self.node_instances[node_name] = self._get_node_class(node_name)()
        return self.node_instances[node_name]
