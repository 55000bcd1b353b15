"""The points where the host's call path reaches the tools (kept small on purpose).

* :func:`register_manager` — an :class:`~nodecell.ExtensionManager` exists:
  list it for ``nodecell top`` and start the tools socket.
* :func:`attach_worker` — a worker's host side is being built: give it a
  :class:`WorkerTools` (debugger state, pinned host tools object).
* :func:`worker_ready` — a worker finished ``init``: push breakpoints and the
  profiler switch to it.
* :meth:`WorkerTools.timeout_grace` — a call's timeout expired: how much of
  it the worker spent stopped in a debugger (waits while it still is).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING, Any, List, Optional

from . import HOST_TOOLS_ID

if TYPE_CHECKING:
    from ..cell import _Worker
    from ..extension import Extension
    from ..manager import ExtensionManager

_managers: "weakref.WeakSet[ExtensionManager]" = weakref.WeakSet()


def register_manager(manager: "ExtensionManager") -> None:
    """List ``manager`` for the stats snapshot and make sure the tools socket is served."""
    _managers.add(manager)
    from . import profile, server

    server.serve()
    profile.start_from_env()


def managers() -> List["ExtensionManager"]:
    """The live managers of this process."""
    return list(_managers)


class WorkerTools:
    """The tools' state for one worker, on the host: whether (and how long) it has
    been stopped in a debugger. Read by the call path when a timeout expires."""

    __slots__ = ("worker", "stopped", "stopped_since", "paused_ns", "host_pid", "profile_key", "_resumed",
                 "__weakref__")

    def __init__(self, worker: "_Worker") -> None:
        self.worker = worker
        #: Threads of the worker stopped in a debugger now.
        self.stopped = 0
        self.stopped_since = 0
        #: Nanoseconds spent stopped before the current stop.
        self.paused_ns = 0
        #: The worker's pid as the host sees it (filled in by the stats snapshot).
        self.host_pid: Optional[int] = None
        #: The worker's name in profiles (set by the profiler).
        self.profile_key: Optional[str] = None
        self._resumed: Optional[asyncio.Event] = None

    def paused(self) -> int:
        """Nanoseconds this worker has spent stopped in a debugger, the current stop included."""
        if self.stopped:
            return self.paused_ns + time.monotonic_ns() - self.stopped_since
        return self.paused_ns

    def on_stop(self) -> None:
        """A thread of the worker stopped in a debugger."""
        if self.stopped == 0:
            self.stopped_since = time.monotonic_ns()
            self._resumed = asyncio.Event()
        self.stopped += 1

    def on_resume(self) -> None:
        """A stopped thread of the worker runs again."""
        if self.stopped == 0:
            return
        self.stopped -= 1
        if self.stopped == 0:
            self.paused_ns += time.monotonic_ns() - self.stopped_since
            if self._resumed is not None:
                self._resumed.set()

    def on_exit(self) -> None:
        """The worker is gone: nothing of it stays stopped."""
        while self.stopped:
            self.on_resume()

    async def timeout_grace(self, paused_at_start: int) -> float:
        """A call whose timeout expired: wait while the worker is stopped in a
        debugger, then return the seconds it spent stopped since the call started
        (``paused_at_start`` is :meth:`paused` read then). Zero: time is really up."""
        while self.stopped and not self.worker.dead:
            ev = self._resumed
            if ev is None:
                break
            waits = {asyncio.ensure_future(ev.wait()), asyncio.ensure_future(self.worker.exit_event.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in waits:
                    t.cancel()
        return (self.paused() - paused_at_start) / 1e9


def attach_worker(worker: "_Worker") -> WorkerTools:
    """Build the tools' state for a new worker and pin the host tools object in its channel."""
    from .debug import HostTools

    wt = WorkerTools(worker)
    worker.ep.pin(HOST_TOOLS_ID, HostTools(worker, wt))
    return wt


async def worker_ready(ext: "Extension", worker: "_Worker") -> None:
    """A worker of ``ext`` finished init: give it the breakpoints and profiler state asked for."""
    from . import debug, profile

    await debug.hub().worker_ready(ext, worker)
    await profile.worker_ready(ext, worker)


async def manager_stopping(exts: List[Any]) -> None:
    """A manager is about to stop ``exts``: the profiler takes their workers' last records."""
    from . import profile

    await profile.manager_stopping(exts)


def extensions() -> List[Any]:
    """Every extension of every live manager (a snapshot of the dicts)."""
    out: List[Any] = []
    for m in managers():
        out.extend(list(m.extensions.values()))
    return out
