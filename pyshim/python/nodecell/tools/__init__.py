"""Developer tools for isolated nodes: ``nodecell top``, ``nodecell debug``, profiles.

Host side (this process runs cells):

* Every process with an :class:`nodecell.ExtensionManager` listens on a tools
  socket, ``$XDG_RUNTIME_DIR/nodecell/<pid>.sock`` (mode 0600, in a private
  directory; see :func:`socket_path`), that ``nodecell top`` reads stats from
  and ``nodecell debug`` attaches debuggers through. ``NODECELL_TOOLS=0`` in
  the environment turns it off; :func:`serve` / :func:`stop_serving` do the
  same from code.
* Call counters per extension (calls, errors, a latency histogram) are a few
  atomic increments in Rust per call (``_nodecell.CallStats``).
* ``breakpoint()`` in pack code opens pdb in this process's terminal (or in an
  attached ``nodecell debug``), carried over the cell's own channel: no port,
  no network wall opened. Call timeouts stop counting while a worker is
  stopped in a debugger.
* Profiles: ``NODECELL_PROFILE=trace.json`` (or :func:`start_profile`) records
  queue / encode / transfer / execute / decode spans of every call on both
  sides and writes a Chrome-trace / Perfetto JSON file (see
  :mod:`nodecell.tools.profile`).

Worker side: :mod:`nodecell.tools.debugee` (the debugger engines) and the
profiler's worker half, reachable from the host under :data:`WORKER_TOOLS_ID`.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "HOST_TOOLS_ID",
    "WORKER_TOOLS_ID",
    "serve",
    "socket_path",
    "start_profile",
    "start_profile_async",
    "stop_profile",
    "stop_profile_async",
    "stop_serving",
]

#: Handle id of the host's tools object in every worker's channel (the host side pins it).
HOST_TOOLS_ID = 2
#: Handle id of the worker's tools object (debugger, profiler) in every worker.
WORKER_TOOLS_ID = 2


def serve() -> Optional[str]:
    """Start this process's tools socket now (idempotent); returns its path, or None when
    ``NODECELL_TOOLS=0`` turns it off or its directory is not private (logged)."""
    from . import server

    return server.serve()


def stop_serving() -> None:
    """Close this process's tools socket and remove it."""
    from . import server

    server.stop()


def socket_path() -> Optional[str]:
    """The path this process's tools socket has while served, else None."""
    from . import server

    return server.path()


def start_profile(path: str) -> None:
    """Record a profile of every call from now on (all extensions of this process);
    :func:`stop_profile` writes it to ``path`` (Chrome trace / Perfetto JSON)."""
    from . import profile

    profile.start(path)


def stop_profile() -> Optional[str]:
    """Stop recording and write the trace file (workers' spans included); returns its path.
    From a thread that runs no cell's event loop; inside one, await :func:`stop_profile_async`."""
    from . import profile

    return profile.stop_sync()


async def start_profile_async(path: str) -> None:
    """:func:`start_profile` for coroutines: returns once every worker records."""
    from . import profile

    await profile.start_async(path)


async def stop_profile_async() -> Optional[str]:
    """:func:`stop_profile` for coroutines."""
    from . import profile

    return await profile.stop_async()
