"""The host's handle on one loaded extension: :class:`Extension`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Generic, List, Optional, TypeVar

from . import _nodecell, _reload, _sync
from ._rpc import CANCEL, CONTROL_ID, EXTENSION_ID
from .cell import GONE, _Cell, _Worker
from .config import ExtensionConfig
from .errors import CallTimeout, ChannelFull, ExtensionStopped, LoopEnded, WorkerCrashed
from .shared import ExtensionBase
from .tools import hooks as _tools
from .tools import profile as _profile

if TYPE_CHECKING:
    from .manager import ExtensionManager

_CALL_DONE = _nodecell.CALL_DONE
_CALL_FAILED = _nodecell.CALL_FAILED
_CALL_OTHER = _nodecell.CALL_OTHER
_CALL_BROKEN = _nodecell.CALL_BROKEN
_now_ns = time.perf_counter_ns


class _Waiting:
    """A call :meth:`Extension._call_fast` sent to worker ``w`` whose answer did not come
    yet (``fut``; None: nothing was sent)."""

    __slots__ = ("call_id", "fut", "t0", "w")

    def __init__(self, call_id: int, fut: Optional[asyncio.Future], t0: int, w: Optional[_Worker]) -> None:
        self.call_id, self.fut, self.t0, self.w = call_id, fut, t0, w


#: Nothing was sent: take the general path.
_NOT_SENT = _Waiting(0, None, 0, None)

__all__ = ["Extension", "ExtensionMethods"]

T = TypeVar("T", bound=ExtensionBase)


#: Seconds a new worker may take to start (its ``init``: the pack's import) before it
#: counts as hung. A start is not a call: the pack's per-call ``timeout`` raises this,
#: never lowers it (a restart after a timed-out call on a loaded machine, importing a
#: large pack, must not fail for the node deadline of the call that needs it).
START_TIMEOUT = 300.0


def _start_timeout(call_timeout: Optional[float]) -> float:
    return max(START_TIMEOUT, call_timeout or 0.0)


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
        #: The loop ``_start_lock`` serves.
        self._start_loop: Optional[asyncio.AbstractEventLoop] = None
        #: Calls, errors and a latency histogram (lock-free, read by `nodecell top`).
        self._stats = _nodecell.CallStats()
        #: The common case of a call in Rust (see _arm_fast); armed by the general path.
        self._fast = _nodecell.FastCall(EXTENSION_ID, _NOT_SENT, self._after_spin, self._fast_send_failed,
                                        _profile, self._stats)
        self._stopped = False
        self._local: Any = None
        self._rr = 0
        self.restarts = 0
        self.last_crash: Optional[BaseException] = None

    def __repr__(self) -> str:
        return f"<nodecell.Extension {self.name!r} {'isolated' if self.config['isolated'] else 'local'}>"

    @property
    def _stopped(self) -> bool:
        return self._stopped_flag

    @_stopped.setter
    def _stopped(self, stopped: bool) -> None:
        self._stopped_flag = stopped
        if stopped:
            self._fast.disarm()

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
        # A bad NODECELL_TENSOR_POOL in the host's environment: a ValueError naming it, here
        # (the pool, made on the first tensor, could only fall back to its default).
        _nodecell.tensor_pool_env_limit()
        cell = self._cell
        if cell is not None and cell.loop is not asyncio.get_running_loop():
            if cell.loop.is_running():
                try:
                    return await _on_loop(cell.loop, self.start(), f"starting pack {self.name!r}")
                except LoopEnded:
                    pass  # that loop ended first: start here
            if self._cell is cell:
                self._abandon_cell()
        here = asyncio.get_running_loop()
        lock_loop = self._start_loop
        if self._start_lock is not None and lock_loop is not here:
            # A start began on another thread's loop (an asyncio.Lock serves one loop): it
            # finishes there, and this caller then uses what it started.
            if lock_loop is not None and lock_loop.is_running():
                try:
                    return await _on_loop(lock_loop, self.start(), f"starting pack {self.name!r}")
                except LoopEnded:
                    pass
            if self._start_loop is lock_loop:
                self._start_lock = None
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
            self._start_loop = here
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
            self._fast.disarm()  # armed again by the next call, when still allowed
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
                                              internal=True, timeout=_start_timeout(self.config["timeout"]))
        except BaseException:
            w.kill()
            raise
        await _tools.worker_ready(self, w)  # breakpoints and profiling asked for by the tools
        return w

    def _retire(self, w: _Worker) -> None:
        """Stop sending new calls to ``w`` (it is being killed); the next call starts a fresh one."""
        w.alive = False
        self._fast.disarm()
        if w in self._workers:
            self._workers.remove(w)

    def _worker_gone(self, w: _Worker, err: BaseException) -> None:
        self._fast.disarm()
        if w in self._workers:
            self._workers.remove(w)
        if _reload.is_retired(w):  # replaced by a hot reload: an expected end
            return
        self.last_crash = _detached(err)
        self.restarts += 1
        logging.getLogger(f"nodecell.{self.name}").warning("%s; the next call starts a new worker", err)

    # -- calls ------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        method = self._remote_method(name)
        self.__dict__[name] = method  # next time, found without __getattr__
        return method

    @property
    def proxy(self) -> "ExtensionMethods":
        """The extension's own methods and nothing else: ``await ext.proxy.call(x)``
        reaches a method named ``call`` that the handle's own :meth:`call` shadows."""
        return ExtensionMethods(self)

    def _remote_method(self, name: str) -> Any:
        """An async function calling method ``name`` in the worker; AttributeError when the
        extension type has no such method (never a silent remote call to nowhere)."""
        if name.startswith("_"):
            raise AttributeError(name)
        et = self._manager.extension_type
        if not callable(getattr(et, name, None)) and not hasattr(et, "__getattr__"):
            raise AttributeError(f"{et.__qualname__} has no method {name!r} (the extension type given to "
                                 f"ExtensionManager decides what the host can call)")

        if type(self)._call is Extension._call:
            fast = self._fast

            async def method(*args: Any, **kwargs: Any) -> Any:
                # Extension._call, inline (one coroutine less per call)
                got = fast(name, args, kwargs)
                if type(got) is not _Waiting:
                    return got
                return await self._call_general(name, args, kwargs, got)
        else:  # a subclass's own _call (RayExtension)
            async def method(*args: Any, **kwargs: Any) -> Any:
                return await self._call(name, args, kwargs)

        method.__name__ = name
        return method

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of the extension object in a worker and return its result."""
        return await self._call(method, args, kwargs)

    async def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        got = self._call_now(method, args, kwargs)
        if type(got) is not _Waiting:
            return got
        return await self._call_general(method, args, kwargs, got)

    def _call_now(self, method: str, args: tuple, kwargs: dict) -> Any:
        """:meth:`_call`'s common case without a coroutine (one live worker on this loop,
        replies within the spin), in Rust (``_nodecell.FastCall``, armed by
        :meth:`_arm_fast`): the answer (or raises the error), else a :class:`_Waiting`
        for :meth:`_call_general`."""
        return self._fast(method, args, kwargs)

    def _arm_fast(self, w: _Worker) -> None:
        """Let :meth:`_call_now` (in Rust) send calls to ``w`` while it may: the only
        worker, isolated, no hot reload, its cell served by the running loop. Disarmed
        whenever the workers change or the extension stops; per call, Rust checks the
        profiler, the running loop and ``w.alive`` / ``w.dead`` / ``w.spin_ns``."""
        cell = self._cell
        cfg = self.config
        if (self._workers == [w] and cell is not None and cell.loop is _running_loop() and cfg["isolated"]
                and not cfg["reload"] and cfg["workers"] == 1 and not self._stopped):
            self._fast.arm(w, w.channel, w.rx, cell.loop, w.ep, w.ep._call_ids)

    async def _call_general(self, method: str, args: tuple, kwargs: dict, got: _Waiting) -> Any:
        """:meth:`_call` after :meth:`_call_now`: waits for the answer it sent, or takes the
        general path when it sent nothing."""
        if got.fut is not None:
            assert got.w is not None
            waiting = self._wait_answer(got.w, got.call_id, got.fut, method, False, None, 0, 0, 0, got.t0)
            loop = got.fut.get_loop()
            if loop is not asyncio.get_running_loop():  # sent from another thread's loop: see _after_spin
                try:
                    return await _on_loop(loop, waiting, f"pack {self.name!r}: {method}()")
                except _LoopGone:
                    raise LoopEnded(f"pack {self.name!r}: {method}() was cut off: the event loop serving the "
                                    f"sandbox, running in another thread, ended during it (the worker may have "
                                    f"run it)", extension=self.name) from None
            return await waiting
        queued = time.monotonic_ns() if _profile.ACTIVE else 0  # the profiler's "queue" starts here
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
        cell = self._cell
        here = asyncio.get_running_loop()
        if cell is not None and cell.loop is not here:
            if cell.loop.is_running():  # the sandbox is served by a loop in another thread
                try:
                    return await _on_loop(cell.loop, self._call(method, args, kwargs),
                                          f"pack {self.name!r}: {method}()")
                except _LoopGone:
                    return await self._call(method, args, kwargs)  # it ended first: nothing was sent
            if self._cell is not cell:  # another thread replaced it meanwhile
                return await self._call(method, args, kwargs)
            self._abandon_cell()  # its loop is gone: start afresh on this one
        elif cell is not None:
            cell.loop_thread = threading.get_ident()  # its loop may run on another thread than before
        if self.config["reload"]:
            await _reload.maybe_reload(self)
        ws = self._workers
        if len(ws) == 1 and ws[0].alive and self.config["workers"] == 1:
            w = ws[0]  # the common case, without a coroutine for _pick_worker
        else:
            w = await self._pick_worker()
        if w.cell.loop is not here:  # its sandbox was started on another thread's loop meanwhile
            return await self._call(method, args, kwargs)
        if not queued and w.spin_ns > 0 and not w.dead:
            self._arm_fast(w)
            got = self._call_fast(w, EXTENSION_ID, method, args, kwargs, False)
            if type(got) is not _Waiting:
                return got
            if got.fut is not None:
                return await self._wait_answer(w, got.call_id, got.fut, method, False, None, 0, 0, 0, got.t0)
        return await self._call_on(w, EXTENSION_ID, method, args, kwargs, queued_at=queued)

    def call_sync(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` in a worker and return its value, blocking this thread: from any
        thread, with or without an event loop running in it (also the manager's own loop:
        its thread then serves the worker's calls back itself). Calls the worker makes
        back meanwhile (host services, callbacks) run on this thread."""
        if self._stopped:
            raise ExtensionStopped(f"extension {self.name!r} was stopped")
        if not self.config["isolated"]:
            if self._local is None:
                self._run_blocking(self.start())
            r = getattr(self._local, method)(*args, **kwargs)
            return self._run_blocking(r) if asyncio.iscoroutine(r) else r
        return _sync.call(self, self._sync_worker(), EXTENSION_ID, method, args, kwargs)

    def _sync_worker(self) -> _Worker:
        """A live worker for a synchronous call, started here if need be."""
        live = [w for w in self._workers if w.alive]
        if live:  # (more are started by asynchronous calls, as configured)
            w = min(live, key=lambda w: (w.inflight, w.last_used))
            self._rr += 1
            w.last_used = self._rr
            return w
        cell = self._cell
        loop = cell.loop if cell is not None else self._manager._loop
        if loop is None:
            raise RuntimeError("the manager has no event loop yet; load the extension first")
        if _running_loop() is loop or (cell is not None and threading.get_ident() == cell.loop_thread):
            # Sync code on the extension's own loop: that loop cannot run start(); start the
            # worker from here (a new sandbox needs the loop: refused).
            if cell is None or cell.dead:
                raise WorkerCrashed(
                    f"pack {self.name!r}: its sandbox is gone, and a new one cannot start from synchronous "
                    f"code running on its own event loop; await the call instead", extension=self.name)
            w = self._start_worker_blocking()
            self._workers.append(w)
            return w
        if not loop.is_running():
            raise RuntimeError(f"extension {self.name!r}: its event loop is not running")
        return _result_from(loop, self._pick_worker(), f"pack {self.name!r}: starting a worker")

    def _start_worker_blocking(self) -> _Worker:
        """:meth:`_start_worker` on the cell's loop thread while that loop is blocked."""
        assert self._cell is not None
        w = self._cell.spawn_worker_now()
        try:
            w.init_info = _sync.call(self, w, CONTROL_ID, "init", (self._manager._init_config(self),), {},
                                     internal=True, timeout=_start_timeout(self.config["timeout"]))
        except BaseException:
            w.kill()
            raise
        _sync.run_now(_tools.worker_ready(self, w))
        return w

    def _run_blocking(self, coro: Any) -> Any:
        """Run a coroutine to its end from synchronous code (for the in-process mode)."""
        loop = self._manager._loop
        if loop is not None and loop.is_running() and _running_loop() is not loop:
            return _result_from(loop, coro, f"pack {self.name!r}: the call")
        if _running_loop() is None:
            return asyncio.run(coro)
        out: Dict[str, Any] = {}

        def run() -> None:
            try:
                out["v"] = asyncio.run(coro)
            except BaseException as e:  # noqa: BLE001
                out["e"] = e

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if "e" in out:
            raise out["e"]
        return out.get("v")

    async def _call_anywhere(self, w: _Worker, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        """:meth:`_call_on` awaited on any loop (a proxy's awaitable in the host)."""
        loop = w.cell.loop
        if _running_loop() is loop:
            return await self._call_on(w, target, method, args, kwargs)
        try:
            return await _on_loop(loop, self._call_on(w, target, method, args, kwargs),
                                  f"pack {self.name!r}: {method}()")
        except _LoopGone:
            raise LoopEnded(f"pack {self.name!r}: {method}() was not made: the event loop serving its sandbox, "
                            f"running in another thread, ended", extension=self.name) from None

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
                       internal: bool = False, timeout: Optional[float] = None, queued_at: int = 0) -> Any:
        if w.dead:
            if w.death is not None:
                raise _detached(w.death)
            raise WorkerCrashed(f"pack {self.name!r}: worker is gone", extension=self.name)
        if w.spin_ns > 0 and not _profile.ACTIVE:
            got = self._call_fast(w, target, method, args, kwargs, internal)
            if type(got) is not _Waiting:
                return got
            if got.fut is not None:
                return await self._wait_answer(w, got.call_id, got.fut, method, internal, timeout, queued_at,
                                               0, 0, got.t0)
        return await self._call_slow(w, next(w.ep._call_ids), target, method, args, kwargs, internal, timeout,
                                     queued_at)

    def _call_fast(self, w: _Worker, target: int, method: str, args: tuple, kwargs: dict, internal: bool) -> Any:
        """The common case of a call, in Rust: send, spin for the answer (GIL released),
        decode it; returns the value (or raises the error). While this thread spins it owns
        receiving, so nobody else can take the answer: a future is made only when the
        answer did not come in the spin (returned in a :class:`_Waiting`, with ``fut``
        None when another thread receives now: then nothing was sent)."""
        rx = w.rx
        if not rx.acquire(False):
            return _NOT_SENT  # a thread waiting synchronously receives
        ep = w.ep
        call_id = next(ep._call_ids)
        try:
            # Rust times the call, counts it in the stats (unless internal) and sets the spin
            # window: twice the round trip, at least 50 us (see _wait_answer).
            state, payload, more, elapsed, w.spin_ns = w.channel.call_spin(
                call_id, target, method, tuple(args), kwargs, w.spin_ns, None if internal else self._stats)
        except BaseException as e:  # noqa: BLE001 - sorted out (or raised again) by _send_failed
            rx.release()
            return self._fast_send_failed(w, call_id, method, e)
        if state <= _CALL_FAILED:
            rx.release()
            if more:
                w._schedule_drain()
            if ep._release_queue:
                ep.flush_releases()
            if state == _CALL_DONE:
                return payload
            raise payload
        return self._after_spin(w, call_id, state, payload, more, elapsed)

    def _fast_send_failed(self, w: _Worker, call_id: int, method: str, e: BaseException) -> _Waiting:
        """Sending call ``call_id`` raised ``e`` (the receive lock is released): what the
        call waits on (see :meth:`_send_failed`), or raise."""
        return _Waiting(call_id, self._send_failed(w, call_id, method, e, _running_loop() is w.cell.loop),
                        _now_ns(), w)

    def _after_spin(self, w: _Worker, call_id: int, state: int, payload: Any, more: bool, elapsed: int) -> _Waiting:
        """Call ``call_id`` was sent and its answer did not come in the spin (``state``:
        ``CALL_WAIT`` / ``CALL_OTHER`` / ``CALL_BROKEN``, as ``call_spin`` returned it):
        the future it waits on, registered before the receive lock (held by the caller)
        is released here."""
        ep = w.ep
        t0 = _now_ns() - elapsed
        loop = w.cell.loop
        fut = loop.create_future()
        ep.pending[call_id] = fut
        w.rx.release()
        if _running_loop() is not loop:
            # FastCall sent it from a thread whose running loop is not the sandbox's (the
            # loop it was armed with runs on another thread now): what follows is that
            # loop's work, handed over thread-safely as a synchronous waiter does; the
            # caller awaits the future there (_call_general).
            if state == _CALL_OTHER:
                _sync.route(w, payload, threading.get_ident(), False)
            elif state == _CALL_BROKEN:
                if isinstance(payload, GONE):
                    _sync.notice_death(w, False)
                else:
                    _sync.violation(w, payload, False)
            if state != _CALL_BROKEN:
                _sync.hand_back(w, False)  # the loop receives what comes next and re-arms
            if ep._release_queue:
                ep.flush_releases()
            return _Waiting(call_id, fut, t0, w)
        if state == _CALL_OTHER:
            # Another frame came first (a callback, a log line): handle it and go on
            # spinning as the general path does; the doorbell is still quiet.
            ep.handle_frame(*payload)
            if not w.dead:
                w.spin_for(call_id, fut)
            w.rearm()
        elif state == _CALL_BROKEN:
            if isinstance(payload, GONE):
                w.on_died()
            else:
                w.cell.protocol_violation(w, payload)
        elif more:
            w._schedule_drain()
        if ep._release_queue:
            ep.flush_releases()
        return _Waiting(call_id, fut, t0, w)

    def _send_failed(self, w: _Worker, call_id: int, method: str, e: BaseException,
                     on_loop: bool = True) -> asyncio.Future:
        """``call_spin`` raised (nothing was sent, or the worker is gone): the future the
        call waits on (failed by the worker's death), or raise. ``on_loop``: whether this
        thread runs the sandbox's loop (else what follows is handed to it)."""
        if isinstance(e, GONE):
            # The worker is gone (maybe unnoticed so far): its death, described with the
            # real reason, fails this call like every other pending one.
            fut = w.cell.loop.create_future()
            w.ep.pending[call_id] = fut
            if on_loop:
                w.on_died()
            else:
                _sync.notice_death(w, False)
            return fut
        if isinstance(e, _nodecell.ProtocolViolation):
            fut = w.cell.loop.create_future()
            w.ep.pending[call_id] = fut
            if on_loop:
                w.cell.protocol_violation(w, e)
            else:
                _sync.violation(w, e, False)
            return fut
        if on_loop:
            w.drain()  # the doorbell was quiet: take what arrived meanwhile
        else:
            _sync.hand_back(w, False)
        if isinstance(e, _nodecell.ChannelBacklog):
            raise ChannelFull(f"pack {self.name!r}: {method}() was not sent: {e}",
                              extension=self.name) from None
        raise e  # e.g. an argument that cannot cross: nothing was sent

    async def _call_slow(self, w: _Worker, call_id: int, target: int, method: str, args: tuple, kwargs: dict,
                         internal: bool, timeout: Optional[float], queued_at: int) -> Any:
        """:meth:`_call_on` with the future made first (another thread receives, the
        profiler is on, or replies were slow lately)."""
        ep = w.ep
        loop = w.cell.loop
        fut = loop.create_future()
        ep.pending[call_id] = fut
        spinning = w.spin_ns > 0
        ch = w.channel
        profiled = _profile.ACTIVE and not internal
        send_ns = time.monotonic_ns() if profiled else 0
        try:
            if spinning:
                ch.quiet_doorbell()  # we poll for the reply ourselves: no reactor wake-up
            # Never blocks: what does not fit waits in the channel's outbox (the reactor
            # pushes it on as the worker frees space), bounded by this call's deadline.
            if not ch.send_call(call_id, target, method, tuple(args), dict(kwargs)) and spinning:
                spinning = False  # queued: no reply can come before the worker reads it
                w.rearm()  # so the reactor, not this call, waits for it (the doorbell was quieted)
        except GONE:
            # The worker is gone (maybe unnoticed so far): its death, described with the
            # real reason, fails this call like every other pending one.
            w.on_died()
        except _nodecell.ProtocolViolation as e:
            w.cell.protocol_violation(w, e)
        except _nodecell.ChannelBacklog as e:
            ep.pending.pop(call_id, None)
            w.drain()
            raise ChannelFull(f"pack {self.name!r}: {method}() was not sent: {e}",
                              extension=self.name) from None
        except BaseException:
            ep.pending.pop(call_id, None)  # e.g. an argument that cannot cross: nothing was sent
            if spinning:
                w.drain()
            raise
        sent_ns = time.monotonic_ns() if profiled else 0
        if ep._release_queue:
            ep.flush_releases()
        t0 = time.perf_counter_ns()
        if spinning and not w.dead:
            w.spin_for(call_id, fut)
            # Hand waiting back to the reactor (what arrived meanwhile is handled on
            # the next loop turn).
            w.rearm()
        return await self._wait_answer(w, call_id, fut, method, internal, timeout, queued_at, send_ns, sent_ns, t0)

    async def _wait_answer(self, w: _Worker, call_id: int, fut: asyncio.Future, method: str, internal: bool,
                           timeout: Optional[float], queued_at: int, send_ns: int, sent_ns: int, t0: int) -> Any:
        """Wait for a sent call's answer: its timeout (the worker is killed when it passes),
        cancellation (CANCEL to the worker), the call statistics and the spin window."""
        ep = w.ep
        loop = w.cell.loop
        profiled = send_ns != 0  # the profiler was on when the call was sent
        w.inflight += 1
        failed = False
        try:
            if fut.done():
                return fut.result()
            if timeout is None and not internal:
                timeout = self.config["timeout"]
            if timeout is None:
                return await fut
            paused = w.tools.paused()
            start = loop.time()
            deadline = start + timeout
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), max(deadline - loop.time(), 0))
                except asyncio.TimeoutError:
                    if fut.done():
                        return fut.result()
                # Time the worker spent stopped in a debugger does not count (nodecell.tools).
                grace = await w.tools.timeout_grace(paused)
                if fut.done():
                    return fut.result()
                deadline = start + timeout + grace
                if deadline <= loop.time():
                    break
            ep.pending.pop(call_id, None)
            w.timed_out = True
            self._retire(w)
            w.kill()
            raise CallTimeout(
                f"pack {self.name!r}: {method}() did not return within {timeout:g} s; "
                f"the worker was killed and will be restarted", timeout=timeout, extension=self.name)
        except asyncio.CancelledError:
            failed = True
            if not fut.done() and not w.dead:
                ep.pending.pop(call_id, None)
                try:
                    w.channel.send(CANCEL, call_id, None)
                except Exception:  # noqa: BLE001 - a dead worker needs no cancel
                    pass
            raise
        except BaseException:
            failed = True
            raise
        finally:
            w.inflight -= 1
            rtt = time.perf_counter_ns() - t0
            if not internal:
                (self._stats.record_error if failed else self._stats.record)(rtt)
                if profiled:
                    _profile.host_call(self, w, call_id, method, queued_at, send_ns, sent_ns, failed)
            # Adapt the spin window: spin when replies usually come back quickly.
            if rtt < 400_000:
                w.spin_ns = min(max(2 * rtt, 50_000), 400_000)
            else:
                w.spin_ns = 0 if w.spin_ns == 0 else w.spin_ns // 2

    # -- stopping ---------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the workers and the sandbox; later calls raise :class:`ExtensionStopped`.

        Works from any event loop: the sandbox's own loop in another thread stops it
        there; when that loop is gone (closed, or no longer running), the sandbox is
        ended from here without it."""
        self._stopped = True
        cell = self._cell
        if cell is not None and cell.loop is not asyncio.get_running_loop():
            try:
                if not cell.loop.is_running():
                    raise _LoopGone("not running")
                await _on_loop(cell.loop, self._shutdown(), f"stopping pack {self.name!r}")
            except LoopEnded:  # that loop ended first, or while it stopped the sandbox: end it from here
                if self._cell is cell:
                    self._abandon_cell()
        await self._shutdown()
        if self._manager.extensions.get(self.name) is self:
            self._manager.extensions.pop(self.name, None)

    def _abandon_cell(self) -> None:
        """The sandbox's event loop is gone: end the sandbox from this thread and forget it
        (workers get no ``stop()`` hook; the next start makes a new sandbox on this loop)."""
        self._fast.disarm()
        cell, self._cell = self._cell, None
        self._workers = []
        self._start_lock = None
        if cell is not None:
            cell.kill_now()

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
        self._fast.disarm()
        cell, self._cell = self._cell, None
        self._workers = []
        await _reload.stop_retiring(self)
        if cell is not None:
            await cell.stop()


class ExtensionMethods:
    """``Extension.proxy``: only the extension's own methods, as async functions."""

    __slots__ = ("_ext",)

    def __init__(self, ext: Extension) -> None:
        self._ext = ext

    def __getattr__(self, name: str) -> Any:
        return self._ext._remote_method(name)

    def __repr__(self) -> str:
        return f"<methods of {self._ext!r}>"


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


