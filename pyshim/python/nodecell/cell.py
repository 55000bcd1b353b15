"""Cells: one sandbox (``nodecell run`` + a zygote) per extension, and the workers it forks.

:class:`_Cell` starts the launcher, reads its status records and speaks the
zygote's control protocol; :class:`_Worker` is one forked worker with its
channel; :class:`_HostEndpoint` is the host's end of that channel (frames in,
replies out). Death reasons (exit, signal, memory limit, timeout, protocol)
become :class:`WorkerCrashed` here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import select
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import _hub, _nodecell, _sync
from ._rpc import CALLBACK, CONTROL_ID, ERROR, REPLY, Endpoint, error_value, is_async_callable
from .errors import RemoteError, SandboxUnavailable, WorkerCrashed
from .tools import hooks as _tools
from .tools import profile as _profile

#: Transport errors that mean "the worker is gone" (its death gives the real reason).
GONE = (_nodecell.PeerGone, _nodecell.ChannelClosed)

if TYPE_CHECKING:
    from .extension import Extension

log = logging.getLogger("nodecell")

#: Where the nodecell package and host modules appear inside a sandbox.
SANDBOX_LIB = "/run/nodecell/lib"
SANDBOX_HOST = "/run/nodecell/host"
_BOOTSTRAP = (
    "import sys; sys.path[:0] = ['" + SANDBOX_LIB + "', '" + SANDBOX_HOST + "'];"
    " from nodecell._worker import main; main(sys.argv[1:])"
)
_SINGLETON_BASE_ID = 16
_MAX_FRAME = 256 << 20
#: A worker that reads nothing for this long while the host's frames wait for ring
#: space is treated as hostile (its channel is poisoned, it is killed and replaced).
STALL_TIMEOUT = 10.0
#: Frames (and seconds) handled per loop turn for one worker before yielding the loop:
#: a flooding worker cannot hold the host's event loop.
PUMP_FRAMES = 128
PUMP_SECONDS = 0.002


def _human(n: Optional[int]) -> str:
    """``268435456`` -> ``256 MiB`` (nodecell's one size format); ``none`` for no limit."""
    return _nodecell.format_size(n) if n else "none"


def _wait_reaped(pidfd: int, timeout: float = 0.5) -> None:
    """Give asyncio's child watcher (a thread) a moment to reap an exited launcher."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return  # still running: nothing to wait for here
        except ChildProcessError:
            return  # reaped
        time.sleep(0.001)


class _LogLimiter:
    """Rate limit for what one extension's workers log into the host (LOG frames and
    stdout/stderr lines): ``RATE`` records a second sustained, ``BURST`` at once. The
    excess is counted and summarized in one warning a second later (with the last
    suppressed line), never dropped silently."""

    RATE = 200.0
    BURST = 1000.0

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.loop = loop
        self.tokens = self.BURST
        self.stamp = time.monotonic()
        self.dropped = 0
        self.since = 0.0
        self.last = ""
        self.pending = False

    def allow(self, text: str) -> bool:
        now = time.monotonic()
        self.tokens = min(self.BURST, self.tokens + (now - self.stamp) * self.RATE)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        if not self.dropped:
            self.since = now
        self.dropped += 1
        self.last = text
        if not self.pending:
            self.pending = True
            try:
                self.loop.call_later(1.0, self.summarize)
            except RuntimeError:  # the loop is closed: nothing will read the summary
                self.pending = False
        return False

    def summarize(self) -> None:
        self.pending = False
        if not self.dropped:
            return
        n, self.dropped = self.dropped, 0
        logging.getLogger(f"nodecell.{self.name}").warning(
            "%d log records from the worker were suppressed in the last %.1f s (rate limit %g/s, "
            "burst %g); the last one: %s", n, time.monotonic() - self.since, self.RATE, self.BURST,
            self.last[:2000])


class _HostEndpoint(Endpoint):
    """The host's end of one worker's channel."""

    restrict_exports = True

    def __init__(self, channel: Any, worker: "_Worker") -> None:
        super().__init__(channel, f"worker {worker.cell.name}#{worker.wid}")
        self.worker = worker
        self.pending: Dict[int, asyncio.Future] = {}
        self.loop = worker.cell.loop
        self.tasks: Dict[int, asyncio.Task] = {}
        self._flush_scheduled = False

    def call_remote(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        return self.worker.cell.ext._call_anywhere(self.worker, target, method, args, kwargs)

    call_remote_async = call_remote

    def call_remote_sync(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        return _sync.call(self.worker.cell.ext, self.worker, target, method, args, kwargs)

    def handle_frame(self, kind: int, call_id: int, payload: Any) -> None:
        if kind == CALLBACK:
            # A call the worker makes while serving one of ours: if a thread waits for
            # that one synchronously, the call runs on that thread (see _sync).
            parent = payload[4] if isinstance(payload, tuple) and len(payload) == 5 else None
            sw = self.pending.get(parent)
            if type(sw) is _sync.SyncWaiter and sw.thread != threading.get_ident():
                sw.hand((kind, call_id, payload))
                return
        Endpoint.handle_frame(self, kind, call_id, payload)

    def _deliver(self, call_id: int, value: Any, error: Optional[BaseException]) -> None:
        fut = self.pending.pop(call_id, None)
        if fut is None or fut.done():
            return
        if _profile.ACTIVE:
            _profile.delivered(self.worker, call_id, self.channel)
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def _run_incoming(self, call_id: int, payload: Any) -> None:
        try:
            if not (isinstance(payload, tuple) and len(payload) == 5):
                raise TypeError("malformed call frame")
            target, method, args, kwargs, _parent = payload
            if kwargs is None and isinstance(args, BaseException):  # its arguments could not be built here
                self._send_error(call_id, args)
                return
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise TypeError("malformed call frame")
            if not all(isinstance(k, str) for k in kwargs):
                raise TypeError("keyword argument names must be strings")
            fn = self.resolve_target(target, method)
        except BaseException as e:  # noqa: BLE001
            self._send_error(call_id, e)
            return
        try:
            if is_async_callable(fn):
                self._spawn(call_id, fn(*args, **kwargs))
                return
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                self._spawn(call_id, result)
                return
        except BaseException as e:  # noqa: BLE001
            self._send_error(call_id, e)
            return
        self._send_reply(call_id, result)

    def _spawn(self, call_id: int, aw: Any) -> None:
        loop_thread = self.worker.cell.loop_thread
        if threading.get_ident() != loop_thread:  # a thread waiting synchronously runs this call
            try:
                self.loop.call_soon_threadsafe(self._spawn, call_id, aw)
            except RuntimeError:
                _sync.run_detached(self, call_id, aw)
            return
        if _sync.loop_blocked(loop_thread):  # this loop waits in a synchronous call
            _sync.run_detached(self, call_id, aw)
            return

        async def run() -> None:
            try:
                result = await aw
            except asyncio.CancelledError:
                self._send_error(call_id, RemoteError("CancelledError", "cancelled"))
                return
            except BaseException as e:  # noqa: BLE001
                self._send_error(call_id, e)
                return
            finally:
                self.tasks.pop(call_id, None)
            self._send_reply(call_id, result)

        self.tasks[call_id] = self.loop.create_task(run())

    def _cancel_incoming(self, call_id: int) -> None:
        t = self.tasks.pop(call_id, None)
        if t is not None:
            t.cancel()

    def _send_reply(self, call_id: int, value: Any) -> None:
        if self.closed:
            return
        try:
            self.channel.send(REPLY, call_id, value)
        except (*GONE, _nodecell.ProtocolViolation):
            return  # the worker's death (or violation) is handled where it is noticed
        except Exception as e:  # noqa: BLE001 - e.g. a value that cannot cross
            self._send_error(call_id, e)

    def _send_error(self, call_id: int, e: BaseException) -> None:
        if self.closed:
            return
        try:
            self.channel.send(ERROR, call_id, error_value(e))
        except Exception:  # noqa: BLE001 - the worker is gone
            pass

    def _log(self, payload: Any) -> None:
        try:
            level, name, msg = payload
            level = int(level)
        except Exception:  # noqa: BLE001
            return
        msg = str(msg)
        if not self.worker.cell.log_limit.allow(msg):
            return
        name = str(name)[:200].replace("\n", " ")
        logging.getLogger(f"nodecell.{self.worker.cell.name}" + ("" if name == "root" else f".{name}")).log(
            level, "%s", msg)

    def _schedule_release_flush(self) -> None:
        if self._flush_scheduled or self.closed:
            return
        self._flush_scheduled = True

        def flush() -> None:
            self._flush_scheduled = False
            self.flush_releases()

        try:
            self.loop.call_soon_threadsafe(flush)
        except RuntimeError:
            pass


class _Worker:
    """One forked worker process and its channel."""

    def __init__(self, cell: "_Cell", wid: int) -> None:
        self.cell = cell
        self.wid = wid
        self.channel = _nodecell.Channel.create(_MAX_FRAME, STALL_TIMEOUT,
                                                cuda=bool(cell.ext.config["share_cuda_ipc"]),
                                                frozen_outputs=bool(cell.ext.config["frozen_outputs"]))
        self.ep = _HostEndpoint(self.channel, self)
        self.pid: Optional[int] = None
        self.pidfd = -1
        self.token: Optional[int] = None
        self.alive = False
        self.dead = False
        self.exit_info: Optional[Dict[str, Any]] = None
        self.exit_event = asyncio.Event()
        self.inflight = 0
        self.last_used = 0
        self.spin_ns = 100_000
        self.init_info: Dict[str, Any] = {}
        #: Debugger state (stopped? for how long?) and the host tools object pinned in the channel.
        self.tools = _tools.attach_worker(self)
        self.timed_out = False
        self.violation: Optional[str] = None
        self.stopping = False
        self.death: Optional[WorkerCrashed] = None
        self._drain_scheduled = False
        #: Held by whoever receives from the channel: the loop's pump, or a thread that
        #: waits for a synchronous call's reply (see _sync).
        self.rx = threading.Lock()
        # The host's singletons, reachable from this worker under fixed ids.
        for i, api in enumerate(cell.ext.config["apis"]):
            self.ep.pin(_SINGLETON_BASE_ID + i, api())

    def pump(self, bounded: bool = True) -> bool:
        """Handle the frames waiting in the worker's ring: at most ``PUMP_FRAMES`` (and
        ``PUMP_SECONDS``) when ``bounded``, then a later loop turn goes on (see
        :meth:`drain`). Returns True when the ring was found empty."""
        ch = self.channel
        handle = self.ep.handle_frame
        n = 0
        t_end = time.perf_counter() + PUMP_SECONDS
        rx = self.rx
        if not rx.acquire(blocking=not bounded, timeout=1.0 if not bounded else -1):
            return False  # a thread waiting synchronously receives; it hands back when done
        try:
            while True:
                try:
                    f = ch.try_recv()
                except GONE:
                    self.on_died()
                    return True
                except Exception as e:  # noqa: BLE001 - protocol violation: drop this worker
                    self.cell.protocol_violation(self, e)
                    return True
                if f is None:
                    return True
                rx.release()  # handling may wait synchronously itself (and receive)
                try:
                    handle(*f)
                finally:
                    rx.acquire()
                n += 1
                if bounded and (n >= PUMP_FRAMES or (n & 15 == 0 and time.perf_counter() > t_end)):
                    self._schedule_drain()
                    return False
        finally:
            rx.release()

    def drain(self) -> None:
        """Handle what the worker sent (bounded per loop turn) and hand waiting back to
        the reactor: the doorbell is armed again once the ring is found empty."""
        self._drain_scheduled = False
        if self.dead:
            return
        if self.pump() and not self.dead:
            try:
                if self.channel.resume_doorbell():  # frames arrived meanwhile
                    self._schedule_drain()
            except GONE:
                self.on_died()

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.cell.loop.call_soon(self.drain)

    def drain_soon(self) -> None:
        """:meth:`_schedule_drain` from any thread: ``FastCall`` (which cannot tell cheaply
        whether the sandbox's loop runs on this thread or was moved to another) found
        frames behind the answer it took."""
        loop = self.cell.loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            self._schedule_drain()
        else:
            _sync.hand_back(self, False)

    def on_event(self, kind: str) -> None:
        """A reactor event for this worker's channel."""
        if kind == "readable":
            self.drain()
        elif kind == "storm":
            self.cell.protocol_violation(self, "it rang its doorbell over and over with nothing to read")
        else:
            self.on_died()

    def rearm(self) -> None:
        """After polling the channel here (``spin_for``): hand waiting back to the
        reactor; frames that arrived meanwhile are drained on the next loop turn."""
        if self.dead:
            return
        try:
            if self.channel.resume_doorbell():
                self._schedule_drain()
        except GONE:
            self.on_died()

    def spin_for(self, call_id: int, fut: asyncio.Future) -> None:
        """Spin briefly (GIL released) for call ``call_id``'s reply to land, to skip a
        loop wake-up; other frames arriving meanwhile are handled as usual."""
        budget = self.spin_ns
        if budget <= 0:
            return
        t0 = time.perf_counter_ns()
        ch = self.channel
        rx = self.rx
        ep = self.ep
        while not fut.done():
            left = budget - (time.perf_counter_ns() - t0)
            if left <= 0:
                break
            if not rx.acquire(blocking=False):
                return  # a thread waiting synchronously receives (and routes our reply)
            try:
                f = ch.spin_recv(left // 1000 + 1)
            except GONE:
                self.on_died()
                return
            except Exception as e:  # noqa: BLE001
                self.cell.protocol_violation(self, e)
                return
            finally:
                rx.release()
            if f is None:
                break
            kind, cid, payload = f
            if cid == call_id and kind == REPLY and not _profile.ACTIVE:
                ep.pending.pop(cid, None)  # ours: straight into the future
                fut.set_result(payload)
                return
            ep.handle_frame(kind, cid, payload)

    def kill(self) -> None:
        if self.pidfd >= 0 and not self.dead:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except (OSError, AttributeError):
                pass
        self.cell.ctl_send({"op": "kill", "wid": self.wid})

    def on_died(self) -> None:
        if self.dead:
            return
        self.dead = True
        self.alive = False
        self.cell.loop.create_task(self.cell.worker_died(self))

    def close(self) -> None:
        """Release everything the worker held in the host at once: its channel (ring
        memfd, mapping, socket, received descriptors), pidfd, reactor registration and
        the host objects it was given. What user code keeps (an exception, a proxy, a
        received tensor) keeps none of these."""
        ep = self.ep
        ep.closed = True
        for fut in ep.pending.values():
            if not fut.done():
                fut.set_exception(WorkerCrashed(f"pack {self.cell.name!r}: worker stopped",
                                                reason="exited", extension=self.cell.name))
        ep.pending.clear()
        for t in ep.tasks.values():
            t.cancel()
        ep.tasks.clear()
        if self.token is not None:
            self.cell.bridge.unregister(self.token)
            self.token = None
        if self.pidfd >= 0:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = -1
        try:
            self.channel.close("worker gone")
        except Exception:  # noqa: BLE001
            pass
        with ep._lock:
            ep.exported.clear()
            ep._export_ids.clear()
        ep.pinned.clear()
        ep._release_queue.clear()


class _Cell:
    """One sandbox (``nodecell run`` + zygote) for one extension."""

    def __init__(self, name: str, ext: Optional["Extension"] = None) -> None:
        self.ext: Any = ext
        self.name = name
        self.key: Optional[str] = None
        self.loop = asyncio.get_running_loop()
        #: The thread that runs ``loop`` (synchronous calls made on it handle everything themselves);
        #: a loop run again on another thread is noticed there by the next asynchronous call.
        self.loop_thread = threading.get_ident()
        self.bridge = _hub.LoopBridge.get(self.loop)
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.ctl: Optional[socket.socket] = None
        self.status: Dict[str, Any] = {}
        self.exit: Optional[Dict[str, Any]] = None
        self.ready: asyncio.Future = self.loop.create_future()
        self.spawned: Dict[int, asyncio.Future] = {}
        self.workers: Dict[int, _Worker] = {}
        self.zygote_info: Dict[str, Any] = {}
        self.dead = False
        self._wids = itertools.count(1)
        self._status_buf = b""
        self._status_fd = -1
        self.stderr_tail: List[str] = []
        self.tasks: List[asyncio.Task] = []
        self.log_limit = _LogLimiter(name, self.loop)

    # -- start ------------------------------------------------------------------------------

    async def start(self, argv: List[str], env: Dict[str, str]) -> None:
        host_ctl, child_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        ctl_fd = child_ctl.fileno()
        argv = [a.replace("{CTL}", str(ctl_fd)).replace("{STATUS}", str(status_w)) for a in argv]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(ctl_fd, status_w), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
                start_new_session=True)
        finally:
            child_ctl.close()
            os.close(status_w)
        self.ctl = host_ctl
        host_ctl.setblocking(False)
        self.loop.add_reader(host_ctl.fileno(), self._on_ctl)
        os.set_blocking(status_r, False)
        self._status_fd = status_r
        self.loop.add_reader(status_r, self._on_status)
        self.tasks = [
            self.loop.create_task(self._pipe_to_log(self.proc.stdout, logging.INFO, "stdout")),
            self.loop.create_task(self._pipe_to_log(self.proc.stderr, logging.WARNING, "stderr")),
            self.loop.create_task(self._wait_exit()),
        ]
        await self.ready

    async def _pipe_to_log(self, stream: Any, level: int, what: str) -> None:
        lg = logging.getLogger(f"nodecell.{self.name}")
        while True:
            line = await stream.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            if what == "stderr":
                self.stderr_tail = (self.stderr_tail + [text])[-40:]
            if self.log_limit.allow(text):
                lg.log(level, "%s", text, extra={"nodecell_stream": what})

    def _on_status(self) -> None:
        try:
            data = os.read(self._status_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self._status_fd)
            os.close(self._status_fd)
            self._status_fd = -1
            return
        self._status_buf += data
        while b"\n" in self._status_buf:
            line, self._status_buf = self._status_buf.split(b"\n", 1)
            try:
                kind, rec = _nodecell.decode_status_line(line)
            except _nodecell.WireError as e:
                log.warning("pack %r: unreadable launcher status line: %s", self.name, e)
                continue
            if kind == "exit":
                self.exit = rec
            else:
                self.status = rec

    def _on_ctl(self) -> None:
        assert self.ctl is not None
        while True:
            try:
                data, fds, _f, _a = socket.recv_fds(self.ctl, 1 << 16, 2)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self.loop.remove_reader(self.ctl.fileno())
                return
            try:
                msg = _nodecell.decode_zygote_event(data)
            except _nodecell.WireError as e:
                if self.log_limit.allow(str(e)):  # a hostile zygote cannot flood the host's log
                    log.warning("pack %r: dropping a control message from the zygote: %s", self.name, e)
                for fd in fds:
                    os.close(fd)
                continue
            op = msg["op"]
            pidfd = -1
            if op == "spawned" and fds:
                pidfd, fds = fds[0], fds[1:]
            for fd in fds:  # only "spawned" carries one (its pidfd)
                os.close(fd)
            if op == "ready":
                self.zygote_info = msg
                if msg.get("errors"):
                    logging.getLogger(f"nodecell.{self.name}").warning(
                        "zygote could not preload: %s", msg["errors"])
                if not self.ready.done():
                    self.ready.set_result(True)
            elif op == "spawned":
                fut = self.spawned.pop(msg["wid"], None)
                if fut is not None and not fut.done():
                    fut.set_result((msg["pid"], pidfd))
                elif pidfd >= 0:
                    os.close(pidfd)
            elif op == "exited":
                w = self.workers.get(msg["wid"])
                if w is not None:
                    w.exit_info = msg
                    w.exit_event.set()
                    w.on_died()

    async def _wait_exit(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        # Let the status pipe deliver its last line.
        for _ in range(50):
            if self._status_fd < 0:
                break
            await asyncio.sleep(0.002)
        self.dead = True
        if self.exit is None:
            self.exit = {"code": code, "reason": "exited" if code >= 0 else "signal", "detail": ""}
        if not self.ready.done():
            self.ready.set_exception(self._start_error(code))
        for w in list(self.workers.values()):
            if not w.dead:
                w.exit_info = w.exit_info or {"sandbox": self.exit}
                w.exit_event.set()
                w.on_died()
        for fut in self.spawned.values():
            if not fut.done():
                fut.set_exception(self._start_error(code))
        self.spawned.clear()

    def _start_error(self, code: int) -> Exception:
        detail = (self.exit or {}).get("detail") or "\n".join(self.stderr_tail[-10:])
        reason = (self.exit or {}).get("reason")
        if reason == "setup" or code == 125:
            missing = [w.get("name") for w in self.status.get("walls", []) if w.get("state") == "missing"]
            head = detail.strip().split(":", 1)[0]
            if head and all(c.isalnum() or c == "-" for c in head) and head not in missing:
                missing.append(head)  # "memory-limit: cannot limit memory ..." names the wall
            return SandboxUnavailable(
                f"pack {self.name!r}: the sandbox could not be set up: {detail.strip()}", missing)
        return WorkerCrashed(
            f"pack {self.name!r}: the sandbox exited with status {code} before it was ready: {detail.strip()}",
            reason=reason or "exited", exit_code=code, extension=self.name)

    def ctl_send(self, msg: Dict[str, Any], fds: tuple = ()) -> None:
        if self.ctl is None or self.dead:
            return
        data = _nodecell.encode_zygote_request(msg)  # checks every field (WireError: a bug here)
        try:
            if fds:
                socket.send_fds(self.ctl, [data], list(fds))
            else:
                self.ctl.send(data)
        except OSError:
            pass

    # -- workers ----------------------------------------------------------------------------

    async def spawn_worker(self) -> _Worker:
        if self.dead:
            raise WorkerCrashed(f"pack {self.name!r}: sandbox is gone", reason="exited", extension=self.name)
        wid = next(self._wids)
        w = _Worker(self, wid)
        self.workers[wid] = w
        fut = self.loop.create_future()
        self.spawned[wid] = fut
        ring_fd, sock_fd = w.channel.peer_fds()
        try:
            self.ctl_send({"op": "spawn", "wid": wid}, (ring_fd, sock_fd))
        finally:
            os.close(ring_fd)
            os.close(sock_fd)
        try:
            pid, pidfd = await asyncio.wait_for(fut, 30)
        except BaseException:
            self.workers.pop(wid, None)
            w.close()
            raise
        w.pid, w.pidfd = pid, pidfd
        w.token = self.bridge.register(w.channel, pidfd, w.on_event)
        w.alive = True
        return w

    def spawn_worker_now(self) -> _Worker:
        """:meth:`spawn_worker` without the event loop, on its thread while a synchronous
        call blocks it: reads the zygote's answer itself (up to 30 s)."""
        if self.dead or self.ctl is None:
            raise WorkerCrashed(f"pack {self.name!r}: sandbox is gone", reason="exited", extension=self.name)
        wid = next(self._wids)
        w = _Worker(self, wid)
        self.workers[wid] = w
        fut = self.loop.create_future()
        self.spawned[wid] = fut
        ring_fd, sock_fd = w.channel.peer_fds()
        try:
            self.ctl_send({"op": "spawn", "wid": wid}, (ring_fd, sock_fd))
        finally:
            os.close(ring_fd)
            os.close(sock_fd)
        deadline = time.monotonic() + 30
        while not fut.done() and self.ctl is not None and not self.dead:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if select.select([self.ctl.fileno()], [], [], left)[0]:
                self._on_ctl()
        if not fut.done():
            self.spawned.pop(wid, None)
            self.workers.pop(wid, None)
            w.close()
            raise WorkerCrashed(f"pack {self.name!r}: the zygote did not start a worker", extension=self.name)
        pid, pidfd = fut.result()
        w.pid, w.pidfd = pid, pidfd
        w.token = self.bridge.register(w.channel, pidfd, w.on_event)
        w.alive = True
        return w

    async def worker_died(self, w: _Worker) -> None:
        if w.death is not None:
            return  # finished already by a synchronous call on this loop's thread
        # The zygote reports the exit status just after the pidfd fires; give it a moment.
        if w.exit_info is None and not self.dead:
            try:
                await asyncio.wait_for(w.exit_event.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        self._finish_death(w)

    def finish_death_now(self, w: _Worker) -> None:
        """:meth:`worker_died` without the event loop, for a synchronous call that blocks
        this cell's loop thread: reads the zygote's exit report itself (up to 0.5 s)."""
        if w.death is not None:
            return
        deadline = time.monotonic() + 0.5
        while w.exit_info is None and not self.dead and self.ctl is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if select.select([self.ctl.fileno()], [], [], left)[0]:
                self._on_ctl()
        self._finish_death(w)

    def _finish_death(self, w: _Worker) -> None:
        if w.death is not None:
            return
        if not w.channel.closed:
            w.pump(bounded=False)  # frames sent just before death still count (a dead worker sends no more)
        err = self.describe_death(w)
        w.death = err
        for fut in list(w.ep.pending.values()):
            if not fut.done():
                fut.set_exception(err)
        w.ep.pending.clear()
        self.workers.pop(w.wid, None)
        w.death = err
        w.close()
        if not w.stopping:
            self.ext._worker_gone(w, err)

    def describe_death(self, w: _Worker) -> WorkerCrashed:
        info = w.exit_info or {}
        if w.timed_out:
            return WorkerCrashed(f"pack {self.name!r}: worker killed after a call timed out",
                                 reason="timeout", signal=9, extension=self.name)
        if w.violation:
            return WorkerCrashed(f"pack {self.name!r}: worker dropped for breaking the protocol: {w.violation}",
                                 reason="protocol", extension=self.name)
        sb = info.get("sandbox")
        if sb is not None:
            reason = sb.get("reason", "exited")
            if reason == "memory":
                return WorkerCrashed(f"pack {self.name!r}: killed by its memory limit ({sb.get('detail', '')})",
                                     reason="memory", signal=9, extension=self.name)
            return WorkerCrashed(f"pack {self.name!r}: sandbox ended ({reason}, status {sb.get('code')})",
                                 reason=reason, exit_code=sb.get("code"), extension=self.name)
        sig = info.get("signal")
        if sig is not None:
            if sig == signal.SIGKILL and self.oom_killed():
                lim = self.ext.config.get("max_memory")
                return WorkerCrashed(
                    f"pack {self.name!r}: worker killed by its memory limit (max_memory={_human(lim)})",
                    reason="memory", signal=sig, extension=self.name)
            try:
                sname = signal.Signals(sig).name
            except ValueError:
                sname = str(sig)
            return WorkerCrashed(f"pack {self.name!r}: worker killed by signal {sname}",
                                 reason="signal", signal=sig, extension=self.name)
        code = info.get("code")
        return WorkerCrashed(f"pack {self.name!r}: worker exited with status {code}",
                             reason="exited", exit_code=code, extension=self.name)

    _oom_seen = 0

    def oom_killed(self) -> bool:
        """Whether the cell's memory cgroup recorded a new OOM kill (v1 or v2)."""
        cg = self.status.get("cgroup")
        if not cg:
            return False
        # The launcher reports the memory controller's directory as "cgroup" (v1 and v2); the
        # sandbox crate counts its OOM kills (one counter for the launcher and the host).
        n = _nodecell.cgroup_oom_kills(cg)
        new = n > self._oom_seen
        self._oom_seen = max(n, self._oom_seen)
        return new

    def protocol_violation(self, w: _Worker, e: Any) -> None:
        """``w`` broke the protocol (or stalled): retire it, kill it, fail its calls."""
        if w.dead or w.violation:
            return
        log.error("pack %r worker #%d broke the protocol: %s; dropping it", self.name, w.wid, e)
        w.violation = str(e)
        if self.ext is not None:
            self.ext._retire(w)
        w.kill()
        w.on_died()

    # -- stop -------------------------------------------------------------------------------

    async def stop(self, grace: float = 2.0) -> None:
        for w in list(self.workers.values()):
            w.stopping = True  # its exit from here on is the expected end, not a crash
            if w.alive and not w.dead:
                try:
                    await asyncio.wait_for(self.ext._call_on(w, CONTROL_ID, "stop", (), {}, internal=True), grace)
                except BaseException:  # noqa: BLE001 - stopping anyway
                    pass
        # From here on, worker deaths are expected: no crash reports, no restarts.
        workers = list(self.workers.values())
        self.workers.clear()
        for w in workers:
            w.dead = True
            w.alive = False
        self.ctl_send({"op": "exit"})
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except asyncio.TimeoutError:
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass
                await self.proc.wait()
        for w in workers:
            w.close()
        # Let the launcher's last status line and output drain, so nothing outlives stop().
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=grace)
        if self.ctl is not None:
            try:
                self.loop.remove_reader(self.ctl.fileno())
            except Exception:  # noqa: BLE001
                pass
            self.ctl.close()
            self.ctl = None
        self.dead = True

    def kill_now(self, grace: float = 2.0) -> None:
        """End the sandbox synchronously, from any thread, without this cell's event loop
        (which may be closed): the zygote is told to exit (it kills its workers), then the
        launcher gets SIGTERM and SIGKILL if it lingers, ``grace`` seconds apart. Returns
        once the launcher exited (it removes the sandbox's cgroups on the way out)."""
        workers = list(self.workers.values())
        self.workers.clear()
        for w in workers:
            w.dead = True
            w.alive = False
        self.ctl_send({"op": "exit"})
        proc = self.proc
        if proc is not None:
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError:
                pidfd = -1  # already reaped
            if pidfd >= 0:
                try:
                    for sig in (None, signal.SIGTERM, signal.SIGKILL):
                        if sig is not None:
                            try:
                                signal.pidfd_send_signal(pidfd, sig)
                            except OSError:
                                break
                        if select.select([pidfd], [], [], grace)[0]:
                            break
                    _wait_reaped(pidfd)
                finally:
                    os.close(pidfd)
            transport = getattr(proc, "_transport", None)
            if transport is not None and self.loop.is_closed():
                # Its loop is gone: let the pipes close with their file objects instead of
                # the transport's finalizer calling into the closed loop (noise at exit).
                transport._closed = True
        for w in workers:
            try:
                w.close()
            except Exception:  # noqa: BLE001 - futures of a closed loop
                pass
        if self.ctl is not None:
            try:
                self.loop.remove_reader(self.ctl.fileno())
            except Exception:  # noqa: BLE001
                pass
            self.ctl.close()
            self.ctl = None
        if self._status_fd >= 0:
            try:
                self.loop.remove_reader(self._status_fd)
            except Exception:  # noqa: BLE001
                pass
            os.close(self._status_fd)
            self._status_fd = -1
        self.dead = True
