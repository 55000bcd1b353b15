"""The host's receiver of ``emit_event(name, payload)`` calls from a worker."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict

__all__ = ["_EventBridge"]


class _EventBridge:
    """Per extension: event name -> the host handler registered for it."""

    def __init__(self) -> None:
        self._handlers: Dict[str, Callable[..., Any]] = {}

    def register_handler(self, name: str, handler: Callable[..., Any]) -> None:
        """Route events called ``name`` to ``handler(payload)`` (sync or async)."""
        self._handlers[name] = handler

    async def dispatch(self, name: str, payload: Any) -> None:
        """Run the handler for ``name``; ValueError when none is registered (never dropped)."""
        handler = self._handlers.get(name)
        if handler is None:
            raise ValueError(f"No handler registered for event '{name}'")
        result = handler(payload)
        if inspect.isawaitable(result):
            await result
