"""The host's one reactor and its bridge into asyncio.

One ``_nodecell.Reactor`` per host process: a Rust thread on io_uring that
waits on every worker's doorbell and pidfd and signals an eventfd. Each asyncio
loop that uses nodecell adds a reader for that eventfd and routes the events
(``readable`` / ``died``) to the worker they were registered for.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Dict, Optional

from . import _nodecell

_lock = threading.Lock()
_reactor: Optional[Any] = None


def reactor() -> Any:
    """The process's reactor, started on first use."""
    global _reactor
    with _lock:
        if _reactor is None:
            _reactor = _nodecell.Reactor()
        return _reactor


#: Which bridge registered each reactor token. Any loop's reader may drain events that
#: belong to workers of another loop (they share the reactor's eventfd); those are handed
#: to their own loop, never dropped.
_owners: Dict[int, "LoopBridge"] = {}


class LoopBridge:
    """Routes reactor events to callbacks on one asyncio loop."""

    _bridges: Dict[int, "LoopBridge"] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.r = reactor()
        self.handlers: Dict[int, Callable[[str], None]] = {}
        self._armed = False

    @classmethod
    def get(cls, loop: Optional[asyncio.AbstractEventLoop] = None) -> "LoopBridge":
        loop = loop or asyncio.get_running_loop()
        b = cls._bridges.get(id(loop))
        if b is None or b.loop is not loop or loop.is_closed():
            b = cls(loop)
            cls._bridges[id(loop)] = b
        return b

    def register(self, channel: Any, pidfd: int, on_event: Callable[[str], None]) -> int:
        """Watch ``channel``; ``on_event(kind)`` runs on this loop for each event
        (``readable``, ``died``, ``storm``)."""
        if pidfd >= 0:
            channel.set_peer_pidfd(pidfd)
        token = self.r.register(channel)
        self.handlers[token] = on_event
        _owners[token] = self
        if not self._armed:
            self.loop.add_reader(self.r.fileno(), self._drain)
            self._armed = True
        return token

    def unregister(self, token: int) -> None:
        self.handlers.pop(token, None)
        if _owners.get(token) is self:
            del _owners[token]
        try:
            self.r.unregister(token)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if not self.handlers and self._armed:
            try:
                self.loop.remove_reader(self.r.fileno())
            except Exception:  # noqa: BLE001
                pass
            self._armed = False

    def _drain(self) -> None:
        for token, kind in self.r.drain():
            if token in self.handlers:
                self._dispatch(token, kind)
                continue
            owner = _owners.get(token)
            if owner is not None and owner is not self and not owner.loop.is_closed():
                try:
                    owner.loop.call_soon_threadsafe(owner._dispatch, token, kind)
                except RuntimeError:  # closed meanwhile
                    pass

    def _dispatch(self, token: int, kind: str) -> None:
        h = self.handlers.get(token)
        if h is None:
            return
        try:
            h(kind)
        except Exception:  # noqa: BLE001 - one worker's failure must not stop the others
            import logging

            logging.getLogger("nodecell").exception("error handling %s event", kind)
