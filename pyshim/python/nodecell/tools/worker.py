"""The worker's tools object, pinned at :data:`~nodecell.tools.WORKER_TOOLS_ID` in
every worker: the host configures the debugger and the profiler through it.

Kept light: the debugger (:mod:`nodecell.tools.debugee`, which imports pdb) and
the profiler's worker half are imported on first use, so a worker that is never
debugged or profiled pays nothing but this object. Both use the endpoint's
``call_hook`` (before a call runs) and the profiler its ``reply_hook`` (around
sending a reply); :meth:`WorkerTools.refresh_hooks` sets them to exactly what
is switched on (None when nothing is).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional

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

            self._debugger = Debugger(self._ep, self.refresh_hooks)
        return self._debugger

    def debug_config(self, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Replace breakpoints and the session mode; see :meth:`debugee.Debugger.debug_config`."""
        return self._debug().debug_config(cfg)

    def dap_request(self, command: str, args: Dict[str, Any]) -> Any:
        """Serve one Debug Adapter Protocol request (this worker's ids)."""
        return self._debug().dap_request(command, args)

    def profile(self, on: bool) -> Dict[str, Any]:
        """Turn span recording on or off; returns this worker's pid and thread names."""
        from .profile_worker import profiler

        p = self._profiler = profiler(self._ep)
        p.on = bool(on)
        if hasattr(self._ep.channel, "set_profiling"):
            self._ep.channel.set_profiling(p.on)
        self.refresh_hooks()
        import os

        return {"pid": os.getpid(), "on": p.on}

    def profile_drain(self) -> List[Any]:
        """The span records since the last drain (and forget them)."""
        if self._profiler is None:
            return []
        return self._profiler.drain()

    def breakpointhook(self, *args: Any, **kwargs: Any) -> None:
        """``sys.breakpointhook``: stop the caller in the debugger."""
        self._debug().break_in(sys._getframe(1))

    def refresh_hooks(self) -> None:
        """Point the endpoint's hooks at what is on now."""
        hooks: List[Callable[[int, Any], None]] = []
        dbg = self._debugger.call_hook if self._debugger is not None else None
        if dbg is not None:
            hooks.append(dbg)
        prof = self._profiler if self._profiler is not None and self._profiler.on else None
        if prof is not None:
            hooks.append(prof.begin)
        if not hooks:
            self._ep.call_hook = None
        elif len(hooks) == 1:
            self._ep.call_hook = hooks[0]
        else:
            first, second = hooks

            def both(call_id: int, payload: Any) -> None:
                first(call_id, payload)
                second(call_id, payload)

            self._ep.call_hook = both
        self._ep.reply_hook = prof.replied if prof is not None else None


def install(ep: Any) -> WorkerTools:
    """Pin the tools object in a new worker's endpoint and route ``breakpoint()`` to it."""
    tools = WorkerTools(ep)
    ep.pin(WORKER_TOOLS_ID, tools)
    sys.breakpointhook = tools.breakpointhook
    return tools
