"""The one registered :class:`~pyisolate.interfaces.IsolationAdapter` of this process."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["AdapterRegistry"]


class AdapterRegistry:
    """Holds the adapter ``pyisolate.register_adapter()`` registered."""

    _instance: Optional[Any] = None

    @classmethod
    def register(cls, adapter: Any) -> None:
        """Register ``adapter``; registering the same instance again is fine, another one
        raises RuntimeError (call :meth:`unregister` first)."""
        if cls._instance is not None:
            if cls._instance is adapter:
                return
            raise RuntimeError(f"Adapter already registered: {cls._instance}. Call unregister() first.")
        cls._instance = adapter

    @classmethod
    def get(cls) -> Optional[Any]:
        """The registered adapter, or None."""
        return cls._instance

    @classmethod
    def get_required(cls) -> Any:
        """The registered adapter; RuntimeError when there is none."""
        if cls._instance is None:
            raise RuntimeError("No adapter registered. Host application must call "
                               "pyisolate.register_adapter() before using isolation features.")
        return cls._instance

    @classmethod
    def unregister(cls) -> None:
        """Forget the registered adapter."""
        cls._instance = None
