"""The event loop nodecell runs pyisolate-style extensions on (nodecell's, not pyisolate's).

pyisolate's API is synchronous where nodecell's is async (``ensure_process_started()``,
``stop()``, ``stop_all_extensions()``) and its callers are awaited from whatever
loop the application has at the moment, loops that come and go. So the compat
layer keeps every extension's sandbox on one private loop in a daemon thread and
hands work to it: synchronous calls block until done (from any thread, also
inside another running loop), awaited calls wait on the caller's own loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, List, Optional

__all__ = ["loop", "run_sync", "run_async", "on_loop_thread", "at_exit"]

_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None
_thread: Optional[threading.Thread] = None
_exit_hooks: List[Callable[[], None]] = []


def loop() -> asyncio.AbstractEventLoop:
    """The compat loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            ready = threading.Event()
            new = asyncio.new_event_loop()

            def run() -> None:
                asyncio.set_event_loop(new)
                new.call_soon(ready.set)
                new.run_forever()

            _thread = threading.Thread(target=run, name="nodecell-pyisolate", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new
        return _loop


def on_loop_thread() -> bool:
    """Whether the caller runs on the compat loop's own thread."""
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Awaitable[Any], timeout: Optional[float] = None) -> Any:
    """Run ``coro`` on the compat loop and block this thread until it is done."""
    if on_loop_thread():
        if asyncio.iscoroutine(coro):
            coro.close()
        raise RuntimeError("a synchronous pyisolate call was made on nodecell's compat loop itself "
                           "(from a host service a worker called?): await the async form instead")
    fut = asyncio.run_coroutine_threadsafe(coro, loop())  # type: ignore[arg-type]
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise


async def run_async(coro: Awaitable[Any]) -> Any:
    """Await ``coro`` run on the compat loop, from whatever loop the caller runs."""
    if on_loop_thread():
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop()))  # type: ignore[arg-type]


def at_exit(hook: Callable[[], None]) -> None:
    """Run ``hook()`` when the interpreter exits (stops what is still running)."""
    _exit_hooks.append(hook)


@atexit.register
def _exit() -> None:
    for hook in list(_exit_hooks):
        try:
            hook()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
