"""The debugger inside a worker: pdb over the cell's channel, and a Debug
Adapter Protocol engine.

Nothing here opens a socket: every byte a debugger session needs travels as
calls on the worker's own channel. Worker -> host: the host's tools object
(``debug_stop``, ``console_io``, ``debug_resume``) tells the host that a
thread stopped (the host then suspends call timeouts) and carries pdb's
terminal. Host -> worker: the worker's tools object
(:mod:`nodecell.tools.worker`) hands breakpoints, the session mode and DAP
requests to :class:`Debugger`. This module (and pdb) is imported only when a
debugger is first needed.

* ``breakpoint()`` in pack code (``sys.breakpointhook``) stops the calling
  thread: a pdb session on the host's terminal or an attached ``nodecell
  debug``, or a DAP ``stopped`` event when a DAP client is attached.
* Breakpoints set from the host (``nodecell debug --break pack/f.py:LINE``, or
  a DAP client's ``setBreakpoints``) are shared by every thread's debugger;
  a thread starts tracing when it next serves a call (the endpoint's
  ``call_hook``), so only threads running pack code pay for it.
"""

from __future__ import annotations

import bdb
import linecache
import logging
import os
import pdb
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

from . import HOST_TOOLS_ID

log = logging.getLogger("nodecell.debug")

#: Modules the debuggers never stop in (nodecell's own dispatch code, the debuggers themselves).
SKIP = ["nodecell", "nodecell.*", "bdb", "pdb"]

#: Breakpoints, in ``bdb.Bdb.breaks`` form (canonical file -> lines), shared by
#: every thread's debugger instance; ``bdb.Breakpoint`` keeps the conditions.
_BREAKS: Dict[str, List[int]] = {}

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _internal(frame: Any) -> bool:
    return frame.f_code.co_filename.startswith(_PKG_DIR + os.sep)


class HostLink:
    """Calls to the host's tools object that block the calling thread until answered,
    from any worker thread (inside the worker's event loop too)."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep

    def call(self, method: str, *args: Any) -> Any:
        from .._worker_rt import _Waiter

        w = _Waiter()
        call_id = self.ep._send_call(w, HOST_TOOLS_ID, method, args, {})
        self.ep._wait(call_id, w)
        if w.error is not None:
            raise w.error
        return w.value


def _where(frame: Any) -> Dict[str, Any]:
    return {"file": frame.f_code.co_filename, "line": frame.f_lineno, "function": frame.f_code.co_name,
            "thread": threading.current_thread().name}


def _arm(dbg: bdb.Bdb) -> None:
    """Trace this thread for breakpoints only (no stepping) with ``dbg``."""
    dbg.reset()
    f = sys._getframe()
    while f.f_back is not None:
        f = f.f_back
    dbg.botframe = f
    dbg._set_stopinfo(f, None, -1)  # type: ignore[attr-defined]
    sys.settrace(dbg.trace_dispatch)


# -- pdb over the channel ----------------------------------------------------------------------

class _ConsoleIO:
    """pdb's stdin and stdout: output is buffered and sent with the next prompt."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, host: HostLink) -> None:
        self.host = host
        self.buf: List[str] = []
        self.session: Optional[int] = None

    def write(self, s: str) -> int:
        self.buf.append(s)
        return len(s)

    def flush(self) -> None:
        pass

    def take(self) -> str:
        out = "".join(self.buf)
        self.buf.clear()
        return out

    def readline(self) -> str:
        line = self.host.call("console_io", self.session, self.take())
        return line if isinstance(line, str) and line else "continue\n"

    def isatty(self) -> bool:
        return False


