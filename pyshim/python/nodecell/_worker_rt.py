"""The worker's side of the RPC: serving the host's calls, calling the host back.

Threads: a small pool of dispatcher threads takes turns receiving (whoever holds
``_rx`` owns the ring's consumer side) and runs each sync call inline right
after receiving it, handing the receiving role to an idle thread (leader /
follower), so a call costs no thread hand-off and long calls do not block
others. ``async def`` methods run on one asyncio loop thread. A thread waiting
for the host's reply to its own call keeps receiving meanwhile, so host ->
worker -> host -> worker re-entrancy works.

Receiving and the common calls happen in Rust (``_nodecell.Dispatcher``): a call to
a method of a pinned object that was resolved once is served there (an ``async def``
one as a Task whose first step runs there); what it hands back is served here.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _nodecell
from ._rpc import (CONTROL_ID, ERROR, EXTENSION_ID, LOG, REPLY, Endpoint, error_value,
                   is_async_callable, register_type)
from .errors import ProtocolError, RemoteError
from .shared import ProxiedSingleton, SingletonMetaclass
from .tools import worker as _tools

_MAX_THREADS = 32

#: The id of the host's call this code runs for (thread or task): calls to the host
#: made meanwhile carry it as their parent, so the host serves them on the thread
#: that waits for that call.
_SERVING: "contextvars.ContextVar[Optional[int]]" = contextvars.ContextVar("nodecell_serving", default=None)

#: Set-up hooks run by :meth:`WorkerEndpoint.init` (see :func:`add_init_hook`).
_INIT_HOOKS: List[Any] = []


def add_init_hook(hook: Any) -> None:
    """Run ``hook(endpoint)`` in every worker's ``init``, after the host's singleton
    proxies are installed and before the extension type is imported. If it returns a
    callable, that is called with the extension object right after it is created
    (before ``before_module_loaded``). Registered in the zygote, inherited by workers;
    used by :mod:`nodecell.compat` to set up pyisolate's child-side state."""
    _INIT_HOOKS.append(hook)


class _Waiter:
    __slots__ = ("event", "value", "error", "done", "future", "loop")

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.done = False
        self.loop = loop
        self.future: Optional[asyncio.Future] = loop.create_future() if loop is not None else None


class _LogHandler(logging.Handler):
    """Forwards the worker's log records to the host as LOG frames."""

    def __init__(self, ep: "WorkerEndpoint") -> None:
        super().__init__(logging.DEBUG)
        self.ep = ep
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False) or self.ep.closed:
            return
        self._busy.on = True
        try:
            msg = self.format(record)
            self.ep.channel.send(LOG, 0, (int(record.levelno), str(record.name), msg[:65536]))
        except Exception:  # noqa: BLE001 - logging must never raise
            pass
        finally:
            self._busy.on = False


