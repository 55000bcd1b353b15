"""The host side: :class:`ExtensionManager` and :class:`Extension`.

An extension (node pack) runs in a **cell**: one ``nodecell run`` sandbox with
the pack's venv, in which a zygote has imported the pack's heavy modules once
and forks **workers** on demand. Each worker has its own channel (rings in a
sealed memfd + a socket for fds) registered with the process's reactor.

Failure handling: a worker that dies fails its pending calls with
:class:`WorkerCrashed` (exit code / signal / memory limit), a call past its
deadline raises :class:`CallTimeout` and its worker is killed; in both cases
the next call starts a fresh worker from the zygote (or a fresh cell if the
zygote died too). Nothing the worker sends is unpickled or imported.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import stat
import sys
import time
import weakref
from typing import Any, Dict, Generic, List, Optional, TypeVar

from . import _hub, _nodecell, _reload
from ._find_launcher import find_launcher
from ._rpc import (CALL, CALLBACK, CANCEL, CONTROL_ID, ERROR, EXTENSION_ID, REPLY, Endpoint, error_value,
                   is_async_callable, registered_types)
from .config import ExtensionConfig, ExtensionManagerConfig, SandboxMode
from .errors import (CallTimeout, ExtensionStopped, NodecellError, ProtocolError, ProvisionError, RemoteError,
                     SandboxUnavailable, WorkerCrashed)
from .shared import ExtensionBase, ProxiedSingleton

__all__ = ["ExtensionManager", "Extension"]

T = TypeVar("T", bound=ExtensionBase)
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


def _world_usable(path: str) -> bool:
    """Whether an unprivileged uid can reach and read ``path`` (every parent searchable)."""
    p = os.path.realpath(path)
    try:
        st = os.stat(p)
    except OSError:
        return False
    if not st.st_mode & stat.S_IROTH:
        return False
    d = os.path.dirname(p)
    while True:
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


def default_interpreter() -> str:
    """The interpreter pack venvs are built from when nothing else is asked.

    This host's interpreter when an unprivileged uid can run it, else
    ``/usr/bin/python3`` (pyenv interpreters under ``/root`` are unreachable for
    sandboxed workers, which never run as host uid 0).
    """
    exe = os.path.realpath(sys.executable)
    if os.geteuid() != 0 or _world_usable(exe):
        return sys.executable
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand) and _world_usable(cand):
            return cand
    return sys.executable


def _human(n: Optional[int]) -> str:
    """``268435456`` -> ``256 MiB`` (and ``256000000`` -> ``244.1 MiB (256000000 bytes)``)."""
    if not n:
        return "none"
    for unit, size in (("GB", 10**9), ("MB", 10**6)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def _module_mount(mod_name: str) -> Optional[tuple]:
    """(host path, name inside SANDBOX_HOST) exposing the top-level package of ``mod_name``."""
    top = mod_name.split(".")[0]
    mod = sys.modules.get(top)
    if mod is None or top in ("nodecell", "builtins"):
        return None
    f = getattr(mod, "__file__", None)
    if not f:
        return None
    if os.path.basename(f) == "__init__.py":
        return os.path.dirname(f), top
    return f, os.path.basename(f)


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
        return self.worker.cell.ext._call_on(self.worker, target, method, args, kwargs)

    def _deliver(self, call_id: int, value: Any, error: Optional[BaseException]) -> None:
        fut = self.pending.pop(call_id, None)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def _run_incoming(self, call_id: int, payload: Any) -> None:
        if isinstance(payload, BaseException):  # its arguments could not be built here
            self._send_error(call_id, payload)
            return
        try:
            if not (isinstance(payload, tuple) and len(payload) == 4):
                raise TypeError("malformed call frame")
            target, method, args, kwargs = payload
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
        name = str(name)[:200].replace("\n", " ")
        logging.getLogger(f"nodecell.{self.worker.cell.name}" + ("" if name == "root" else f".{name}")).log(
            level, "%s", str(msg))

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
        self.channel = _nodecell.Channel.create(_MAX_FRAME, cuda=bool(cell.ext.config["share_cuda_ipc"]))
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
        # The host's singletons, reachable from this worker under fixed ids.
        for i, api in enumerate(cell.ext.config["apis"]):
            self.ep.pin(_SINGLETON_BASE_ID + i, api())

    def pump(self) -> None:
        """Handle every frame waiting in the worker's ring."""
        ch = self.channel
        while True:
            try:
                f = ch.try_recv()
            except Exception as e:  # noqa: BLE001 - protocol violation: drop this worker
                self.cell.protocol_violation(self, e)
                return
            if f is None:
                return
            self.ep.handle_frame(*f)

    def spin_for(self, fut: asyncio.Future) -> None:
        """Spin briefly (GIL released) for the reply to land, to skip a loop wake-up."""
        budget = self.spin_ns
        if budget <= 0:
            return
        t0 = time.perf_counter_ns()
        ch = self.channel
        while not fut.done():
            left = budget - (time.perf_counter_ns() - t0)
            if left <= 0:
                break
            try:
                f = ch.spin_recv(left // 1000 + 1)
            except Exception as e:  # noqa: BLE001
                self.cell.protocol_violation(self, e)
                return
            if f is None:
                break
            self.ep.handle_frame(*f)

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
        self.ep.closed = True
        for fut in self.ep.pending.values():
            if not fut.done():
                fut.set_exception(WorkerCrashed(f"pack {self.cell.name!r}: worker stopped",
                                                reason="exited", extension=self.cell.name))
        self.ep.pending.clear()
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
            self.channel.close()
        except Exception:  # noqa: BLE001
            pass


class _Cell:
    """One sandbox (``nodecell run`` + zygote) for one extension."""

    def __init__(self, name: str, ext: Optional["Extension"] = None) -> None:
        self.ext: Any = ext
        self.name = name
        self.key: Optional[str] = None
        self.loop = asyncio.get_running_loop()
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
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if "exit" in msg:
                self.exit = msg["exit"]
            else:
                self.status = msg

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
                msg = json.loads(data)
                if not isinstance(msg, dict):
                    raise ValueError
            except ValueError:
                for fd in fds:
                    os.close(fd)
                continue
            op = msg.get("op")
            if op == "ready":
                self.zygote_info = msg
                if msg.get("errors"):
                    logging.getLogger(f"nodecell.{self.name}").warning(
                        "zygote could not preload: %s", msg["errors"])
                if not self.ready.done():
                    self.ready.set_result(True)
            elif op == "spawned":
                fut = self.spawned.pop(msg.get("wid"), None)
                if fut is not None and not fut.done():
                    fut.set_result((msg.get("pid"), fds[0] if fds else -1))
                else:
                    for fd in fds:
                        os.close(fd)
            elif op == "exited":
                w = self.workers.get(msg.get("wid"))
                if w is not None:
                    w.exit_info = msg
                    w.exit_event.set()
                    w.on_died()
            else:
                for fd in fds:
                    os.close(fd)

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
        data = json.dumps(msg).encode()
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
        w.token = self.bridge.register(w.channel, pidfd, w.pump, w.on_died)
        w.alive = True
        return w

    async def worker_died(self, w: _Worker) -> None:
        # The zygote reports the exit status just after the pidfd fires; give it a moment.
        if w.exit_info is None and not self.dead:
            try:
                await asyncio.wait_for(w.exit_event.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        w.pump()  # frames sent just before death still count
        err = self.describe_death(w)
        for fut in list(w.ep.pending.values()):
            if not fut.done():
                fut.set_exception(err)
        w.ep.pending.clear()
        self.workers.pop(w.wid, None)
        w.close()
        self.ext._worker_gone(w, err)

    def describe_death(self, w: _Worker) -> WorkerCrashed:
        info = w.exit_info or {}
        if getattr(w, "timed_out", None):
            return WorkerCrashed(f"pack {self.name!r}: worker killed after a call timed out",
                                 reason="timeout", signal=9, extension=self.name)
        if getattr(w, "violation", None):
            return WorkerCrashed(f"pack {self.name!r}: worker dropped: {w.violation}",  # type: ignore[attr-defined]
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
        paths = [os.path.join(cg, "memory.events"), os.path.join(cg, "memory.oom_control")]
        mem = self.status.get("memory_cgroup")
        if mem:
            paths = [os.path.join(mem, "memory.events"), os.path.join(mem, "memory.oom_control")] + paths
        for p in paths:
            try:
                with open(p) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == "oom_kill":
                            n = int(v)
                            new = n > self._oom_seen
                            self._oom_seen = n
                            return new
            except (OSError, ValueError):
                continue
        return False

    def protocol_violation(self, w: _Worker, e: BaseException) -> None:
        log.error("pack %r worker #%d broke the protocol: %s; dropping it", self.name, w.wid, e)
        w.violation = str(e)  # type: ignore[attr-defined]
        if self.ext is not None:
            self.ext._retire(w)
        w.kill()
        w.on_died()

    # -- stop -------------------------------------------------------------------------------

    async def stop(self, grace: float = 2.0) -> None:
        for w in list(self.workers.values()):
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


class Extension(Generic[T]):
    """The host's handle on one loaded extension.

    ``await ext.method(*args, **kwargs)`` calls ``method`` of the extension's
    :class:`ExtensionBase` subclass in a worker. The object is awaitable:
    ``await manager.load_extension(cfg)`` starts the worker; without ``await``
    it starts on the first call (pyisolate's behaviour).
    """

    def __init__(self, manager: "ExtensionManager", config: ExtensionConfig) -> None:
        self._manager = manager
        self.config = config
        self.name: str = config["name"]
        self.venv: Optional[Dict[str, Any]] = None
        self._cell: Optional[_Cell] = None
        self._workers: List[_Worker] = []
        self._start_lock: Optional[asyncio.Lock] = None
        self._stopped = False
        self._local: Any = None
        self._rr = 0
        self.restarts = 0
        self.last_crash: Optional[BaseException] = None

    def __repr__(self) -> str:
        return f"<nodecell.Extension {self.name!r} {'isolated' if self.config['isolated'] else 'local'}>"

    # -- awaiting / starting ----------------------------------------------------------------

    def __await__(self) -> Any:
        async def start() -> "Extension":
            await self.start()
            return self
        return start().__await__()

    @property
    def walls(self) -> List[Dict[str, Any]]:
        """The sandbox's walls and their state (``active`` / ``missing`` / ``off``)."""
        if self._cell is None:
            return []
        return list(self._cell.status.get("walls", []))

    @property
    def worker_versions(self) -> Dict[str, str]:
        """Python / numpy / torch versions the worker sees."""
        for w in self._workers:
            if w.init_info:
                return dict(w.init_info.get("versions", {}))
        return {}

    @property
    def worker_pids(self) -> List[int]:
        """Pids (inside the sandbox's pid namespace) of the live workers."""
        return [w.pid for w in self._workers if w.alive and w.pid]

    async def start(self) -> None:
        """Provision the venv, start the sandbox and the workers; idempotent."""
        if self._stopped:
            raise ExtensionStopped(f"extension {self.name!r} was stopped")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self.config["isolated"]:
                if self._local is None:
                    self._local = await self._load_local()
                return
            if self.config["reload"]:
                _reload.note_start(self)  # hot reload: the files the workers will import
            if self._cell is None or self._cell.dead:
                await self._start_cell()
            want = self.config["workers"]
            live = [w for w in self._workers if w.alive]
            self._workers = live
            while len(self._workers) < want:
                self._workers.append(await self._start_worker())

    async def _load_local(self) -> Any:
        import importlib

        from ._worker_rt import _import_pack

        ext = self._manager.extension_type()
        r = ext.before_module_loaded()
        if asyncio.iscoroutine(r):
            await r
        module = _import_pack(self.config["module_path"], self.name)
        ext.module = module
        r = ext.on_module_loaded(module)
        if asyncio.iscoroutine(r):
            await r
        _ = importlib
        return ext

    async def _start_cell(self) -> None:
        if self.config["share_torch"] and "torch" not in sys.modules:
            # Decoding the first tensor would import torch on the event loop (seconds,
            # stalling every pack); import it on a thread while the sandbox starts.
            import importlib

            loop = asyncio.get_running_loop()
            torch_import = loop.run_in_executor(None, importlib.import_module, "torch")
        else:
            torch_import = None
        cell, self.venv = await self._manager._take_or_start_cell(self.config)
        if torch_import is not None:
            try:
                await torch_import
            except ImportError:
                pass
        cell.ext = self
        self._cell = cell
        self._report_walls(cell)

    def _report_walls(self, cell: _Cell) -> None:
        missing = [w for w in cell.status.get("walls", []) if w.get("state") == "missing"]
        if missing:
            logging.getLogger(f"nodecell.{self.name}").warning(
                "running without these walls (best-effort): %s",
                ", ".join(f"{w.get('name')} ({w.get('detail', '')})" for w in missing))

    async def _start_worker(self) -> _Worker:
        assert self._cell is not None
        w = await self._cell.spawn_worker()
        try:
            w.init_info = await self._call_on(w, CONTROL_ID, "init", (self._manager._init_config(self),), {},
                                              internal=True, timeout=max(60.0, self.config["timeout"] or 0))
        except BaseException:
            w.kill()
            raise
        return w

    def _retire(self, w: _Worker) -> None:
        """Stop sending new calls to ``w`` (it is being killed); the next call starts a fresh one."""
        w.alive = False
        if w in self._workers:
            self._workers.remove(w)

    def _worker_gone(self, w: _Worker, err: BaseException) -> None:
        if w in self._workers:
            self._workers.remove(w)
        if _reload.is_retired(w):  # replaced by a hot reload: an expected end
            return
        self.last_crash = err
        self.restarts += 1
        logging.getLogger(f"nodecell.{self.name}").warning("%s; the next call starts a new worker", err)

    # -- calls ------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, *args, **kwargs)

        method.__name__ = name
        self.__dict__[name] = method  # next time, found without __getattr__
        return method

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of the extension object in a worker and return its result."""
        if self._stopped:
            raise ExtensionStopped(f"extension {self.name!r} was stopped")
        if not self.config["isolated"]:
            if self._local is None:
                await self.start()
            fn = getattr(self._local, method)
            r = fn(*args, **kwargs)
            if asyncio.iscoroutine(r):
                r = await r
            return r
        if self.config["reload"]:
            await _reload.maybe_reload(self)
        w = await self._pick_worker()
        return await self._call_on(w, EXTENSION_ID, method, args, kwargs)

    def call_sync(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Blocking form of :meth:`call` for threads other than the manager's event loop."""
        loop = self._manager._loop
        if loop is None:
            raise RuntimeError("the manager has no running event loop yet; load the extension first")
        try:
            if asyncio.get_running_loop() is loop:
                raise RuntimeError("call_sync() would deadlock on the manager's own event loop; await call()")
        except RuntimeError as e:
            if "deadlock" in str(e):
                raise
        return asyncio.run_coroutine_threadsafe(self.call(method, *args, **kwargs), loop).result()

    async def _pick_worker(self) -> _Worker:
        ws = self._workers
        if len(ws) == 1 and self.config["workers"] == 1 and ws[0].alive:
            return ws[0]  # the common case, without the bookkeeping below
        live = [w for w in ws if w.alive]
        if len(live) < self.config["workers"]:
            await self.start()
            live = [w for w in self._workers if w.alive]
        if not live:
            raise WorkerCrashed(f"pack {self.name!r}: no worker could be started", extension=self.name)
        w = min(live, key=lambda w: (w.inflight, w.last_used))
        self._rr += 1
        w.last_used = self._rr
        return w

    async def _call_on(self, w: _Worker, target: int, method: str, args: tuple, kwargs: dict,
                       internal: bool = False, timeout: Optional[float] = None) -> Any:
        if w.dead:
            raise WorkerCrashed(f"pack {self.name!r}: worker is gone", extension=self.name)
        ep = w.ep
        loop = w.cell.loop
        fut = loop.create_future()
        call_id = next(ep._call_ids)
        ep.pending[call_id] = fut
        spinning = w.spin_ns > 0
        if spinning:
            w.channel.quiet_doorbell()  # we poll for the reply ourselves: no reactor wake-up
        try:
            w.channel.send(CALL, call_id, (target, method, tuple(args), dict(kwargs)))
        except BaseException:
            ep.pending.pop(call_id, None)
            if spinning:
                w.channel.resume_doorbell()
            raise
        if ep._release_queue:
            ep.flush_releases()
        w.inflight += 1
        t0 = time.perf_counter_ns()
        try:
            if spinning:
                w.spin_for(fut)
                # Hand waiting back to the reactor; take what arrived in between.
                while not w.dead and w.channel.resume_doorbell():
                    w.pump()
            if fut.done():
                return fut.result()
            if timeout is None and not internal:
                timeout = self.config["timeout"]
            if timeout is None:
                return await fut
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                if fut.done():
                    return fut.result()
                ep.pending.pop(call_id, None)
                w.timed_out = True  # type: ignore[attr-defined]
                self._retire(w)
                w.kill()
                raise CallTimeout(
                    f"pack {self.name!r}: {method}() did not return within {timeout:g} s; "
                    f"the worker was killed and will be restarted", timeout=timeout, extension=self.name) from None
        except asyncio.CancelledError:
            if not fut.done() and not w.dead:
                ep.pending.pop(call_id, None)
                try:
                    w.channel.send(CANCEL, call_id, None)
                except Exception:  # noqa: BLE001
                    pass
            raise
        finally:
            w.inflight -= 1
            rtt = time.perf_counter_ns() - t0
            # Adapt the spin window: spin when replies usually come back quickly.
            if rtt < 400_000:
                w.spin_ns = min(max(2 * rtt, 50_000), 400_000)
            else:
                w.spin_ns = 0 if w.spin_ns == 0 else w.spin_ns // 2

    # -- stopping ---------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the workers and the sandbox; later calls raise :class:`ExtensionStopped`."""
        self._stopped = True
        await self._shutdown()
        self._manager.extensions.pop(self.name, None)

    async def restart(self) -> None:
        """Stop the sandbox and start a fresh one (same config)."""
        await self._shutdown()
        self._stopped = False
        await self.start()

    async def _shutdown(self) -> None:
        if self._local is not None:
            r = self._local.stop()
            if asyncio.iscoroutine(r):
                await r
            self._local = None
        cell, self._cell = self._cell, None
        self._workers = []
        await _reload.stop_retiring(self)
        if cell is not None:
            await cell.stop()


class ExtensionManager(Generic[T]):
    """Loads extensions (node packs) and supervises their sandboxes.

    ``ExtensionManager(MyExtensionBase, ExtensionManagerConfig(venv_root_path=...))``.
    Singletons listed in an extension's ``apis`` are served from this process.
    """

    def __init__(self, extension_type: type = ExtensionBase,
                 config: Optional[Dict[str, Any]] = None) -> None:
        if not (isinstance(extension_type, type) and issubclass(extension_type, ExtensionBase)):
            raise TypeError(f"extension_type must be an ExtensionBase subclass, got {extension_type!r}")
        self.extension_type = extension_type
        if config is None:
            config = ExtensionManagerConfig()
        elif not isinstance(config, ExtensionManagerConfig):
            config = ExtensionManagerConfig(**dict(config))
        self.config = config
        self.extensions: Dict[str, Extension] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._launcher: Optional[str] = None
        self._progress: List[Any] = []
        self._warm: Dict[str, tuple] = {}
        if config.get("on_progress"):
            self._progress.append(config["on_progress"])

    async def prewarm(self, config: Any) -> None:
        """Start a pack's sandbox and zygote ahead of time (venv provisioned, heavy
        imports such as torch done), so a later :meth:`load_extension` of the same
        config only forks a worker: tens of milliseconds instead of seconds."""
        if not isinstance(config, ExtensionConfig):
            config = ExtensionConfig(config)
        if not config["isolated"]:
            return
        self._loop = asyncio.get_running_loop()
        cell, _venv = await self._start_cell_for(config)
        old = self._warm.pop(cell.key, None)
        if old is not None:
            await old[0].stop(grace=0.5)
        self._warm[cell.key] = (cell, _venv)

    def _cell_key(self, cfg: ExtensionConfig, venv: Dict[str, Any]) -> str:
        argv, env = self._launch_argv(cfg, venv)
        return json.dumps([cfg["name"], argv, sorted(env.items())])

    async def _start_cell_for(self, cfg: ExtensionConfig) -> tuple:
        loop = asyncio.get_running_loop()
        venv = await loop.run_in_executor(None, self._provision, cfg)
        cell = _Cell(cfg["name"])
        argv, env = self._launch_argv(cfg, venv)
        cell.key = self._cell_key(cfg, venv)
        try:
            await cell.start(argv, env)
        except BaseException:
            await cell.stop(grace=0.5)
            raise
        return cell, venv

    async def _take_or_start_cell(self, cfg: ExtensionConfig) -> tuple:
        if self._warm:
            loop = asyncio.get_running_loop()
            venv = await loop.run_in_executor(None, self._provision, cfg)
            key = self._cell_key(cfg, venv)
            warm = self._warm.pop(key, None)
            if warm is not None and not warm[0].dead:
                return warm[0], venv
            if warm is not None:
                await warm[0].stop(grace=0.1)
        return await self._start_cell_for(cfg)

    def on_progress(self, callback: Any) -> None:
        """Register ``callback(event: dict)`` for provisioning progress events (JSON-like dicts:
        ``{"event": "resolving"|"downloading"|"download"|"installing"|"done"|"failed"|"waiting",
        "pack": ..., "elapsed_ms": ..., ...}``), called on the manager's event loop."""
        self._progress.append(callback)

    async def progress_events(self) -> Any:
        """Async iterator over provisioning progress events (see :meth:`on_progress`), for a UI:

            async for ev in manager.progress_events():
                show(ev)
        """
        queue: asyncio.Queue = asyncio.Queue()
        self._progress.append(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            try:
                self._progress.remove(queue.put_nowait)
            except ValueError:
                pass

    def load_extension(self, config: Any) -> Extension:
        """Register an extension; returns its handle (await it to start it now).

        ``config`` is an :class:`ExtensionConfig` (or a dict of its fields).
        """
        if not isinstance(config, ExtensionConfig):
            config = ExtensionConfig(config)
        name = config["name"]
        if name in self.extensions:
            raise ValueError(f"extension {name!r} is already loaded")
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        ext = Extension(self, config)
        self.extensions[name] = ext
        return ext

    def stop_all_extensions(self) -> Any:
        """Stop every extension. Awaitable; when not awaited from a running loop it stops synchronously."""
        exts = list(self.extensions.values())
        warm = [c for c, _v in self._warm.values()]
        self._warm.clear()

        async def stop_all() -> None:
            await asyncio.gather(*(e.stop() for e in exts), *(c.stop() for c in warm), return_exceptions=True)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            loop = self._loop
            if loop is not None and not loop.is_closed() and loop.is_running():
                # The manager's loop runs in another thread: stop there and wait.
                asyncio.run_coroutine_threadsafe(stop_all(), loop).result()
            elif loop is not None and not loop.is_closed():
                loop.run_until_complete(stop_all())
            else:
                asyncio.run(stop_all())
            return _Done()
        return stop_all()

    # -- internals --------------------------------------------------------------------------

    def _emit(self, event: Dict[str, Any]) -> None:
        for cb in list(self._progress):
            try:
                if self._loop is not None and self._loop.is_running():
                    self._loop.call_soon_threadsafe(cb, event)
                else:
                    cb(event)
            except Exception:  # noqa: BLE001 - a UI callback must not break provisioning
                log.exception("progress callback failed")

    def _provision(self, cfg: ExtensionConfig) -> Dict[str, Any]:
        """Build (or find) the pack's venv; runs in an executor thread."""
        python = cfg["python"] or self.config.get("python")
        if python is None and default_interpreter() != sys.executable:
            python = default_interpreter()  # this host's interpreter is unreachable for workers
        spec = {
            "name": cfg["name"],
            "module_path": cfg["module_path"],
            "dependencies": list(cfg["dependencies"]),
            "share_torch": cfg["share_torch"],
            "python": python,
            "host_python": sys.executable,
            "extra_index_urls": list(cfg["extra_index_urls"]),
            "venv_root": self.config.get("venv_root_path"),
            "compile_bytecode": True,
        }
        try:
            return _nodecell.provision(spec, self._emit)
        except ValueError as e:
            raise ProvisionError(f"pack {cfg['name']!r}: {e}") from None

    def _launch_argv(self, cfg: ExtensionConfig, venv: Dict[str, Any]) -> tuple:
        if self._launcher is None:
            self._launcher = find_launcher()
        mode = cfg["sandbox_mode"]
        pkg_dir = os.path.dirname(os.path.abspath(__file__))
        if mode is SandboxMode.DISABLED:
            return self._unsandboxed_argv(cfg, venv, pkg_dir)
        argv = [self._launcher, "run", "--mode", mode.value, "--status-fd", "{STATUS}", "--keep-fd", "{CTL}"]
        ro: List[str] = []
        seen = set()

        def add_ro(p: str) -> None:
            if p and p not in seen:
                seen.add(p)
                ro.append(p)

        for p in venv.get("ro_paths", []):
            add_ro(p)
        add_ro(venv["path"])
        add_ro(cfg["module_path"])
        add_ro(f"{pkg_dir}:{SANDBOX_LIB}/nodecell")
        for mod in self._host_modules(cfg):
            m = _module_mount(mod)
            if m is not None:
                add_ro(f"{m[0]}:{SANDBOX_HOST}/{m[1]}")
        for p in cfg["sandbox"]["readonly_paths"]:
            add_ro(p)
        for p in ro:
            argv += ["--ro", p]
        for p in cfg["sandbox"]["writable_paths"]:
            argv += ["--rw", p]
        if cfg["sandbox"]["network"]:
            argv.append("--net")
        if cfg["sandbox"].get("gpu") or cfg["gpu"]:
            argv.append("--gpu")
        if cfg["sandbox"].get("tmp_size"):
            argv += ["--tmp-size", str(cfg["sandbox"]["tmp_size"])]
        if cfg["max_memory"]:
            argv += ["--memory", str(cfg["max_memory"])]
        if cfg["max_pids"]:
            argv += ["--pids", str(cfg["max_pids"])]
        if cfg["max_cpu_percent"]:
            argv += ["--cpu", f"{cfg['max_cpu_percent'] / 100:g}"]
        if os.geteuid() == 0 and self.config.get("worker_uid") is not None:
            argv += ["--worker-uid", str(self.config["worker_uid"])]
        env = {"NODECELL_PACK": cfg["name"], "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        if cfg["share_torch"]:
            env["NODECELL_SHARE_TORCH"] = "1"
        env.update(cfg["env"])
        for k, v in env.items():
            argv += ["--env", f"{k}={v}"]
        argv += ["--cwd", cfg["module_path"], "--", venv["python"], "-s", "-E", "-c", _BOOTSTRAP,
                 "--ctl-fd", "{CTL}", "--preload", ",".join(self._preload(cfg))]
        host_env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "RUST_LOG")}
        return argv, host_env

    def _unsandboxed_argv(self, cfg: ExtensionConfig, venv: Dict[str, Any], pkg_dir: str) -> tuple:
        """SandboxMode.DISABLED: a plain child process, same protocol, no walls.

        The worker's sys.path gets a private folder of symlinks (nodecell and the
        host modules it needs), never the host's whole site-packages.
        """
        import tempfile

        shim = tempfile.mkdtemp(prefix=f"nodecell-{cfg['name']}-")
        os.symlink(pkg_dir, os.path.join(shim, "nodecell"))
        for mod in self._host_modules(cfg):
            m = _module_mount(mod)
            if m is not None and not os.path.exists(os.path.join(shim, m[1])):
                os.symlink(m[0], os.path.join(shim, m[1]))
        for p in cfg["sandbox"]["readonly_paths"]:
            src, _, dst = p.partition(":")
            if dst.startswith(SANDBOX_HOST + "/"):
                link = os.path.join(shim, dst[len(SANDBOX_HOST) + 1:])
                if "/" not in dst[len(SANDBOX_HOST) + 1:] and not os.path.exists(link):
                    os.symlink(src, link)
        boot = _BOOTSTRAP.replace(SANDBOX_LIB, shim).replace(SANDBOX_HOST, shim)
        argv = [venv["python"], "-s", "-E", "-c", boot, "--ctl-fd", "{CTL}",
                "--preload", ",".join(self._preload(cfg))]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME")}
        env.update({"NODECELL_PACK": cfg["name"], "PYTHONUNBUFFERED": "1"})
        env.update(cfg["env"])
        return argv, env

    def _preload(self, cfg: ExtensionConfig) -> List[str]:
        if cfg["preload"] is not None:
            return list(cfg["preload"])
        return ["torch"] if cfg["share_torch"] else []

    def _host_modules(self, cfg: ExtensionConfig) -> List[str]:
        mods = [self.extension_type.__module__]
        mods += [a.__module__ for a in cfg["apis"]]
        mods += [t.__module__ for t in registered_types().values()]
        return [m for m in dict.fromkeys(mods) if m not in ("nodecell", "__main__") and not m.startswith("nodecell.")]

    def _init_config(self, ext: Extension) -> Dict[str, Any]:
        cfg = ext.config
        apis = []
        for i, api in enumerate(cfg["apis"]):
            hid = _SINGLETON_BASE_ID + i
            apis.append({"id": hid, "module": api.__module__, "qualname": api.__qualname__})
        et = self.extension_type
        if et.__module__ == "__main__":
            raise TypeError(
                f"{et.__qualname__} is defined in __main__; define it in an importable module so the worker can import it")
        return {
            "name": cfg["name"],
            "module_path": cfg["module_path"],
            "extension_type": {"module": et.__module__, "qualname": et.__qualname__},
            "apis": apis,
            "records": [{"name": n, "module": t.__module__, "qualname": t.__qualname__}
                        for n, t in registered_types().items() if t.__module__ != "__main__"],
            "log_level": logging.getLogger(f"nodecell.{cfg['name']}").getEffectiveLevel(),
        }


class _Done:
    """An already-finished awaitable (what sync-called ``stop_all_extensions`` returns)."""

    def __await__(self) -> Any:
        if False:  # pragma: no cover
            yield None
        return None


_ = (weakref, CALLBACK, ProtocolError, NodecellError, ProxiedSingleton)