class RemotePdb(pdb.Pdb):
    """pdb whose terminal is the host's (or an attached ``nodecell debug``'s)."""

    def __init__(self, tools: "Debugger") -> None:
        self.tools = tools
        self.io = _ConsoleIO(tools.host)
        super().__init__(stdin=self.io, stdout=self.io, skip=SKIP, nosigint=True, readrc=False)
        self.breaks = _BREAKS
        self.prompt = f"(Pdb {tools.ep.name}) "

    def clear_all_breaks(self) -> Optional[str]:
        clear_breaks()
        return None

    # A session (the host's console, call timeouts suspended) lasts from the first
    # stop until the thread runs freely again: `continue`, `quit`, or stepping
    # off the end of the pack's code back into nodecell's dispatcher.

    def interaction(self, frame: Any, traceback: Any) -> None:
        if frame is not None and _internal(frame):
            return
        if self.io.session is None and not self._open(frame):
            return
        try:
            super().interaction(frame, traceback)
        except BaseException:
            self._close()
            raise
        if self.quitting or (self.stopframe is self.botframe and self.stoplineno == -1):
            self._close()

    def user_return(self, frame: Any, return_value: Any) -> None:
        if self.io.session is not None and (frame.f_back is None or _internal(frame.f_back)):
            self._close()  # back in nodecell's dispatcher: the call is done
            self.set_continue()
            return
        super().user_return(frame, return_value)

    def _open(self, frame: Any) -> bool:
        where = _where(frame) if frame is not None else {}
        ans = self.tools.host.call("debug_stop", dict(where, mode="console"))
        if isinstance(ans, dict) and ans.get("console"):
            self.io.session = ans.get("session")
            return True
        why = ans.get("why", "") if isinstance(ans, dict) else ""
        if why != "disabled":
            log.warning("breakpoint at %s:%s ignored: %s", where.get("file"), where.get("line"), why)
        self.tools.host.call("debug_resume", None, "")
        self.set_continue()
        return False

    def _close(self) -> None:
        sid, self.io.session = self.io.session, None
        if sid is not None:
            self.tools.host.call("debug_resume", sid, self.io.take())


# -- the Debug Adapter Protocol engine ----------------------------------------------------------

class _Stop:
    __slots__ = ("dbg", "frame", "reason", "command", "frames")

    def __init__(self, dbg: "_DapThread", frame: Any, reason: str) -> None:
        self.dbg = dbg
        self.frame = frame
        self.reason = reason
        self.command: Optional[str] = None
        self.frames: List[Any] = []


class _DapThread(bdb.Bdb):
    """One thread's tracer for the DAP engine."""

    def __init__(self, engine: "DapEngine") -> None:
        super().__init__(skip=SKIP)
        self.breaks = _BREAKS
        self.engine = engine
        self.hint: Optional[str] = None

    def set_continue(self) -> None:
        self._set_stopinfo(self.botframe, None, -1)  # keep tracing: pause must keep working

    def user_call(self, frame: Any, argument_list: Any) -> None:
        pass  # stepping into a function stops at its first line instead

    def user_return(self, frame: Any, return_value: Any) -> None:
        pass

    def user_exception(self, frame: Any, exc_info: Any) -> None:
        pass

    def user_line(self, frame: Any) -> None:
        if _internal(frame):
            return
        reason = self.hint or ("breakpoint" if self._on_break(frame) else "step")
        self.hint = None
        self.engine.stop(self, frame, reason)

    def _on_break(self, frame: Any) -> bool:
        f = self.canonic(frame.f_code.co_filename)
        return frame.f_lineno in self.breaks.get(f, ())


