"""Synchronous calls from the host into a worker: block the calling thread, return the value.

The rule (issue 10): a call through a proxy returns what the function behind it
returns. A plain (``def``) function's proxy blocks the calling thread and gives the
value back, whatever the thread and whether or not an event loop runs in it; an
``async def`` function's proxy gives a coroutine. Handles say which one they name.

How a thread waits here: it sends the call, then takes the channel's receiving role
itself (``_Worker.rx``; the event loop's pump skips the channel meanwhile) and routes
what arrives: its own reply ends the wait; a call the worker makes while serving it
(a frame whose ``parent`` is this call) runs right here, on this thread, so the
worker -> host -> worker ... chain nests to any depth on one host thread (ComfyUI's
sampler thread); replies for other waiters and calls for nobody in particular go
to their owner (another waiting thread, or the extension's event loop). When the
waiting thread *is* the extension's event-loop thread (sync code inside a coroutine
on that loop), everything the worker sends is handled here, and ``async def``
host functions it calls run on a private loop in a thread of their own, since the
blocked loop cannot run them.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Deque, Dict, Optional, Tuple

from . import _nodecell
from ._rpc import CALLBACK, ERROR, RELEASE, REPLY
from .errors import CallTimeout, ChannelFull, WorkerCrashed
from .tools import profile as _profile

if TYPE_CHECKING:
    from .cell import _Worker
    from .extension import Extension

GONE = (_nodecell.PeerGone, _nodecell.ChannelClosed)

#: How long one receive waits before the waiter looks at its deadline and queue again.
RECV_SLICE = 0.05
#: How long a waiter that cannot receive (another thread does) sleeps between looks.
POLL = 0.002

#: Event-loop threads (by ident) blocked in synchronous calls, and how many deep.
_blocked_loops: Dict[int, int] = {}


def loop_blocked(thread_id: int) -> bool:
    """Whether the event loop of thread ``thread_id`` waits in a synchronous call now."""
    return _blocked_loops.get(thread_id, 0) > 0


class SyncWaiter:
    """A synchronous call's pending entry (duck-types the asyncio future the
    asynchronous path keeps in the same table): the waiting thread, its result, and
    the calls the worker made for it, to run on that thread."""

    __slots__ = ("thread", "event", "value", "error", "_done", "queue")

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.event = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self._done = False
        self.queue: Deque[Tuple[int, int, Any]] = collections.deque()

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self.value = value
        self._done = True
        self.event.set()

    def set_exception(self, error: BaseException) -> None:
        self.error = error
        self._done = True
        self.event.set()

    def result(self) -> Any:
        error, self.error = self.error, None
        if error is not None:
            # The waiter (held by the caller's frame) must not refer to the exception: its
            # traceback holds those frames, and a cycle would keep them (and the handles in
            # them) alive until a garbage collection.
            try:
                raise error
            finally:
                del error
        return self.value

    def hand(self, frame: Tuple[int, int, Any]) -> None:
        """A call the worker made while serving this one: run it on the waiting thread."""
        self.queue.append(frame)
        self.event.set()


def call(ext: "Extension", w: "_Worker", target: int, method: str, args: tuple, kwargs: dict,
         internal: bool = False, timeout: Optional[float] = None) -> Any:
    """Call ``method`` of object ``target`` in worker ``w`` and wait here for the value."""
    from .extension import _detached

    if w.dead:
        if w.death is not None:
            raise _detached(w.death)
        raise WorkerCrashed(f"pack {ext.name!r}: worker is gone", extension=ext.name)
    ep = w.ep
    cell = w.cell
    me = threading.get_ident()
    on_loop = me == cell.loop_thread
    if on_loop and cell.loop.is_running():
        # Unless the loop now runs on another thread (this one's running loop, if any, is
        # another): an extra check only on the loop's thread.
        try:
            on_loop = asyncio.get_running_loop() is cell.loop
        except RuntimeError:
            on_loop = False
    sw = SyncWaiter()
    call_id = next(ep._call_ids)
    ep.pending[call_id] = sw
    profiled = _profile.ACTIVE and not internal
    send_ns = time.monotonic_ns() if profiled else 0
    try:
        w.channel.send_call(call_id, target, method, tuple(args), dict(kwargs))
    except GONE:
        notice_death(w, on_loop)  # the wait below reports it with the real reason
    except _nodecell.ProtocolViolation as e:
        violation(w, e, on_loop)
    except _nodecell.ChannelBacklog as e:
        ep.pending.pop(call_id, None)
        raise ChannelFull(f"pack {ext.name!r}: {method}() was not sent: {e}", extension=ext.name) from None
    except BaseException:
        ep.pending.pop(call_id, None)  # e.g. an argument that cannot cross: nothing was sent
        raise
    sent_ns = time.monotonic_ns() if profiled else 0
    if ep._release_queue:
        ep.flush_releases()
    if timeout is None and not internal:
        timeout = ext.config["timeout"]
    deadline = None if timeout is None else time.monotonic() + timeout
    w.inflight += 1
    if on_loop:
        _blocked_loops[me] = _blocked_loops.get(me, 0) + 1
    failed = False
    t0 = time.perf_counter_ns()
    try:
        wait(w, sw, on_loop, deadline)
        if not sw.done():
            ep.pending.pop(call_id, None)
            w.timed_out = True
            ext._retire(w)
            w.kill()
            raise CallTimeout(
                f"pack {ext.name!r}: {method}() did not return within {timeout:g} s; "
                f"the worker was killed and will be restarted", timeout=timeout, extension=ext.name)
        return sw.result()
    except BaseException:
        failed = True
        raise
    finally:
        w.inflight -= 1
        if on_loop:
            n = _blocked_loops.get(me, 1) - 1
            if n:
                _blocked_loops[me] = n
            else:
                _blocked_loops.pop(me, None)
        if not internal:
            (ext._stats.record_error if failed else ext._stats.record)(time.perf_counter_ns() - t0)
            if profiled:
                _profile.host_call(ext, w, call_id, method, send_ns, send_ns, sent_ns, failed)
        hand_back(w, on_loop)


def hand_back(w: "_Worker", on_loop: bool) -> None:
    """Give receiving back to the event loop: it takes what arrived after our last
    receive and re-arms the reactor for this channel."""
    if w.dead:
        return
    if on_loop:
        w._schedule_drain()
        return
    try:
        w.cell.loop.call_soon_threadsafe(w._schedule_drain)
    except RuntimeError:  # the loop is closed
        pass


def wait(w: "_Worker", sw: SyncWaiter, on_loop: bool, deadline: Optional[float]) -> None:
    """Receive (or let whoever receives hand us our frames) until ``sw`` is done or the
    deadline passes; calls the worker makes for ``sw`` run on this thread."""
    ep = w.ep
    ch = w.channel
    q = sw.queue
    while True:
        while q:
            kind, cid, payload = q.popleft()
            ep.handle_frame(kind, cid, payload)
        if sw._done:
            return
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        span = RECV_SLICE if deadline is None else min(RECV_SLICE, deadline - now)
        if w.dead:
            if on_loop:
                w.cell.finish_death_now(w)  # the blocked loop cannot: do it here
            else:
                sw.event.wait(span)  # the loop finishes the death and fails our call
                sw.event.clear()
            continue
        if not w.rx.acquire(blocking=False):
            sw.event.wait(POLL)
            sw.event.clear()
            continue
        f = None
        try:
            f = ch.recv(span)
        except GONE:
            notice_death(w, on_loop)
        except Exception as e:  # noqa: BLE001 - a protocol violation: drop the worker
            violation(w, e, on_loop)
        finally:
            w.rx.release()
        if f is not None:
            route(w, f, sw.thread, on_loop)


def route(w: "_Worker", f: Tuple[int, int, Any], me: int, on_loop: bool) -> None:
    """A frame a waiting thread received: handle it here or hand it to its owner."""
    ep = w.ep
    kind, cid, payload = f
    if on_loop:
        ep.handle_frame(kind, cid, payload)
        return
    if kind == REPLY or kind == ERROR:
        if type(ep.pending.get(cid)) is SyncWaiter:
            ep.handle_frame(kind, cid, payload)
            return
    elif kind == CALLBACK:
        if type(ep.pending.get(_parent(payload))) is SyncWaiter:
            ep.handle_frame(kind, cid, payload)  # runs here or goes to the thread that waits
            return
    elif kind == RELEASE:
        ep.handle_frame(kind, cid, payload)  # thread-safe
        return
    try:
        w.cell.loop.call_soon_threadsafe(ep.handle_frame, kind, cid, payload)
    except RuntimeError:  # the loop is closed: nobody else would handle it
        ep.handle_frame(kind, cid, payload)


def _parent(payload: Any) -> Any:
    if isinstance(payload, tuple) and len(payload) == 5:
        return payload[4]
    return None


def notice_death(w: "_Worker", on_loop: bool) -> None:
    """The worker is gone: start its death handling on the loop (or here, if the loop
    is this blocked thread)."""
    if on_loop:
        w.on_died()
        w.cell.finish_death_now(w)
        return
    try:
        w.cell.loop.call_soon_threadsafe(w.on_died)
    except RuntimeError:
        w.dead = True


def violation(w: "_Worker", e: Any, on_loop: bool) -> None:
    if on_loop:
        w.cell.protocol_violation(w, e)
        w.cell.finish_death_now(w)
        return
    try:
        w.cell.loop.call_soon_threadsafe(w.cell.protocol_violation, w, e)
    except RuntimeError:
        pass


def run_detached(ep: Any, call_id: int, aw: Any) -> None:
    """Run an ``async def`` host function the worker called while the host's event loop
    is blocked in a synchronous call (maybe waiting for this one): on a private loop in
    a thread of its own; reply from there."""

    async def run() -> Any:
        return await aw

    def main() -> None:
        try:
            result = asyncio.run(run())
        except BaseException as e:  # noqa: BLE001
            ep._send_error(call_id, e)
            return
        ep._send_reply(call_id, result)

    threading.Thread(target=main, name="nodecell-nested-async", daemon=True).start()


def run_now(coro: Any) -> Any:
    """Run a coroutine that needs no loop turn (it never really suspends) to its end,
    here; one that would suspend is refused (closed) and None returned."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    return None
