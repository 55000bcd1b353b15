"""The host's half of debugging isolated packs.

* :class:`HostTools` is pinned in every worker's channel
  (:data:`~nodecell.tools.HOST_TOOLS_ID`); a worker's debugger calls it when a
  thread stops (``debug_stop``: call timeouts of that worker stop counting),
  for pdb's terminal (``console_io``) and when the thread runs on
  (``debug_resume``).
* :class:`Hub` (one per process) decides where a pdb session goes — an
  attached ``nodecell debug`` client for that pack, else this process's
  terminal when stdin is one, else nowhere (the breakpoint is skipped with a
  warning; ``PYTHONBREAKPOINT=0`` skips silently) — lets one session at a time
  use a terminal, and pushes breakpoints and the session mode to workers
  (now and whenever a worker starts).
* Clients attach over the tools socket (:mod:`nodecell.tools.server`):
  ``{"op": "debug", "mode": "console"|"dap", "pack": NAME|null,
  "breaks": [{"spec": "pack/file.py:LINE", "cond": EXPR|null}]}``; DAP
  sessions are bridged by :mod:`nodecell.tools.dap`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import linecache
import logging
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

from . import WORKER_TOOLS_ID, hooks

if TYPE_CHECKING:
    from ..cell import _Worker
    from .server import Conn

log = logging.getLogger("nodecell.debug")


# -- breakpoint specs ------------------------------------------------------------------------------

class Break:
    """One breakpoint asked for: ``pack/rel/path.py:LINE`` or ``/abs/path.py:LINE``."""

    def __init__(self, spec: str, cond: Optional[str] = None) -> None:
        self.spec = spec
        self.cond = cond or None
        path, sep, line = spec.rpartition(":")
        if not sep or not path or not line.strip().isdigit() or int(line) <= 0:
            raise ValueError(f"breakpoint {spec!r}: expected PACK/FILE.py:LINE or /ABS/FILE.py:LINE")
        self.line = int(line)
        self.abs: Optional[str] = None
        self.pack: Optional[str] = None
        self.rel: Optional[str] = None
        if os.path.isabs(path):
            self.abs = os.path.normpath(path)
        else:
            pack, _, rel = path.partition("/")
            if not rel:
                raise ValueError(f"breakpoint {spec!r}: name the pack and a file in it (PACK/FILE.py:LINE)")
            self.pack, self.rel = pack, os.path.normpath(rel)
            if self.rel.startswith(".."):
                raise ValueError(f"breakpoint {spec!r}: the file must be inside the pack")

    def file_for(self, ext: Any) -> Optional[str]:
        """The file this breakpoint names in ``ext``'s pack, or None when it is not about ``ext``."""
        root = os.path.normpath(ext.config["module_path"])
        if self.abs is not None:
            return self.abs if self.abs.startswith(root + os.sep) else None
        if self.pack in (ext.name, os.path.basename(root)):
            return os.path.join(root, self.rel or "")
        return None

    def to_dict(self) -> Dict[str, Any]:
        return {"spec": self.spec, "cond": self.cond}


# -- turn-taking on one terminal ------------------------------------------------------------------

def _grant(turn: "Turn", key: Any, fut: "asyncio.Future", value: bool) -> None:
    if fut.done():  # the waiter gave up (its worker died): pass the turn on
        if value:
            turn.release(key)
        return
    fut.set_result(value)