class DapEngine:
    """The worker's half of a DAP session: stopped threads, frames, variables.

    Ids are local to this worker (the host maps them into the client's id space).
    Requests arrive on dispatcher threads while the stopped threads wait.
    """

    def __init__(self, tools: "Debugger") -> None:
        self.tools = tools
        self.cond = threading.Condition()
        self.stopped: Dict[int, _Stop] = {}
        self.tids: Dict[int, int] = {}
        self.refs: Dict[int, Tuple[int, Any]] = {}  # ref -> (tid, object or scope)
        self.frame_ids: Dict[int, Tuple[int, Any]] = {}
        self._next = 1
        self.detached = False
        self.local = threading.local()

    def thread_debugger(self) -> _DapThread:
        dbg = getattr(self.local, "dbg", None)
        if dbg is None:
            dbg = self.local.dbg = _DapThread(self)
        return dbg

    def tid(self, ident: Optional[int] = None) -> int:
        ident = threading.get_ident() if ident is None else ident
        with self.cond:
            t = self.tids.get(ident)
            if t is None:
                t = self.tids[ident] = len(self.tids) + 1
            return t

    def _ref(self, tid: int, obj: Any) -> int:
        r = self._next
        self._next += 1
        self.refs[r] = (tid, obj)
        return r

    # -- the stopped thread's side ---------------------------------------------------------------

    def stop(self, dbg: _DapThread, frame: Any, reason: str) -> None:
        tid = self.tid()
        st = _Stop(dbg, frame, reason)
        with self.cond:
            if self.detached:
                return
            self.stopped[tid] = st
        ans = self.tools.host.call("debug_stop", dict(_where(frame), mode="dap", tid=tid, reason=reason))
        if isinstance(ans, dict) and ans.get("resume"):
            st.command = "continue"
        with self.cond:
            while st.command is None and not self.detached:
                self.cond.wait(0.5)
            self.stopped.pop(tid, None)
            for table in (self.refs, self.frame_ids):
                for k in [k for k, v in table.items() if v[0] == tid]:
                    del table[k]
        cmd = st.command or "continue"
        if cmd == "next":
            dbg.set_next(frame)
        elif cmd == "stepIn":
            dbg.set_step()
        elif cmd == "stepOut":
            dbg.set_return(frame)
        else:
            dbg.set_continue()
        self.tools.host.call("debug_resume", None, "")

    def break_in(self, frame: Any) -> None:
        """``breakpoint()`` under DAP: stop at the caller's next line."""
        dbg = self.thread_debugger()
        dbg.hint = "breakpoint"
        sys.settrace(None)  # set_trace's own frames must not be traced
        dbg.set_trace(frame)

    def detach(self) -> None:
        """The client left: let every stopped thread run on."""
        with self.cond:
            self.detached = True
            self.cond.notify_all()

    # -- requests (dispatcher threads) -----------------------------------------------------------

    def request(self, command: str, args: Dict[str, Any]) -> Any:
        fn = getattr(self, "req_" + command, None)
        if fn is None:
            raise ValueError(f"unsupported request {command!r}")
        return fn(args)

    def _stop_of(self, args: Dict[str, Any]) -> _Stop:
        tid = args.get("threadId")
        st = self.stopped.get(tid)  # type: ignore[arg-type]
        if st is None:
            raise ValueError(f"thread {tid} is not stopped")
        return st

    def req_threads(self, args: Dict[str, Any]) -> Dict[str, Any]:
        out = []
        for t in threading.enumerate():
            if t.name == "nodecell-watchdog" or t.ident is None:
                continue
            out.append({"id": self.tid(t.ident), "name": t.name})
        return {"threads": out}

    def req_stackTrace(self, args: Dict[str, Any]) -> Dict[str, Any]:
        st = self._stop_of(args)
        tid = args["threadId"]
        frames = []
        f = st.frame
        while f is not None:
            if not _internal(f):
                frames.append(f)
            f = f.f_back
        start = int(args.get("startFrame") or 0)
        levels = int(args.get("levels") or 0) or len(frames)
        out = []
        with self.cond:
            for f in frames[start:start + levels]:
                fid = self._next
                self._next += 1
                self.frame_ids[fid] = (tid, f)
                path = f.f_code.co_filename
                out.append({"id": fid, "name": f.f_code.co_name, "line": f.f_lineno, "column": 1,
                            "source": {"name": os.path.basename(path), "path": path}})
        return {"stackFrames": out, "totalFrames": len(frames)}

    def _frame(self, fid: Any) -> Tuple[int, Any]:
        ent = self.frame_ids.get(fid)
        if ent is None:
            raise ValueError(f"unknown frame {fid}")
        return ent

    def req_scopes(self, args: Dict[str, Any]) -> Dict[str, Any]:
        tid, f = self._frame(args.get("frameId"))
        with self.cond:
            loc = self._ref(tid, ("locals", f))
            glo = self._ref(tid, ("globals", f))
        return {"scopes": [{"name": "Locals", "variablesReference": loc, "expensive": False},
                           {"name": "Globals", "variablesReference": glo, "expensive": True}]}

    def _value(self, tid: int, name: str, value: Any) -> Dict[str, Any]:
        try:
            text = repr(value)
        except Exception as e:  # noqa: BLE001 - a broken __repr__ must not break the debugger
            text = f"<repr failed: {type(e).__name__}>"
        if len(text) > 1000:
            text = text[:1000] + "..."
        ref = 0
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            if len(value):
                ref = self._ref(tid, value)
        elif hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value) \
                and type(value).__module__ != "builtins" and not isinstance(value, type(os)):
            ref = self._ref(tid, value)
        return {"name": name, "value": text, "type": type(value).__name__, "variablesReference": ref}

    def req_variables(self, args: Dict[str, Any]) -> Dict[str, Any]:
        ref = args.get("variablesReference")
        ent = self.refs.get(ref)  # type: ignore[arg-type]
        if ent is None:
            raise ValueError(f"unknown variablesReference {ref}")
        tid, obj = ent
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] in ("locals", "globals"):
            items = list((obj[1].f_locals if obj[0] == "locals" else obj[1].f_globals).items())
            if obj[0] == "globals":
                items = [(k, v) for k, v in items if not (k.startswith("__") and k.endswith("__"))]
        elif isinstance(obj, dict):
            items = [(repr(k), v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(obj)]
        elif isinstance(obj, (set, frozenset)):
            items = [(str(i), v) for i, v in enumerate(obj)]
        else:
            items = list(vars(obj).items())
        with self.cond:
            return {"variables": [self._value(tid, str(k), v) for k, v in items[:1000]]}

    def req_evaluate(self, args: Dict[str, Any]) -> Dict[str, Any]:
        expr = str(args.get("expression", ""))
        if args.get("frameId") is None:
            raise ValueError("evaluate needs a frameId (a stopped thread's frame)")
        tid, f = self._frame(args.get("frameId"))
        g, loc = f.f_globals, f.f_locals
        try:
            value = eval(compile(expr, "<debug>", "eval"), g, loc)  # noqa: S307 - the user's own debugger
        except SyntaxError:
            if args.get("context") != "repl":
                raise
            exec(compile(expr, "<debug>", "exec"), g, loc)  # noqa: S102
            return {"result": "", "variablesReference": 0}
        with self.cond:
            v = self._value(tid, expr, value)
        return {"result": v["value"], "type": v["type"], "variablesReference": v["variablesReference"]}

    def _resume(self, args: Dict[str, Any], command: str) -> Dict[str, Any]:
        st = self._stop_of(args)
        with self.cond:
            st.command = command
            self.cond.notify_all()
        return {"allThreadsContinued": False} if command == "continue" else {}

    def req_continue(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return self._resume(args, "continue")

    def req_next(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return self._resume(args, "next")

    def req_stepIn(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return self._resume(args, "stepIn")

    def req_stepOut(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return self._resume(args, "stepOut")

    def req_pause(self, args: Dict[str, Any]) -> Dict[str, Any]:
        tid = args.get("threadId")
        ident = next((i for i, t in self.tids.items() if t == tid), None)
        frame = sys._current_frames().get(ident) if ident is not None else None
        if frame is None:
            raise ValueError(f"thread {tid} is not running")
        dbgs = [d for d in _DAP_THREADS.get(ident, ()) if d.engine is self]
        if not dbgs:
            raise ValueError(f"thread {tid} has not run pack code since the debugger attached; it cannot be paused")
        dbg = dbgs[-1]
        dbg.hint = "pause"
        dbg.set_step()
        f = frame
        while f is not None:
            f.f_trace = dbg.trace_dispatch
            f = f.f_back
        return {}


#: thread ident -> the DAP tracers that thread has used.
_DAP_THREADS: Dict[int, List[_DapThread]] = {}


# -- the worker's tools object ---------------------------------------------------------------------

def clear_breaks() -> None:
    """Remove every breakpoint (all threads share them)."""
    for bp in list(bdb.Breakpoint.bpbynumber):
        if bp is not None:
            bp.deleteMe()
    _BREAKS.clear()


class Debugger:
    """A worker's debugger: breakpoints, the session mode, the engines (made on first use)."""

    def __init__(self, ep: Any, refresh_hooks: Any = None) -> None:
        self.ep = ep
        self.host = HostLink(ep)
        #: What the endpoint's ``call_hook`` should run for the debugger (None: nothing).
        self.call_hook: Any = None
        self._refresh = refresh_hooks
        self.mode: Optional[str] = None
        self.dap: Optional[DapEngine] = None
        self._local = threading.local()
        self._config_lock = threading.Lock()

    # -- debugger configuration ----------------------------------------------------------------

    def debug_config(self, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Replace the breakpoints and set the session mode (None, "console" or "dap").

        Returns one result per breakpoint: ``{"file", "line", "verified", "message"}``.
        """
        mode = cfg.get("mode")
        if mode not in (None, "console", "dap"):
            raise ValueError(f"debug mode must be None, 'console' or 'dap', got {mode!r}")
        with self._config_lock:
            return self._configure(mode, cfg.get("breaks", []))

    def _configure(self, mode: Optional[str], breaks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        clear_breaks()
        setter = bdb.Bdb()
        setter.breaks = _BREAKS
        results = []
        for b in breaks:
            path, line, cond = str(b["file"]), int(b["line"]), b.get("cond") or None
            linecache.checkcache(path)
            err = setter.set_break(path, line, cond=cond)
            results.append({"file": setter.canonic(path), "line": line, "verified": err is None,
                            "message": err})
        if mode != "dap" and self.dap is not None:
            self.dap.detach()
            self.dap = None
        if mode == "dap" and self.dap is None:
            self.dap = DapEngine(self)
        self.mode = mode
        armed = bool(_BREAKS) or mode == "dap"
        self.call_hook = self._on_call if armed else self._disarm_on_call
        if self._refresh is not None:
            self._refresh()
        else:
            self.ep.call_hook = self.call_hook
        threading.settrace(self._thread_start if armed else None)  # type: ignore[arg-type]
        if armed:
            self._arm_here()
        else:
            sys.settrace(None)
        return results

    def dap_request(self, command: str, args: Dict[str, Any]) -> Any:
        """One DAP request for this worker (ids are this worker's)."""
        if self.dap is None:
            raise ValueError("no DAP session is attached to this worker")
        return self.dap.request(command, args or {})

    # -- tracing ---------------------------------------------------------------------------------

    def thread_debugger(self) -> bdb.Bdb:
        """This thread's debugger for the current mode."""
        if self.mode == "dap" and self.dap is not None:
            dbg: bdb.Bdb = self.dap.thread_debugger()
            lst = _DAP_THREADS.setdefault(threading.get_ident(), [])
            if dbg not in lst:
                lst.append(dbg)  # type: ignore[arg-type]
            return dbg
        dbg = getattr(self._local, "pdb", None)
        if dbg is None:
            dbg = self._local.pdb = RemotePdb(self)
        return dbg

    def _arm_here(self) -> None:
        dbg = self.thread_debugger()
        if getattr(dbg, "quitting", True) or sys.gettrace() != dbg.trace_dispatch:
            _arm(dbg)

    def _on_call(self, call_id: int, payload: Any) -> None:
        """Endpoint hook: before serving a call, make sure this thread traces (never raises)."""
        try:
            self._arm_here()
        except Exception:  # noqa: BLE001 - the debugger must never break a call
            log.exception("debugger: could not trace this thread")

    def _disarm_on_call(self, call_id: int, payload: Any) -> None:
        if sys.gettrace() is not None:
            sys.settrace(None)

    def _thread_start(self, frame: Any, event: str, arg: Any) -> Any:
        """``threading.settrace``: threads the pack starts trace too."""
        dbg = self.thread_debugger()
        sys.settrace(None)
        _arm(dbg)
        return dbg.trace_dispatch(frame, event, arg)

    def break_in(self, frame: Any) -> None:
        """``breakpoint()`` called in ``frame``: stop there."""
        if self.mode == "dap" and self.dap is not None:
            _DAP_THREADS.setdefault(threading.get_ident(), [])
            self.dap.break_in(frame)
            return
        dbg = self.thread_debugger()
        sys.settrace(None)  # set_trace's own frames must not be traced
        dbg.set_trace(frame)