class WorkerEndpoint(Endpoint):
    """The worker's endpoint: serves calls from the host, proxies calls to it."""

    def __init__(self, channel: Any) -> None:
        super().__init__(channel, "host")
        self._rx = threading.Lock()
        self._waiters: Dict[int, _Waiter] = {}
        self._state = threading.Lock()
        self._receivers = 0
        self._threads = 0
        self._parked = threading.Condition()
        self._nparked = 0
        self._wd_wake = threading.Event()
        #: Receives and serves resolved calls in Rust; its state tells the watchdog who receives.
        self._disp = _nodecell.Dispatcher(channel, self, self._rx, _SERVING, error_value,
                                          _task_error_value, self._wd_wake)
        self._disp.set_watch_idle()
        self._call_hook: Any = None
        self._reply_hook: Any = None
        self._exit_code: Optional[int] = None
        self._stopped = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_lock = threading.Lock()
        self._loop_owner = threading.Lock()
        self._queued = 0
        #: Synchronous calls to the host waiting on the thread that drives the loop.
        self._loop_blocked = 0
        #: Calls' tasks that started and have not ended (touched by the loop's driver only).
        self._nlive = 0
        self._resolved: Dict[tuple, tuple] = {}
        self._async_tasks: Dict[int, Any] = {}
        self.extension: Any = None
        self.name = "?"
        self.pin(CONTROL_ID, _Control(self))
        _tools.install(self)  # breakpoint(), debugger and profiler control (nodecell.tools)

    @property
    def call_hook(self) -> Any:
        """Called as ``call_hook(call_id, payload)`` before each incoming call when set
        (the debugger makes the serving thread trace; the profiler stamps the start).
        While set, every call goes through :meth:`_run_incoming` (none is served in Rust)."""
        return self._call_hook

    @call_hook.setter
    def call_hook(self, hook: Any) -> None:
        self._call_hook = hook
        self._disp.set_enabled(hook is None and self._reply_hook is None)

    @property
    def reply_hook(self) -> Any:
        """Called as ``reply_hook(call_id, started_ns, sent_ns)`` after a reply (or error) was
        sent, when set (the profiler; time.monotonic_ns() when encoding began and ended)."""
        return self._reply_hook

    @reply_hook.setter
    def reply_hook(self, hook: Any) -> None:
        self._reply_hook = hook
        self._disp.set_enabled(hook is None and self._call_hook is None)

    # -- serving --------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve until the host stops us or goes away; return the exit code."""
        threading.Thread(target=self._watchdog, name="nodecell-watchdog", daemon=True).start()
        self._dispatch_loop(main=True)
        return self._exit_code or 0

    # One thread receives and runs each call inline (no hand-off, no thread wake-up
    # per call). Other dispatcher threads stay parked, not queued on the receive
    # lock, so releasing it costs nothing. When nobody has been receiving for a while
    # because calls run long (or await), the watchdog un-parks (or starts) another
    # thread to receive: concurrent calls then start at most ~WATCH_TICK late.

    def _dispatch_loop(self, main: bool = False) -> None:
        disp = self._disp
        while not self._stopped.is_set():
            if not self._rx.acquire(blocking=False):
                self._park()
                continue
            try:
                got = disp.serve(0.2)  # serves resolved calls itself; releases _rx
            except Exception as e:  # noqa: BLE001 - peer gone or protocol violation
                self._fatal(e)
                continue
            if got is None:
                # Idle: send what is queued (released tensor references).
                try:
                    self.channel.flush()
                except Exception:  # noqa: BLE001 - a dead channel is noticed by recv
                    pass
                continue
            if got is True:
                continue  # another thread receives now
            kind, call_id, payload = got
            # This frame must not keep the call's arguments (handles to host objects among
            # them) while the thread waits for the next one: drop them before waiting.
            got = None
            if kind == _nodecell.SERVE_ADOPT:
                self._adopt(call_id, payload)
            elif kind == _nodecell.SERVE_AWAITABLE:
                self._serve_awaitable(call_id, payload)
            else:
                self.handle_frame(kind, call_id, payload)
            payload = None
            disp.touch()
        if not main:
            with self._state:
                self._threads -= 1

    def _park(self) -> None:
        """Wait until the watchdog needs another receiver (or a while passed)."""
        with self._parked:
            self._nparked += 1
            try:
                self._parked.wait(0.5)
            finally:
                self._nparked -= 1

    WATCH_TICK = 0.002

    def _watchdog(self) -> None:
        """Brings in another receiving thread when calls keep the current one busy."""
        disp = self._disp
        while not self._stopped.is_set():
            if disp.watch_idle:
                self._wd_wake.wait(0.05)
                self._wd_wake.clear()
                continue
            time.sleep(self.WATCH_TICK)
            if not disp.receiving and disp.rx_idle_for() > self.WATCH_TICK:
                if self._rx.locked():
                    continue  # someone is about to receive (or waits for its own reply)
                with self._parked:
                    if self._nparked:
                        self._parked.notify()
                        continue
                with self._state:
                    if self._threads >= _MAX_THREADS:
                        continue
                    self._threads += 1
                threading.Thread(target=self._dispatch_loop, name="nodecell-dispatch", daemon=True).start()
            elif disp.receiving and disp.inactive_for() > 0.1:
                disp.set_watch_idle()  # nothing running: sleep until the next call

    def _fatal(self, e: BaseException) -> None:
        if not self._stopped.is_set():
            self._exit_code = 0 if isinstance(e, EOFError) else 3
            self._stopped.set()
            self.closed = True
            for w in list(self._waiters.values()):
                self._complete(w, None, ProtocolError(f"channel to host lost: {e}"))
            os._exit(self._exit_code)

    # -- incoming calls -------------------------------------------------------------------

    def _run_incoming(self, call_id: int, payload: Any) -> None:
        if self.call_hook is not None:
            self.call_hook(call_id, payload)
        try:
            target, method, args, kwargs, _parent = payload
            if kwargs is None and isinstance(args, BaseException):  # its arguments could not be built here
                self._reply_error(call_id, args)
                return
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise TypeError("malformed call frame")
            key = (target, method)
            hit = self._resolved.get(key)
            if hit is None:
                fn = self.resolve_target(target, method)
                hit = (fn, is_async_callable(fn))
                if target in self.pinned and len(self._resolved) < 4096:
                    self._resolved[key] = hit  # fixed objects: their methods do not change
                    self._disp.learn(target, method, hit[0], hit[1])  # served in Rust next time
            fn, is_async = hit
        except BaseException as e:  # noqa: BLE001
            self._reply_error(call_id, e)
            return
        if is_async:
            if self._loop_blocked:
                self._run_detached(call_id, fn, args, kwargs)
            else:
                self._run_async(call_id, fn, args, kwargs)
            return
        token = _SERVING.set(call_id)
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                if self._loop_blocked:
                    self._run_detached(call_id, _as_coro, (result,), {})
                else:
                    self._submit(self._start_awaitable, call_id, result)
                return
        except BaseException as e:  # noqa: BLE001
            self._reply_error(call_id, e)
            return
        finally:
            _SERVING.reset(token)
        self._reply(call_id, result)

    def _run_detached(self, call_id: int, fn: Any, args: tuple, kwargs: dict) -> None:
        """An async call that arrives while the thread driving the worker's loop is blocked
        in a synchronous call to the host (which may be waiting for this very call): run
        it to completion on a private loop in a thread of its own, and reply from there."""

        def run() -> None:
            _SERVING.set(call_id)
            loop = asyncio.new_event_loop()
            try:
                result = loop.run_until_complete(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001
                self._reply_error(call_id, e)
                return
            finally:
                loop.close()
            self._reply(call_id, result)

        threading.Thread(target=run, name="nodecell-nested-async", daemon=True).start()

    # The worker's one event loop has no thread of its own: whichever dispatcher
    # thread has async work drives it (run_until_complete) until no task is left,
    # so an async call costs no wake-up of another thread. Work submitted while
    # another thread drives the loop is queued on it; the `_queued` count makes
    # sure a thread that finishes driving picks up what arrived meanwhile.

    def _run_async(self, call_id: int, fn: Any, args: tuple, kwargs: dict) -> None:
        """An ``async def`` method's call: :meth:`_submit` of :meth:`_start_async`, with
        the common case inline (nobody drives the loop, no other call is running: the
        call's task is created here and its first step run at once; most calls end in
        it, and then no loop turn happens at all)."""
        loop = self._loop or self._ensure_loop()
        if self._nlive or not self._loop_owner.acquire(blocking=False):
            self._submit(self._start_async, call_id, fn, args, kwargs)
            return
        try:
            try:
                coro = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001
                self._reply_error(call_id, e)
                return
            loop.hold_next_step()
            try:
                task = loop.new_task(self._await_then_reply(call_id, coro))
            finally:
                held = loop.take_held_step()
            self._nlive += 1
            self._async_tasks[call_id] = task
            soon = loop.soon_count
            if held is not None:
                loop.run_step(held)
                # Done in its first step, and nothing else was queued on the loop meanwhile
                # (a task the call started, work from other threads): no loop turn needed.
                if task.done() and not self._queued and not self._nlive and loop.soon_count == soon:
                    return
            self._run_until_idle(loop)
        finally:
            self._loop_owner.release()
            if self._queued > 0:  # queued by others while we drove (read under the GIL)
                self._drive_if_free()

    def _submit(self, start: Any, *args: Any) -> None:
        loop = self._ensure_loop()
        if self._loop_owner.acquire(blocking=False):
            # Nobody drives the loop: start the task right here and run it (no wake-up).
            try:
                loop.hold_next_step()
                try:
                    task = start(*args, direct=True)
                finally:
                    held = loop.take_held_step()
                # The common case: the call just started is the only task: run its first
                # step right here; most calls finish in it (no loop turn at all).
                if held is not None and task is not None and self._nlive == 1:
                    soon = loop.soon_count
                    loop.run_step(held)
                    fast = (task.done() and self._queued == 0 and not self._nlive
                            and loop.soon_count == soon)
                else:
                    if held is not None:
                        loop.release_step(held)
                    fast = False
                if not fast:
                    self._run_until_idle(loop)
            finally:
                self._loop_owner.release()
            if self._queued > 0:  # queued by others while we drove (read under the GIL)
                self._drive_if_free()
            return
        with self._state:
            self._queued += 1
        loop.call_soon_threadsafe(start, *args)
        self._drive_if_free()

    def _run_until_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drive the loop (owned by this thread) until no task is left and nothing is queued.

        Re-checks after every run: the loop's last turn can still start tasks from
        callbacks other threads queued meanwhile (their first step then waits in the
        ready queue), and those must not be left without a driver.
        """
        while True:
            tasks = asyncio.all_tasks(loop)
            with self._state:
                queued = self._queued
            if not tasks and not queued:
                self._nlive = 0  # (a task cancelled before it started never ran its body)
                return
            if len(tasks) == 1 and not queued:
                task = next(iter(tasks))
                try:
                    loop.run_until_complete(task)
                except BaseException:
                    if not task.done():
                        raise
                    # A call's own task (adopted from the dispatcher) failed: its done
                    # callback answers the host with the error.
            else:
                loop.run_until_complete(self._until_idle())

    def _drive_if_free(self) -> None:
        while self._loop_owner.acquire(blocking=False):
            try:
                assert self._loop is not None
                self._run_until_idle(self._loop)
            finally:
                self._loop_owner.release()
            with self._state:
                if self._queued == 0:
                    return

    async def _until_idle(self) -> None:
        me = asyncio.current_task()
        while True:
            await asyncio.sleep(0)  # run callbacks queued by other threads
            pending = [t for t in asyncio.all_tasks() if t is not me]
            if not pending:
                with self._state:
                    if self._queued == 0:
                        return
                continue
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    def _start_async(self, call_id: int, fn: Any, args: tuple, kwargs: dict, direct: bool = False) -> Any:
        """On the loop: start an async method as a task (errors in the call itself answer at once).
        ``direct``: called by the thread that owns the loop, not through the queue."""
        try:
            coro = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001
            if not direct:
                with self._state:
                    self._queued -= 1
            self._reply_error(call_id, e)
            return None
        return self._start_awaitable(call_id, coro, direct)

    def _start_awaitable(self, call_id: int, aw: Any, direct: bool = False) -> Any:
        assert self._loop is not None
        task = self._loop.create_task(self._await_then_reply(call_id, aw))
        # Only ever touched by the thread driving the loop. (A task cancelled before it
        # started never runs its body; `_run_until_idle` forgets such tasks.)
        self._nlive += 1
        self._async_tasks[call_id] = task
        if not direct:
            with self._state:
                self._queued -= 1
        return task

    def run_on_loop(self, aw: Any) -> Any:
        """Run an awaitable to completion on the worker's loop from a dispatcher thread."""
        loop = self._ensure_loop()
        holder: dict = {}

        done = threading.Event()

        async def wrap() -> None:
            try:
                holder["value"] = await aw
            except BaseException as e:  # noqa: BLE001
                holder["error"] = e
            finally:
                done.set()  # here, not in a done-callback: those run one loop turn later

        def start(direct: bool = False) -> Any:
            task = loop.create_task(wrap())
            if not direct:
                with self._state:
                    self._queued -= 1
            return task

        self._submit(start)
        while not done.wait(0.05):
            self._drive_if_free()
        if "error" in holder:
            raise holder["error"]
        return holder.get("value")

    async def _await_then_reply(self, call_id: int, aw: Any) -> None:
        _SERVING.set(call_id)  # in this task's own context
        try:
            try:
                result = await aw
            except asyncio.CancelledError:
                self._reply_error(call_id, RemoteError("CancelledError", "cancelled by the host"))
                return
            except BaseException as e:  # noqa: BLE001
                self._reply_error(call_id, e)
                return
            finally:
                self._async_tasks.pop(call_id, None)
            self._reply(call_id, result)
        finally:
            self._nlive -= 1

    def _serve_awaitable(self, call_id: int, aw: Any) -> None:
        """A plain method the dispatcher called returned an awaitable: await it, reply."""
        if self._loop_blocked:
            self._run_detached(call_id, _as_coro, (aw,), {})
        else:
            self._submit(self._start_awaitable, call_id, aw)

    def _adopt(self, call_id: int, task: Any) -> None:
        """The dispatcher ran an ``async def`` call's first step and hands over the loop (its
        owner lock held): ``task`` did not end in that step (None: it did, but the step
        left work for the loop). Drive the loop until idle; the task replies when done."""
        loop = self._loop
        assert loop is not None
        try:
            if task is not None:
                self._nlive += 1
                self._async_tasks[call_id] = task
                task.add_done_callback(functools.partial(self._task_done, call_id))
            self._run_until_idle(loop)
        finally:
            self._loop_owner.release()
        if self._queued > 0:  # queued by others while we drove (read under the GIL)
            self._drive_if_free()

    def _task_done(self, call_id: int, task: Any) -> None:
        """An adopted call's task ended (a done callback, on the loop): reply."""
        self._async_tasks.pop(call_id, None)
        if self._nlive > 0:  # (``_run_until_idle`` may have reset it already)
            self._nlive -= 1
        try:
            result = task.result()
        except asyncio.CancelledError:
            self._reply_error(call_id, RemoteError("CancelledError", "cancelled by the host"))
            return
        except BaseException as e:  # noqa: BLE001
            self._reply_error(call_id, e)
            return
        self._reply(call_id, result)

    def _cancel_incoming(self, call_id: int) -> None:
        task = self._async_tasks.get(call_id)
        if task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(task.cancel)

    def _reply(self, call_id: int, value: Any) -> None:
        hook = self.reply_hook
        t0 = time.monotonic_ns() if hook is not None else 0
        try:
            self.channel.send(REPLY, call_id, value)
        except Exception as e:  # noqa: BLE001 - e.g. a value that cannot cross
            self._reply_error(call_id, e)
        if hook is not None:
            hook(call_id, t0, time.monotonic_ns())
        self.flush_releases()

    def _reply_error(self, call_id: int, e: BaseException) -> None:
        hook = self.reply_hook
        t0 = time.monotonic_ns() if hook is not None else 0
        try:
            self.channel.send(ERROR, call_id, error_value(e))
        except Exception as e2:  # noqa: BLE001
            self.channel.send(ERROR, call_id, _nodecell.ErrorValue(type(e2).__name__, str(e2)[:4096], ""))
        if hook is not None:
            hook(call_id, t0, time.monotonic_ns())

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._loop_lock:
            if self._loop is None:
                self._loop = _WorkerLoop()
                self._disp.set_loop(self._loop, self._loop_owner)
            return self._loop

    # -- calling the host -----------------------------------------------------------------

    def call_remote(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        """Call the host and return the value, blocking this thread — also inside the
        worker's event loop (a sync host method called from code an async method runs).
        Nested calls from the host are served meanwhile: by this thread, or, for async
        ones arriving while it blocks the loop, on a private loop of their own."""
        on_loop = False
        if self._loop is not None:
            try:
                on_loop = asyncio.get_running_loop() is self._loop
            except RuntimeError:
                pass
        w = _Waiter()
        if on_loop:  # before sending: the host's nested calls may arrive at once
            self._loop_blocked += 1
        try:
            call_id = self._send_call(w, target, method, args, kwargs)
            self._wait(call_id, w)
        finally:
            if on_loop:
                self._loop_blocked -= 1
        error, w.error = w.error, None
        if error is not None:
            # Nothing of this frame may refer to the exception once it is raised: its
            # traceback holds this frame and the caller's (with the handles in them), and a
            # cycle through `w` or `error` would keep them alive until a garbage collection.
            try:
                raise error
            finally:
                del error, w
        return w.value

    call_remote_sync = call_remote

    async def _call_async(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        w = _Waiter(asyncio.get_running_loop())
        self._send_call(w, target, method, args, kwargs)
        return await w.future  # type: ignore[misc]

    def call_remote_async(self, target: int, method: str, args: tuple, kwargs: dict) -> Any:
        """Call the host and return an awaitable (for async singleton methods)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # No loop in this thread: run the call synchronously and wrap it.
            value = self.call_remote(target, method, args, kwargs)

            async def done() -> Any:
                return value

            return done()
        return self._call_async(target, method, args, kwargs)

    def _send_call(self, w: _Waiter, target: int, method: str, args: tuple, kwargs: dict) -> int:
        if self.closed:
            raise ProtocolError("channel to host is closed")
        call_id = next(self._call_ids)
        self._waiters[call_id] = w
        try:
            self.channel.send_call(call_id, target, method, tuple(args), dict(kwargs), _SERVING.get())
        except BaseException:
            self._waiters.pop(call_id, None)
            raise
        return call_id

    def _wait(self, call_id: int, w: _Waiter) -> None:
        """Wait for our reply, receiving (and serving nested calls) whenever nobody else is."""
        while not w.done:
            if not self._rx.acquire(timeout=0.005):
                continue
            frame = None
            err: Optional[BaseException] = None
            try:
                if not w.done:
                    frame = self.channel.recv(0.05)
            except Exception as e:  # noqa: BLE001
                err = e
            finally:
                self._rx.release()
            if err is not None:
                self._fatal(err)
                try:
                    raise err
                finally:
                    del err  # no cycle through this frame (see call_remote)
            if frame is not None:
                self.handle_frame(*frame)

    def _deliver(self, call_id: int, value: Any, error: Optional[BaseException]) -> None:
        w = self._waiters.pop(call_id, None)
        if w is not None:
            self._complete(w, value, error)

    def _complete(self, w: _Waiter, value: Any, error: Optional[BaseException]) -> None:
        w.value, w.error = value, error
        w.done = True
        if w.future is not None and w.loop is not None:
            def resolve() -> None:
                if w.future.done():  # type: ignore[union-attr]
                    return
                if error is not None:
                    w.future.set_exception(error)  # type: ignore[union-attr]
                else:
                    w.future.set_result(value)  # type: ignore[union-attr]
            w.loop.call_soon_threadsafe(resolve)
        w.event.set()

    def _schedule_release_flush(self) -> None:
        # Proxies die on arbitrary threads; sending from here is fine (the channel locks).
        self.flush_releases()

    # -- lifecycle -------------------------------------------------------------------------

    def init(self, cfg: Dict[str, Any]) -> Dict[str, Any]:
        """Set up the extension object, the singleton proxies and the pack module."""
        # A bad NODECELL_TENSOR_POOL fails this worker's start with a ValueError naming it
        # (the pool, made on the first tensor, could only fall back to its default).
        _nodecell.tensor_pool_env_limit()
        self.name = cfg["name"]
        for p in cfg.get("sys_path", []):
            if p not in sys.path:
                sys.path.insert(0, p)
        for rec in cfg.get("records", []):
            cls = _import_qualname(rec["module"], rec["qualname"])
            register_type(cls, rec["name"])
        handler = _LogHandler(self)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(cfg.get("log_level", logging.INFO))
        for api in cfg.get("apis", []):
            cls = _import_qualname(api["module"], api["qualname"])
            if not (isinstance(cls, type) and issubclass(cls, ProxiedSingleton)):
                raise TypeError(f"{api['module']}:{api['qualname']} is not a ProxiedSingleton")
            cls.inject_instance(_singleton_proxy(self, api["id"], cls))
        after_create = [a for a in (hook(self) for hook in _INIT_HOOKS) if callable(a)]
        et = cfg["extension_type"]
        ext_cls = _import_qualname(et["module"], et["qualname"])
        proxies = getattr(ext_cls, "remote_proxy_types", None)
        if proxies is not None:  # how the host's objects look to this extension (nodecell.studio)
            self.proxy_types = (proxies[0], proxies[1])
        ext = ext_cls()
        self.extension = ext
        for a in after_create:
            a(ext)
        self.pin(EXTENSION_ID, ext)
        _run_hook(self, ext.before_module_loaded)
        # An extension class may import the pack itself (the way its host app
        # names and loads packages): ``import_pack(module_path) -> module``.
        importer = getattr(ext, "import_pack", None)
        if callable(importer):
            module = _run_hook(self, importer, cfg["module_path"])
        else:
            module = _import_pack(cfg["module_path"], cfg["name"])
        try:
            ext.module = module
        except Exception:  # noqa: BLE001 - a read-only attribute on a user class
            pass
        _run_hook(self, ext.on_module_loaded, module)
        versions = {"python": sys.version.split()[0]}
        for m in ("numpy", "torch"):
            mod = sys.modules.get(m)
            if mod is not None:
                versions[m] = getattr(mod, "__version__", "?")
        return {"pid": os.getpid(), "versions": versions}

    def stop(self) -> None:
        ext = self.extension
        if ext is not None and hasattr(ext, "stop"):
            try:
                _run_hook(self, ext.stop)
            except Exception:  # noqa: BLE001
                logging.getLogger(__name__).exception("extension stop() failed")
        self._exit_code = 0

        def later() -> None:
            time.sleep(0.05)
            self._stopped.set()
            self.closed = True
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

        threading.Thread(target=later, daemon=True).start()


class _Control:
    """Handle #1 in every worker: the host's control calls."""

    def __init__(self, ep: WorkerEndpoint) -> None:
        self._ep = ep

    def init(self, cfg: Dict[str, Any]) -> Dict[str, Any]:
        return self._ep.init(cfg)

    def stop(self) -> bool:
        self._ep.stop()
        return True

    def ping(self) -> int:
        return os.getpid()


_Step = Tuple[Callable[..., Any], tuple, Optional[contextvars.Context]]


class _WorkerLoop(asyncio.SelectorEventLoop):
    """The worker's event loop: a stock selector loop that can start a task eagerly.

    The loop has no thread of its own (see ``WorkerEndpoint._submit``): the dispatcher
    thread that owns it creates a call's task and would then spin the loop for it. Instead
    it runs the task's first step itself, as Python 3.12's eager tasks do (which need a
    running loop, and this one is not running): the loop's ``call_soon`` is an instance
    attribute, the method ``call_soon`` of a Rust ``StepHold`` (a Task looks ``call_soon`` up on its loop each time),
    which counts and forwards callbacks to the stock ``call_soon``; ``hold_next_step``
    makes it keep the next one (the one ``Task.__init__`` makes for its first step) for
    ``take_held_step`` instead; ``run_step`` runs it in the task's context with this loop
    set as the running one; ``release_step`` queues it as usual. Only the public
    ``call_soon`` and the loop-implementer hook ``asyncio._set_running_loop`` (in
    ``asyncio.events.__all__``) are used: no private attribute of the loop, task or handle.
    The Rust dispatcher holds and takes a step through ``_nc_step`` directly.
    """

    def __init__(self) -> None:
        super().__init__()
        handle = asyncio.Handle(_nothing, (), self, None)
        handle.cancel()  # what a held call_soon returns: never run (a Task ignores it)
        self._nc_step = _nodecell.StepHold(super().call_soon, handle)
        self.call_soon = self._nc_step.call_soon  # type: ignore[method-assign]

    def set_task_factory(self, factory: Any) -> None:
        super().set_task_factory(factory)
        self._nc_step.set_factory(factory is not None)  # the dispatcher makes plain Tasks without one

    @property
    def soon_count(self) -> int:
        """Callbacks queued with ``call_soon`` so far (held steps not counted): a step that
        queued none left nothing for a loop turn to do."""
        return self._nc_step.count

    def new_task(self, coro: Any) -> asyncio.Task[Any]:
        """``create_task(coro)``: a Task made directly when no task factory is set."""
        if self.get_task_factory() is not None:
            return self.create_task(coro)
        return asyncio.Task(coro, loop=self)

    def hold_next_step(self) -> None:
        """Hold back the next callback queued with ``call_soon`` (owner thread only)."""
        self._nc_step.hold()

    def take_held_step(self) -> Optional[_Step]:
        """The callback held since ``hold_next_step`` (None if none was queued); stops holding."""
        return self._nc_step.take()

    def run_step(self, step: _Step) -> None:
        """Run a held step here, as the loop would: in its context, this loop running."""
        callback, args, context = step
        asyncio._set_running_loop(self)
        try:
            if context is None:
                callback(*args)
            else:
                context.run(callback, *args)
        finally:
            asyncio._set_running_loop(None)

    def release_step(self, step: _Step) -> None:
        """Queue a held step as ``call_soon`` would have."""
        callback, args, context = step
        asyncio.SelectorEventLoop.call_soon(self, callback, *args, context=context)


def _nothing() -> None:
    pass


def _task_error_value(exc: BaseException) -> Any:
    """A call's task ended with ``exc``: the error answer (cancellation: by the host)."""
    if isinstance(exc, asyncio.CancelledError):
        exc = RemoteError("CancelledError", "cancelled by the host")
    return error_value(exc)


def _run_hook(ep: WorkerEndpoint, fn: Any, *args: Any) -> Any:
    r = fn(*args)
    if inspect.isawaitable(r):
        return ep.run_on_loop(r)
    return r


async def _as_coro(aw: Any) -> Any:
    return await aw


def _import_qualname(module: str, qualname: str) -> Any:
    mod = importlib.import_module(module)
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _import_pack(module_path: str, name: str) -> Any:
    init = os.path.join(module_path, "__init__.py")
    modname = os.path.basename(module_path.rstrip("/")).replace("-", "_").replace(".", "_") or name
    if not os.path.isfile(init):
        raise FileNotFoundError(f"pack {name!r}: {init} not found")
    parent = os.path.dirname(module_path.rstrip("/"))
    if parent not in sys.path:
        sys.path.insert(0, parent)
    spec = importlib.util.spec_from_file_location(modname, init, submodule_search_locations=[module_path])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load pack {name!r} from {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module


def _singleton_proxy(ep: WorkerEndpoint, hid: int, cls: type) -> Any:
    """An instance of ``cls`` whose public methods call the host's instance."""
    proxy = object.__new__(cls)
    seen = set()
    for klass in cls.__mro__:
        if klass in (ProxiedSingleton, object):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            if not callable(fn) or getattr(fn, "_nodecell_local", False) or isinstance(attr, property):
                continue
            if inspect.iscoroutinefunction(fn):
                def amethod(*a: Any, _n: str = name, **k: Any) -> Any:
                    return ep.call_remote_async(hid, _n, a, k)
                object.__setattr__(proxy, name, amethod)
            else:
                def method(*a: Any, _n: str = name, **k: Any) -> Any:
                    return ep.call_remote(hid, _n, a, k)
                object.__setattr__(proxy, name, method)
    return proxy


_ = SingletonMetaclass  # re-exported for type checkers