class Turn:
    """One pdb session at a time on a terminal; waiters may be on any event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: Any = None
        self._queue: Deque[Tuple[Any, asyncio.AbstractEventLoop, asyncio.Future]] = collections.deque()

    async def acquire(self, key: Any) -> bool:
        """Wait for the turn; False when the terminal went away meanwhile."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.owner is None:
                self.owner = key
                return True
            fut = loop.create_future()
            self._queue.append((key, loop, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            self.release(key)
            raise

    def release(self, key: Any) -> None:
        with self._lock:
            if self.owner != key:
                self._queue = collections.deque(q for q in self._queue if q[0] != key)
                return
            self.owner = None
            if self._queue:
                k, loop, fut = self._queue.popleft()
                self.owner = k
                loop.call_soon_threadsafe(_grant, self, k, fut, True)

    def close(self) -> None:
        with self._lock:
            waiting, self._queue = list(self._queue), collections.deque()
            self.owner = None
        for k, loop, fut in waiting:
            loop.call_soon_threadsafe(_grant, self, k, fut, False)


# -- consoles: where a pdb session's text goes ------------------------------------------------------

class Console:
    """A terminal a pdb session can use."""

    name = "console"

    def __init__(self) -> None:
        self.turn = Turn()
        self.gone = False

    def begin(self, pack: str, wid: int, where: Dict[str, Any]) -> None:
        """A session starts (the worker's thread is stopped at ``where``)."""

    def write(self, text: str) -> None:
        raise NotImplementedError

    async def readline(self) -> Optional[str]:
        """One line typed by the user (None: the console went away)."""
        raise NotImplementedError

    def end(self) -> None:
        """The session is over (the thread runs again)."""


class TerminalConsole(Console):
    """This process's own terminal (stdin and stdout)."""

    name = "terminal"

    def __init__(self) -> None:
        super().__init__()
        self._buf = b""

    @staticmethod
    def available() -> bool:
        try:
            return sys.stdin is not None and os.isatty(sys.stdin.fileno())
        except (OSError, ValueError, AttributeError):
            return False

    def begin(self, pack: str, wid: int, where: Dict[str, Any]) -> None:
        self.write(f"\n--- nodecell: pack {pack!r} worker #{wid} stopped at "
                   f"{where.get('file')}:{where.get('line')} (call timeouts suspended) ---\n")

    def write(self, text: str) -> None:
        if not text:
            return
        out = sys.stdout
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):
            pass

    async def readline(self) -> Optional[str]:
        loop = asyncio.get_running_loop()
        fd = sys.stdin.fileno()
        while b"\n" not in self._buf:
            fut = loop.create_future()

            def on_read() -> None:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not fut.done():
                    fut.set_result(data)

            loop.add_reader(fd, on_read)
            try:
                data = await fut
            finally:
                loop.remove_reader(fd)
            if not data:
                if self._buf:
                    break
                return None
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace") + "\n"

    def end(self) -> None:
        self.write("--- nodecell: resumed ---\n")


class Client(Console):
    """A ``nodecell debug`` attached over the tools socket."""

    def __init__(self, hub: "Hub", conn: "Conn", mode: str, pack: Optional[str], breaks: List[Break]) -> None:
        super().__init__()
        self.hub = hub
        self.conn = conn
        self.mode = mode
        self.pack = pack
        self.breaks = breaks
        self.name = f"nodecell debug (connection {id(conn):x})"
        self._lock = threading.Lock()
        self._lines: Deque[str] = collections.deque()
        self._waiter: Optional[Tuple[asyncio.AbstractEventLoop, asyncio.Future]] = None
        self.dap: Any = None

    def wants(self, ext: Any) -> bool:
        return self.pack is None or self.pack in (ext.name, os.path.basename(
            os.path.normpath(ext.config["module_path"])))

    # console side
    def begin(self, pack: str, wid: int, where: Dict[str, Any]) -> None:
        self.conn.send({"ev": "stop", "pack": pack, "wid": wid, "file": where.get("file"),
                        "line": where.get("line"), "function": where.get("function")})

    def write(self, text: str) -> None:
        if text:
            self.conn.send({"ev": "output", "text": text})

    async def readline(self) -> Optional[str]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._lines:
                return self._lines.popleft()
            if self.gone:
                return None
            fut = loop.create_future()
            self._waiter = (loop, fut)
        self.conn.send({"ev": "input"})
        try:
            return await fut
        finally:
            with self._lock:
                if self._waiter is not None and self._waiter[1] is fut:
                    self._waiter = None

    def end(self) -> None:
        self.conn.send({"ev": "resume"})

    def _deliver(self, line: Optional[str]) -> None:
        with self._lock:
            w, self._waiter = self._waiter, None
            if w is None:
                if line is not None:
                    self._lines.append(line)
                return
        loop, fut = w
        loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(line))

    # socket side (the server's thread)
    def on_line(self, msg: Dict[str, Any]) -> None:
        if "input" in msg:
            text = str(msg["input"])
            self._deliver(text if text.endswith("\n") else text + "\n")
        elif "dap" in msg and self.dap is not None:
            self.dap.on_message(msg["dap"])
        elif msg.get("op") == "detach":
            self.conn.close()
        else:
            self.conn.send({"error": "expected {\"input\": ...}, {\"dap\": ...} or {\"op\": \"detach\"}"})

    def on_close(self) -> None:
        self.gone = True
        self._deliver(None)
        self.turn.close()
        if self.dap is not None:
            self.dap.closed()
        self.hub.detach(self)


# -- the hub ----------------------------------------------------------------------------------------

