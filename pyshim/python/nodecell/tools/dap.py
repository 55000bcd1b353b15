"""A Debug Adapter Protocol bridge from one client to every worker of the packs it attached to.

``nodecell debug --dap`` speaks DAP (Content-Length framing) on its stdio or a
unix socket and relays each message here as ``{"dap": message}`` over the
tools socket. This bridge answers the session-level requests itself
(``initialize``, ``attach``/``launch``, ``configurationDone``,
``setBreakpoints``, ``setExceptionBreakpoints``, ``disconnect``) and routes the
rest to the worker that owns the thread, frame or variable named, as calls to
its tools object (:class:`nodecell.tools.debugee.DapEngine`). Worker ids are
mapped into one id space per client: a thread of pack ``p`` worker ``#2``
appears as ``p#2 <thread name>``.
"""

from __future__ import annotations

import asyncio
import itertools
import linecache
import os
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from . import WORKER_TOOLS_ID, hooks

if TYPE_CHECKING:
    from .debug import Break, Client, Hub

_Key = Tuple[str, int, int]  # (pack, worker id, the worker's own id)

CAPABILITIES = {
    "supportsConfigurationDoneRequest": True,
    "supportsConditionalBreakpoints": True,
    "supportsEvaluateForHovers": True,
    "supportsSetVariable": False,
    "supportsTerminateRequest": False,
    "supportTerminateDebuggee": False,
}

#: Requests a worker answers, and the argument that names the worker.
ROUTED = {
    "stackTrace": "threadId", "continue": "threadId", "next": "threadId", "stepIn": "threadId",
    "stepOut": "threadId", "pause": "threadId", "scopes": "frameId", "evaluate": "frameId",
    "variables": "variablesReference",
}


class DapError(Exception):
    """A request that cannot be served (sent back as an unsuccessful response)."""


#: Requests that let a stopped thread run on: its next ``stopped`` event waits for their response.
RESUMING = frozenset({"continue", "next", "stepIn", "stepOut"})


def _find(pack: str, wid: int) -> Tuple[Any, Any]:
    for ext in hooks.extensions():
        if ext.name == pack:
            for w in ext._workers:
                if w.wid == wid and w.alive:
                    return ext, w
            raise DapError(f"worker #{wid} of pack {pack!r} is gone")
    raise DapError(f"pack {pack!r} is not loaded")


def host_path(ext: Any, path: str) -> str:
    """The host's path of a file a worker names by its sandbox path (the nodecell
    package and host modules are mounted under /run/nodecell); others are the same."""
    from .. import cell, manager

    lib = cell.SANDBOX_LIB + "/nodecell/"
    if path.startswith(lib):
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path[len(lib):])
    if path.startswith(cell.SANDBOX_HOST + "/"):
        top, _, rest = path[len(cell.SANDBOX_HOST) + 1:].partition("/")
        for mod in ext._manager._host_modules(ext.config):
            m = manager._module_mount(mod)
            if m is not None and m[1] == top:
                return os.path.join(m[0], rest) if rest else m[0]
    return path