#: Seconds between looks, while coroutines handed to other threads' loops run, at whether
#: those loops were closed (what a closed loop had not run is dropped, never ended).
_HOP_LOOK = 0.05


class _LoopGone(LoopEnded):
    """The loop a coroutine was handed to ended before the coroutine began: nothing ran."""


class _Hop:
    """A coroutine handed to another thread's loop: whether it began there, and whether
    that loop's end cut it off."""

    __slots__ = ("began", "cut", "target")

    def __init__(self, target: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.began = False
        self.cut = False


class _HopWatch:
    """For each loop that awaits hops, those hops; one timer per such loop looks at them
    every ``_HOP_LOOK`` s while any are in flight (not one per hop). A loop's entry is
    touched only from the thread running that loop (one at a time, even when the loop
    moves threads); whole-dict steps are single C calls, atomic under the GIL."""

    def __init__(self) -> None:
        self.hops: Dict[asyncio.AbstractEventLoop, Dict[asyncio.Future, _Hop]] = {}

    def add(self, here: asyncio.AbstractEventLoop, fut: asyncio.Future, hop: _Hop) -> None:
        hops = self.hops.get(here)
        if hops is None:
            for lp in list(self.hops):  # closed with hops left: no look ran to drop them
                if lp.is_closed():
                    self.hops.pop(lp, None)
            hops = self.hops[here] = {}
            here.call_later(_HOP_LOOK, self.look, here)
        hops[fut] = hop

    def look(self, here: asyncio.AbstractEventLoop) -> None:
        hops = self.hops.get(here)
        if not hops:
            self.hops.pop(here, None)
            return
        for fut, hop in list(hops.items()):
            if not fut.done() and hop.target.is_closed():
                hop.cut = True
                fut.cancel()
        here.call_later(_HOP_LOOK, self.look, here)


_hop_watch = _HopWatch()


async def _on_loop(loop: asyncio.AbstractEventLoop, coro: Any, what: str = "the call") -> Any:
    """Run ``coro`` on ``loop`` (running in another thread) and wait for it here.

    That loop may end first (an ``asyncio.run`` in its thread returns; what it had not run
    is cancelled, or dropped when it closes): :class:`_LoopGone` when ``coro`` never began
    there (the caller may go on without that loop), :class:`LoopEnded` (``what`` was cut
    off) when it did; never a wait without end."""
    hop = _Hop(loop)

    async def run() -> Any:
        hop.began = True
        try:
            return await coro
        except asyncio.CancelledError:
            hop.cut = True  # set before this caller can see the cancellation
            raise

    step = run()
    try:
        fut = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(step, loop))
    except RuntimeError:  # closed already
        step.close()
        coro.close()
        raise _LoopGone("the event loop was closed") from None
    here = fut.get_loop()
    _hop_watch.add(here, fut, hop)
    try:
        return await fut
    except asyncio.CancelledError:
        if not hop.cut:
            # Cancelled before it began there: by that loop's end, or this caller was
            # cancelled (Task.cancelling(), Python 3.11+, tells; before 3.11: the caller).
            cancelling = getattr(asyncio.current_task(here), "cancelling", None)
            if hop.began or cancelling is None or cancelling():
                raise  # this caller was cancelled (and so, through fut, is the coroutine there)
    finally:
        hops = _hop_watch.hops.get(here)
        if hops is not None:
            hops.pop(fut, None)
    if not hop.began:
        step.close()
        coro.close()
        raise _LoopGone("the event loop ended")
    raise LoopEnded(f"{what} was cut off: the event loop serving the sandbox, running in another thread, ended "
                    f"during it (the worker may have run it)")