class Hub:
    """Where debugger sessions go, and which breakpoints each worker has."""

    def __init__(self) -> None:
        self.terminal = TerminalConsole()
        self.clients: List[Client] = []
        self._lock = threading.Lock()
        self._sessions: Dict[int, Tuple[Any, Console]] = {}
        self._sids = itertools.count(1)
        self.touched = False  # whether any worker may hold a non-default config
        self._push_locks: "weakref.WeakKeyDictionary[Any, asyncio.Lock]" = weakref.WeakKeyDictionary()

    # -- attaching (server thread) ---------------------------------------------------------------

    def attach(self, conn: "Conn", msg: Dict[str, Any]) -> None:
        mode = msg.get("mode", "console")
        if mode not in ("console", "dap"):
            conn.send({"error": f"debug mode must be 'console' or 'dap', got {mode!r}"})
            return
        pack = msg.get("pack")
        if pack is not None and not isinstance(pack, str):
            conn.send({"error": "pack must be a string"})
            return
        try:
            breaks = [Break(str(b["spec"]), b.get("cond")) for b in msg.get("breaks") or []]
        except (ValueError, KeyError, TypeError) as e:
            conn.send({"error": str(e) if isinstance(e, ValueError) else f"malformed breaks: {e}"})
            return
        client = Client(self, conn, mode, pack, breaks)
        if mode == "dap":
            from .dap import DapBridge

            client.dap = DapBridge(self, client)
        conn.on_line = client.on_line
        conn.on_close = client.on_close
        with self._lock:
            self.clients.append(client)
            self.touched = True
        exts = hooks.extensions()
        hello = {"ev": "attached", "pid": os.getpid(), "mode": mode, "packs": [e.name for e in exts],
                 "breaks": [self._describe(b, exts) for b in breaks]}
        self.push_all(then=lambda: conn.send(hello))  # answered once the workers have the breakpoints

    @staticmethod
    def _describe(b: Break, exts: List[Any]) -> Dict[str, Any]:
        hits = [(e.name, b.file_for(e)) for e in exts if b.file_for(e)]
        d: Dict[str, Any] = {"spec": b.spec, "line": b.line}
        if not hits:
            d["status"] = "pending"
            d["message"] = "no loaded pack matches yet; set when one loads"
            return d
        pack, path = hits[0]
        d["pack"], d["file"] = pack, path
        if not os.path.isfile(path):  # type: ignore[arg-type]
            d["status"], d["message"] = "invalid", f"{path}: no such file"
        elif not linecache.getline(path, b.line):  # type: ignore[arg-type]
            d["status"], d["message"] = "invalid", f"{path} has no line {b.line}"
        else:
            d["status"] = "set"
        return d

    def detach(self, client: Client) -> None:
        with self._lock:
            if client in self.clients:
                self.clients.remove(client)
        self.push_all()

    # -- configuration of workers ----------------------------------------------------------------

    def config_for(self, ext: Any) -> Dict[str, Any]:
        with self._lock:
            clients = [c for c in self.clients if c.wants(ext)]
        mode = None
        if any(c.mode == "dap" for c in clients):
            mode = "dap"
        elif clients:
            mode = "console"
        breaks = []
        seen = set()
        for c in clients:
            bl = list(c.breaks)
            if c.dap is not None:
                bl += c.dap.breaks()
            for b in bl:
                path = b.file_for(ext)
                if path is not None and (path, b.line) not in seen:
                    seen.add((path, b.line))
                    breaks.append({"file": path, "line": b.line, "cond": b.cond})
        return {"mode": mode, "breaks": breaks}

    async def push(self, ext: Any, workers: Optional[List[Any]] = None) -> None:
        """Send ``ext``'s debugger config to its workers (all live ones by default).

        Pushes to one extension take turns and each reads the config when its turn
        comes, so the last one sent is always the newest."""
        lock = self._push_locks.get(ext)
        if lock is None:
            lock = self._push_locks[ext] = asyncio.Lock()
        async with lock:
            cfg = self.config_for(ext)
            for w in workers if workers is not None else [w for w in ext._workers if w.alive]:
                try:
                    results = await ext._call_on(w, WORKER_TOOLS_ID, "debug_config", (cfg,), {},
                                                 internal=True, timeout=30)
                except Exception as e:  # noqa: BLE001 - a dying worker is not the debugger's problem
                    log.debug("pack %r worker #%d: debugger config not applied: %s", ext.name, w.wid, e)
                    continue
                for r in results or []:
                    if not r.get("verified"):
                        self.notify(ext, f"pack {ext.name!r} worker #{w.wid}: breakpoint not set: "
                                         f"{r.get('message')}")

    def push_all(self, then: Optional[Callable[[], None]] = None) -> None:
        """Push every extension's config, each on its manager's loop (any thread);
        ``then()`` runs (on some thread) once every worker has its config."""
        futs = []
        for ext in hooks.extensions():
            cell = ext._cell
            if not ext.config["isolated"] or not ext._workers or cell is None or cell.loop.is_closed():
                continue
            futs.append(asyncio.run_coroutine_threadsafe(self.push(ext), cell.loop))  # calls run on the cell's loop
        if then is None:
            return
        if not futs:
            then()
            return
        left = [len(futs)]
        lock = threading.Lock()

        def one_done(_f: Any) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                then()

        for f in futs:
            f.add_done_callback(one_done)

    async def worker_ready(self, ext: Any, worker: Any) -> None:
        if self.touched:
            await self.push(ext, [worker])

    def notify(self, ext: Any, text: str) -> None:
        with self._lock:
            clients = [c for c in self.clients if c.wants(ext)]
        for c in clients:
            if c.dap is not None:
                c.dap.output(text + "\n")
            else:
                c.conn.send({"ev": "note", "text": text})

    # -- sessions (the worker's calls, on its cell's loop) ---------------------------------------

    def _console_for(self, ext: Any) -> Optional[Console]:
        with self._lock:
            for c in self.clients:
                if c.mode == "console" and c.wants(ext) and not c.gone:
                    return c
        if self.terminal.available():
            return self.terminal
        return None

    def dap_client_for(self, ext: Any) -> Optional[Client]:
        with self._lock:
            for c in self.clients:
                if c.mode == "dap" and c.wants(ext) and not c.gone:
                    return c
        return None

    async def on_stop(self, w: "_Worker", info: Dict[str, Any]) -> Dict[str, Any]:
        ext = w.cell.ext
        wt = w.tools  # type: ignore[attr-defined]
        wt.on_stop()
        if info.get("mode") == "dap":
            client = self.dap_client_for(ext)
            if client is None:
                return {"resume": True}
            client.dap.worker_stopped(ext, w, info)
            return {"ok": True}
        if os.environ.get("PYTHONBREAKPOINT") == "0":
            return {"console": False, "why": "disabled"}
        console = self._console_for(ext)
        if console is None:
            return {"console": False, "why": "this process has no terminal and no `nodecell debug` is attached "
                                            f"(attach one: nodecell debug --pid {os.getpid()})"}
        sid = next(self._sids)
        if not await console.turn.acquire(sid):
            return {"console": False, "why": f"{console.name} went away"}
        with self._lock:
            self._sessions[sid] = (w, console)
        console.begin(ext.name, w.wid, info)
        asyncio.ensure_future(self._watch(sid, w))
        return {"console": True, "session": sid}

    async def _watch(self, sid: int, w: "_Worker") -> None:
        """End a session whose worker died while stopped."""
        await w.exit_event.wait()
        with self._lock:
            ent = self._sessions.pop(sid, None)
        if ent is not None:
            ent[1].write(f"\n--- nodecell: worker #{w.wid} of pack {w.cell.name!r} exited ---\n")
            ent[1].end()
            ent[1].turn.release(sid)
            w.tools.on_exit()  # type: ignore[attr-defined]

    async def console_io(self, w: "_Worker", sid: int, output: str) -> str:
        with self._lock:
            ent = self._sessions.get(sid)
        if ent is None:
            return "continue\n"
        console = ent[1]
        console.write(output)
        line = await console.readline()
        return line if line else "continue\n"

    def on_resume(self, w: "_Worker", sid: Optional[int], output: str) -> None:
        w.tools.on_resume()  # type: ignore[attr-defined]
        if sid is None:
            return
        with self._lock:
            ent = self._sessions.pop(sid, None)
        if ent is not None:
            ent[1].write(output)
            ent[1].end()
            ent[1].turn.release(sid)


_hub: Optional[Hub] = None
_hub_lock = threading.Lock()


def hub() -> Hub:
    """The process's debugger hub."""
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = Hub()
        return _hub


class HostTools:
    """Pinned in a worker's channel: what that worker's debugger asks of the host."""

    def __init__(self, worker: "_Worker", wt: Any) -> None:
        self._w = worker
        self._wt = wt

    async def debug_stop(self, info: Dict[str, Any]) -> Dict[str, Any]:
        """A thread of the worker stopped; answers where its pdb session goes."""
        if not isinstance(info, dict):
            raise TypeError("debug_stop takes a dict")
        return await hub().on_stop(self._w, info)

    async def console_io(self, session: int, output: str) -> str:
        """Show ``output`` on the session's console and return the next line typed."""
        return await hub().console_io(self._w, int(session), str(output)[:1 << 20])

    def debug_resume(self, session: Optional[int] = None, output: str = "") -> None:
        """The stopped thread runs again."""
        hub().on_resume(self._w, session if isinstance(session, int) else None, str(output)[:1 << 20])
