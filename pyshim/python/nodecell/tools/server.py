"""This process's tools socket: one thread, a unix stream socket, JSON lines.

The socket lives where ``nodecell_tools::socket`` says (``_nodecell.
tools_socket_path``: a private directory, mode 0700; the socket itself mode
0600), and only peers running as this user (or root) are served (checked with
``SO_PEERCRED``). Requests:

* ``{"op": "hello"}`` -> ``{"pid", "version", "packs"}``
* ``{"op": "stats"}`` -> the snapshot of :mod:`nodecell.tools.stats`
* ``{"op": "debug", ...}`` -> the connection becomes a debugger session
  (:mod:`nodecell.tools.debug`)
* ``{"op": "profile", ...}`` -> start / stop a profile (:mod:`nodecell.tools.profile`)

A malformed request is answered ``{"error": "..."}``; a line longer than 16
MiB closes the connection. Everything runs on the server's own thread;
sessions hand work to the event loops themselves.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import socket
import struct
import threading
from typing import Any, Callable, Dict, Optional

log = logging.getLogger("nodecell.tools")

MAX_LINE = 16 << 20

_lock = threading.Lock()
_server: Optional["_Server"] = None


class Conn:
    """One client connection. :meth:`send` may be called from any thread."""

    def __init__(self, server: "_Server", sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.out_lock = threading.Lock()
        self.closed = False
        #: A session (debugger, profile) that takes this connection's lines.
        self.on_line: Optional[Callable[[Dict[str, Any]], None]] = None
        self.on_close: Optional[Callable[[], None]] = None

    def send(self, msg: Dict[str, Any]) -> None:
        """Queue one JSON line for the client (dropped when the connection is closed)."""
        if self.closed:
            return
        data = json.dumps(msg, separators=(",", ":"), default=str).encode() + b"\n"
        with self.out_lock:
            self.outbuf += data
        self.server.wake()

    def close(self) -> None:
        """Close after what is queued has been written."""
        self.send({"ev": "bye"})
        self.server.close_later(self)


class _Server:
    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            try:
                os.unlink(path)  # a socket of a dead process with our pid
            except FileNotFoundError:
                pass
            self.listener.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.conns: Dict[int, Conn] = {}
        self.closing: set = set()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="nodecell-tools", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def close_later(self, conn: Conn) -> None:
        self.closing.add(conn)
        self.wake()

    def _run(self) -> None:
        while not self.stopped:
            try:
                events = self.sel.select(1.0)
            except OSError:
                return
            for key, mask in events:
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    try:
                        os.read(self.wake_r, 65536)
                    except BlockingIOError:
                        pass
                else:
                    conn: Conn = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(conn)
                    if mask & selectors.EVENT_WRITE and not conn.closed:
                        self._write(conn)
            for conn in list(self.conns.values()):
                self._update_interest(conn)
            for conn in list(self.closing):
                with conn.out_lock:
                    pending = bool(conn.outbuf)
                if not pending or conn.closed:
                    self.closing.discard(conn)
                    self._drop(conn)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, OSError):
            return
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
        except OSError:
            sock.close()
            return
        if uid not in (os.geteuid(), 0):
            sock.close()  # the socket's mode already says so; this is the second lock
            return
        sock.setblocking(False)
        conn = Conn(self, sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _update_interest(self, conn: Conn) -> None:
        if conn.closed:
            return
        with conn.out_lock:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        try:
            if self.sel.get_key(conn.sock).events != want:
                self.sel.modify(conn.sock, want, conn)
        except (KeyError, ValueError, OSError):
            pass

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.inbuf += data
        while not conn.closed:
            nl = conn.inbuf.find(b"\n")
            if nl < 0:
                if len(conn.inbuf) > MAX_LINE:
                    self._drop(conn)
                return
            line = bytes(conn.inbuf[:nl])
            del conn.inbuf[:nl + 1]
            if line.strip():
                self._handle(conn, line)

    def _write(self, conn: Conn) -> None:
        with conn.out_lock:
            if not conn.outbuf:
                return
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = -1
            if n > 0:
                del conn.outbuf[:n]
        if n < 0:
            self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        cb, conn.on_close = conn.on_close, None
        if cb is not None:
            try:
                cb()
            except Exception:  # noqa: BLE001 - a session's cleanup must not stop the server
                log.exception("tools: closing a session failed")

    def _handle(self, conn: Conn, line: bytes) -> None:
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            conn.send({"error": f"malformed request: {e}"})
            return
        if conn.on_line is not None:
            try:
                conn.on_line(msg)
            except Exception as e:  # noqa: BLE001
                log.exception("tools: session failed")
                conn.send({"error": f"{type(e).__name__}: {e}"})
            return
        op = msg.get("op")
        try:
            if op == "hello":
                from . import hooks

                conn.send({"pid": os.getpid(), "version": 1,
                           "packs": [e.name for e in hooks.extensions()]})
            elif op == "stats":
                from . import stats

                conn.send(stats.snapshot())
            elif op == "debug":
                from . import debug

                debug.hub().attach(conn, msg)
            elif op == "profile":
                from . import profile

                profile.handle_request(conn, msg)
            else:
                conn.send({"error": f"unknown op {op!r} (expected hello, stats, debug or profile)"})
        except Exception as e:  # noqa: BLE001 - answer, never die
            log.exception("tools: %s request failed", op)
            conn.send({"error": f"{type(e).__name__}: {e}"})

    def stop(self) -> None:
        self.stopped = True
        self.wake()
        if threading.current_thread() is not self.thread:
            self.thread.join(2)
        for conn in list(self.conns.values()):
            self._drop(conn)
        try:
            self.sel.close()
        except Exception:  # noqa: BLE001
            pass
        self.listener.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        if os.getpid() == self.pid:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def serve() -> Optional[str]:
    """Start the server unless it runs or is switched off; return the socket path."""
    global _server
    from .. import _nodecell

    with _lock:
        if _server is not None and _server.pid == os.getpid() and not _server.stopped:
            return _server.path
        try:
            path = _nodecell.tools_socket_path(os.getpid())
        except OSError as e:
            log.warning("nodecell tools socket not started: %s", e)
            return None
        if path is None:
            return None
        try:
            _server = _Server(path)
        except OSError as e:
            log.warning("nodecell tools socket not started: %s: %s", path, e)
            return None
        return path


def stop() -> None:
    """Stop serving and remove the socket."""
    global _server
    with _lock:
        s, _server = _server, None
    if s is not None and s.pid == os.getpid():
        s.stop()


def path() -> Optional[str]:
    """The socket's path while served."""
    s = _server
    return s.path if s is not None and not s.stopped and s.pid == os.getpid() else None


def _at_exit() -> None:
    s = _server
    if s is not None and s.pid == os.getpid():
        s.stopped = True
        try:
            os.unlink(s.path)
        except OSError:
            pass


atexit.register(_at_exit)