class DapBridge:
    """One DAP client's session."""

    def __init__(self, hub: "Hub", client: "Client") -> None:
        self.hub = hub
        self.client = client
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._src: Dict[str, List["Break"]] = {}
        self._thread_ids: Dict[_Key, int] = {}
        self._threads: Dict[int, _Key] = {}
        self._ids: Dict[int, _Key] = {}  # frame ids and variable references
        self._next_id = itertools.count(1)
        #: Threads being resumed (client thread id -> stopped events held back): a client
        #: sees the response to its continue/next/step before the thread's next stop.
        self._resuming: Dict[int, List[Dict[str, Any]]] = {}

    # -- output --------------------------------------------------------------------------------

    def send(self, msg: Dict[str, Any]) -> None:
        msg["seq"] = next(self._seq)
        self.client.conn.send({"dap": msg})

    def event(self, name: str, body: Optional[Dict[str, Any]] = None) -> None:
        self.send({"type": "event", "event": name, "body": body or {}})

    def respond(self, req: Dict[str, Any], body: Any = None, error: Optional[str] = None) -> None:
        msg: Dict[str, Any] = {"type": "response", "request_seq": req.get("seq", 0),
                               "command": req.get("command", ""), "success": error is None}
        if error is not None:
            msg["message"] = error
            msg["body"] = {"error": {"id": 1, "format": error}}
        else:
            msg["body"] = body or {}
        self.send(msg)

    def output(self, text: str) -> None:
        self.event("output", {"category": "console", "output": text})

    def breaks(self) -> List["Break"]:
        with self._lock:
            return [b for bl in self._src.values() for b in bl]

    # -- ids -----------------------------------------------------------------------------------

    def _thread_id(self, key: _Key) -> int:
        with self._lock:
            gid = self._thread_ids.get(key)
            if gid is None:
                gid = len(self._thread_ids) + 1
                self._thread_ids[key] = gid
                self._threads[gid] = key
            return gid

    def _global(self, pack: str, wid: int, local: int) -> int:
        if not local:
            return 0
        gid = next(self._next_id)
        with self._lock:
            self._ids[gid] = (pack, wid, local)
        return gid

    def _lookup(self, arg: str, value: Any) -> _Key:
        table = self._threads if arg == "threadId" else self._ids
        with self._lock:
            key = table.get(value)
        if key is None:
            raise DapError(f"unknown {arg} {value!r}")
        return key

    # -- events from workers (their cell's loop) ------------------------------------------------

    def worker_stopped(self, ext: Any, w: Any, info: Dict[str, Any]) -> None:
        gid = self._thread_id((ext.name, w.wid, int(info.get("tid", 0))))
        body = {"reason": info.get("reason", "breakpoint"), "threadId": gid, "allThreadsStopped": False,
                "description": f"{ext.name}#{w.wid} at {info.get('file')}:{info.get('line')}"}
        with self._lock:
            held = self._resuming.get(gid)
            if held is not None:  # the response to the request that resumed it is not out yet
                held.append(body)
                return
        self.event("stopped", body)

    def closed(self) -> None:
        """The client went away (the hub detaches it and resumes its workers)."""

    # -- requests (the tools server's thread) ---------------------------------------------------

    def on_message(self, msg: Any) -> None:
        if not isinstance(msg, dict) or msg.get("type") != "request":
            return
        cmd = msg.get("command")
        args = msg.get("arguments") or {}
        try:
            if cmd == "initialize":
                self.respond(msg, CAPABILITIES)
                self.event("initialized")
            elif cmd in ("attach", "launch"):
                packs = [e.name for e in hooks.extensions() if self.client.wants(e)]
                self.respond(msg)
                self.output(f"nodecell: attached to process {os.getpid()}, packs: {', '.join(packs) or 'none yet'}\n")
            elif cmd in ("configurationDone", "setExceptionBreakpoints"):
                self.respond(msg, {"breakpoints": []} if cmd == "setExceptionBreakpoints" else None)
            elif cmd == "setBreakpoints":
                body = self._set_breakpoints(args)
                # Answered once every worker has them: a client may run the code right after.
                self.hub.push_all(then=lambda: self.respond(msg, body))
            elif cmd in ("disconnect", "terminate"):
                self.respond(msg)
                self.hub.detach(self.client)
            elif cmd == "threads":
                self._threads_request(msg)
            elif cmd in ROUTED:
                self._route(msg, cmd, args)
            else:
                self.respond(msg, error=f"nodecell does not support the {cmd!r} request")
        except DapError as e:
            self.respond(msg, error=str(e))

    def _set_breakpoints(self, args: Dict[str, Any]) -> Dict[str, Any]:
        from .debug import Break

        path = (args.get("source") or {}).get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise DapError("setBreakpoints needs source.path (an absolute path)")
        path = os.path.normpath(path)
        new, out = [], []
        exts = hooks.extensions()
        for bp in args.get("breakpoints") or []:
            line = int(bp.get("line", 0))
            b = Break(f"{path}:{line}", bp.get("condition"))
            new.append(b)
            owners = [e.name for e in exts if b.file_for(e)]
            if not owners:
                out.append({"verified": False, "line": line,
                            "message": "no loaded pack contains this file (set when one loads)"})
            elif not linecache.getline(path, line):
                out.append({"verified": False, "line": line, "message": f"{path} has no line {line}"})
            else:
                out.append({"verified": True, "line": line, "source": {"path": path}})
        with self._lock:
            self._src[path] = new
        return {"breakpoints": out}

    def _threads_request(self, req: Dict[str, Any]) -> None:
        targets = [(e, w) for e in hooks.extensions() if self.client.wants(e) and e.config["isolated"]
                   for w in e._workers if w.alive]
        if not targets:
            self.respond(req, {"threads": []})
            return

        async def one(ext: Any, w: Any) -> List[Dict[str, Any]]:
            try:
                r = await ext._call_on(w, WORKER_TOOLS_ID, "dap_request", ("threads", {}), {},
                                       internal=True, timeout=10)
            except Exception:  # noqa: BLE001 - a worker that cannot answer has no threads to show
                return []
            return [{"id": self._thread_id((ext.name, w.wid, int(t["id"]))),
                     "name": f"{ext.name}#{w.wid} {t.get('name', '')}"} for t in r.get("threads", [])]

        results: List[List[Dict[str, Any]]] = []
        lock = threading.Lock()

        def done(f: Any) -> None:
            with lock:
                try:
                    results.append(f.result())
                except Exception:  # noqa: BLE001
                    results.append([])
                if len(results) == len(targets):
                    self.respond(req, {"threads": [t for r in results for t in r]})

        for ext, w in targets:
            asyncio.run_coroutine_threadsafe(one(ext, w), w.cell.loop).add_done_callback(done)

    def _route(self, req: Dict[str, Any], cmd: str, args: Dict[str, Any]) -> None:
        arg = ROUTED[cmd]
        if args.get(arg) is None:
            raise DapError(f"{cmd} needs {arg}")
        pack, wid, local = self._lookup(arg, args[arg])
        ext, w = _find(pack, wid)
        wargs = dict(args)
        wargs[arg] = local
        gid = args[arg] if cmd in RESUMING else None
        if gid is not None:
            with self._lock:
                self._resuming.setdefault(gid, [])

        async def run() -> None:
            try:
                body = await ext._call_on(w, WORKER_TOOLS_ID, "dap_request", (cmd, wargs), {},
                                          internal=True, timeout=30)
                out = self._map_body(cmd, pack, wid, body or {})
            except Exception as e:  # noqa: BLE001 - answered as a failed request
                self.respond(req, error=getattr(e, "remote_message", None) or str(e))
            else:
                self.respond(req, out)
            finally:
                if gid is not None:
                    with self._lock:
                        held = self._resuming.pop(gid, [])
                    for body in held:
                        self.event("stopped", body)

        asyncio.run_coroutine_threadsafe(run(), w.cell.loop)

    def _map_body(self, cmd: str, pack: str, wid: int, body: Dict[str, Any]) -> Dict[str, Any]:
        body = dict(body)
        if cmd == "stackTrace":
            ext = _find(pack, wid)[0]
            frames = []
            for f in body.get("stackFrames", []):
                f = dict(f, id=self._global(pack, wid, f["id"]))
                src = f.get("source") or {}
                if src.get("path"):
                    f["source"] = dict(src, path=host_path(ext, src["path"]))
                frames.append(f)
            body["stackFrames"] = frames
        elif cmd == "scopes":
            body["scopes"] = [dict(s, variablesReference=self._global(pack, wid, s["variablesReference"]))
                              for s in body.get("scopes", [])]
        elif cmd == "variables":
            body["variables"] = [dict(v, variablesReference=self._global(pack, wid, v["variablesReference"]))
                                 for v in body.get("variables", [])]
        elif cmd == "evaluate":
            body["variablesReference"] = self._global(pack, wid, body.get("variablesReference", 0))
        return body
