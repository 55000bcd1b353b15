"""The worker's tools object, pinned at :data:`~nodecell.tools.WORKER_TOOLS_ID` in
every worker: the host configures the debugger and the profiler through it.

Kept light: the debugger (:mod:`nodecell.tools.debugee`, which imports pdb) and
the profiler's worker half are imported on first use, so a worker that is never
debugged or profiled pays nothing but this object.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

from . import WORKER_TOOLS_ID


class WorkerTools:
    """What the host may ask of a worker's tools (public methods are remote-callable)."""

    def __init__(self, ep: Any) -> None:
        self._ep = ep
        self._debugger: Optional[Any] = None
        self._profiler: Optional[Any] = None

    def _debug(self) -> Any:
        if self._debugger is None:
            from .debugee import Debugger

            self._debugger = Debugger(self._ep)
        return self._debugger

    def debug_config(self, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Replace breakpoints and the session mode; see :meth:`debugee.Debugger.debug_config`."""
        return self._debug().debug_config(cfg)

    def dap_request(self, command: str, args: Dict[str, Any]) -> Any:
        """Serve one Debug Adapter Protocol request (this worker's ids)."""
        return self._debug().dap_request(command, args)

    def profile(self, on: bool) -> bool:
        """Turn span recording on or off; returns whether it is on."""
        from .profile_worker import profiler

        p = profiler(self._ep)
        p.enable(on)
        return on

    def profile_drain(self) -> List[Any]:
        """The spans recorded since the last drain (and forget them)."""
        from .profile_worker import profiler

        return profiler(self._ep).drain()

    def breakpointhook(self, *args: Any, **kwargs: Any) -> None:
        """``sys.breakpointhook``: stop the caller in the debugger."""
        self._debug().break_in(sys._getframe(1))


def install(ep: Any) -> WorkerTools:
    """Pin the tools object in a new worker's endpoint and route ``breakpoint()`` to it."""
    tools = WorkerTools(ep)
    ep.pin(WORKER_TOOLS_ID, tools)
    sys.breakpointhook = tools.breakpointhook
    return tools