def _result_from(loop: asyncio.AbstractEventLoop, coro: Any, what: str) -> Any:
    """Run ``coro`` on ``loop`` (running in another thread) and wait for its value here,
    blocking this thread; :class:`LoopEnded` when that loop ends first (what it had not
    run is cancelled, or dropped when it closes): never a wait without end."""
    try:
        cf = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # closed already
        coro.close()
        raise LoopEnded(f"{what} was not made: the event loop serving the sandbox was closed") from None
    while not cf.done():
        concurrent.futures.wait((cf,), _HOP_LOOK)
        if not cf.done() and loop.is_closed():
            cf.cancel()
            break
    if not cf.done() or cf.cancelled():  # cancelled by that loop's end: nobody else cancels it
        raise LoopEnded(f"{what} was cut off: the event loop serving the sandbox, running in another thread, "
                        f"ended first")
    return cf.result()


def _detached(err: BaseException) -> BaseException:
    """A copy of ``err`` without its traceback (whose frames hold the call's worker and
    channel): what ``Extension.last_crash`` keeps."""
    try:
        copy = type(err).__new__(type(err))
        copy.__dict__.update(err.__dict__)
        copy.args = err.args
    except Exception:  # noqa: BLE001 - an exotic exception type: keep its text only
        return RuntimeError(str(err))
    copy.__traceback__ = None
    copy.__cause__ = copy.__context__ = None
    return copy
