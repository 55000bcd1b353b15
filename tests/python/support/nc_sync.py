"""Synchronous calls both ways (issue 10): the shapes ComfyUI's sampler and real packs use.

Host side: ``Model`` (a host object the pack patches, like a ModelPatcher) and
``Relay`` (a host service). Worker side: ``SyncExt``. Imported by the tests in the
host and by the workers.
"""
from __future__ import annotations

import asyncio
import threading

import nodecell
import nc_testext

#: name -> Extension, filled by the tests in the host.
HOST_EXTENSIONS: dict = {}


class Model:
    """A host object a pack patches: it installs a wrapper (a worker function), which
    the host's sampler then calls synchronously, and which calls back into the model."""

    def __init__(self) -> None:
        self.wrapper = None
        self.threads: list = []

    def set_wrapper(self, fn) -> bool:
        self.wrapper = fn
        return True

    def apply(self, x, depth=0):
        """The model function: the wrapper calls it back (on the sampler's thread)."""
        self.threads.append(threading.get_ident())
        if depth > 0:
            return self.wrapper(self.apply, x, depth - 1) + 1  # into the worker again
        return x + 0.5

    def sample(self, x, depth=0):
        """The sampler: calls the installed patch synchronously, like ComfyUI does."""
        self.threads.append(threading.get_ident())
        return self.wrapper(self.apply, x, depth)


class Relay(nodecell.ProxiedSingleton):
    """A host service with sync methods that call back into the worker."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.threads: list = []

    def bump(self, n):
        self.total += n
        self.threads.append(threading.get_ident())
        return self.total

    def double_via_worker(self, ext_name, x):
        """Serving a worker's call, call that worker back synchronously."""
        self.threads.append(threading.get_ident())
        return HOST_EXTENSIONS[ext_name].call_sync("double", x)

    def down(self, ext_name, n):
        """host -> worker -> host ... n levels deep, all synchronous."""
        self.threads.append(threading.get_ident())
        if n == 0:
            return 0
        return 1 + HOST_EXTENSIONS[ext_name].call_sync("down", ext_name, n - 1)

    def down_async(self, ext_name, n):
        """Like down(), into the worker's *async* method, which calls back synchronously
        from its event loop (so the nested async call arrives while that loop is blocked)."""
        self.threads.append(threading.get_ident())
        if n == 0:
            return 0
        return 1 + HOST_EXTENSIONS[ext_name].call_sync("adown_blocking", ext_name, n - 1)

    async def abump(self, n):
        await asyncio.sleep(0)
        self.total += n
        return self.total


def bump_from_module(n):
    """A module function of the pack that uses a host service synchronously."""
    return Relay().bump(n)


class SyncExt(nc_testext.TestExt):
    def patch(self, model):
        """Install this worker's wrapper into a host model (a sync call to the host)."""
        return model.set_wrapper(self.wrapper)

    def patch_async(self, model):
        return model.set_wrapper(self.awrapper)

    def wrapper(self, apply, x, depth):
        # `apply` is the host's model function: a sync call back into the host.
        return apply(x, depth) * 2

    async def awrapper(self, apply, x, depth):
        await asyncio.sleep(0)
        return apply(x, depth) * 3

    async def bump_via_module(self, n):
        """An async method calling a module function that calls a sync host service:
        the value comes back, not a coroutine."""
        r = bump_from_module(n)
        return [type(r).__name__, r]

    async def bump_on_loop(self, n):
        r = Relay().bump(n)
        a = await Relay().abump(n)
        return [type(r).__name__, r, a]

    def bump_from_thread(self, n):
        out = {}

        def run():
            out["r"] = Relay().bump(n)

        t = threading.Thread(target=run)
        t.start()
        t.join()
        return out["r"]

    async def nested_via_host(self, ext_name, x):
        """worker (async) -> host sync service -> worker sync method -> back."""
        return Relay().double_via_worker(ext_name, x)

    def down(self, ext_name, n):
        if n == 0:
            return 0
        return 1 + Relay().down(ext_name, n - 1)

    async def adown(self, ext_name, n):
        return Relay().down(ext_name, n)

    async def adown_blocking(self, ext_name, n):
        """An async method that calls the host synchronously (blocking the worker's loop)."""
        await asyncio.sleep(0)
        if n == 0:
            return 0
        return 1 + Relay().down_async(ext_name, n - 1)

    def patch_abump(self, model):
        return model.set_wrapper(self.wrapper_abump)

    def wrapper_abump(self, apply, x, depth):
        # An async host service from a sync patch: the host runs it while its loop may be
        # blocked in the sampler's synchronous call.
        bumped = asyncio.run(Relay().abump(1))
        return apply(x, depth) * 2 + 0 * bumped

    def call_host_callable(self, fn, *args):
        return fn(*args)

    def thread_id(self):
        return threading.get_ident()
