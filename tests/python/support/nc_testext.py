"""The extension class, services and record types the Python tests load into workers.

This module is imported in the host (by the tests) and in every worker (from a
read-only mount of this file), like a Studio app's own API module would be.
"""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import enum
import gc
import logging
import os
import sys
import threading
import time

import nodecell

#: Set by ``afacts``: each call's context is its own (nothing leaks into the next call).
_CV: contextvars.ContextVar[object] = contextvars.ContextVar("nc_testext_cv", default=None)


@nodecell.register_type
@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: str = ""


@nodecell.register_type
class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Registry(nodecell.ProxiedSingleton):
    """A host service: a key-value store with sync and async methods."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict = {}
        self.calls = 0

    def put(self, key, value):
        self.calls += 1
        self.data[key] = value
        return len(self.data)

    def get(self, key):
        self.calls += 1
        return self.data.get(key)

    async def aget(self, key):
        await asyncio.sleep(0)
        return self.data.get(key)

    async def ask_worker(self, ext_name, x):
        """Host -> worker call made while serving a worker -> host call (re-entrancy)."""
        ext = HOST_EXTENSIONS[ext_name]
        return await ext.double(x)

    @nodecell.local_execution
    def local_pid(self):
        return os.getpid()


#: Filled by the tests in the host: name -> Extension, for re-entrant calls.
HOST_EXTENSIONS: dict = {}


class Counter:
    """An object that crosses as a remote handle."""

    def __init__(self, start=0):
        self.value = start

    def incr(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value


class TestExt(nodecell.ExtensionBase):
    """Runs in the worker; every public method is callable from the host."""

    def __init__(self):
        super().__init__()
        self.kept = []

    async def on_module_loaded(self, module):
        self.module = module

    # values
    def noop(self):
        return None

    def echo(self, *args, **kwargs):
        if kwargs:
            return args, kwargs
        return args[0] if len(args) == 1 else args

    async def anoop(self):
        return None

    async def start_background(self):
        """Starts a task on the worker's loop and returns at once (never suspending)."""
        self.background_ran = False

        async def background():
            self.background_ran = True

        asyncio.get_running_loop().create_task(background())
        return True

    def background_done(self):
        return getattr(self, "background_ran", None)

    async def task_name(self):
        return asyncio.current_task().get_name()

    async def set_tagging_factory(self, on):
        """Sets (or removes) a task factory on the worker's loop that names its tasks "tagged"."""
        def factory(lp, coro):
            t = asyncio.Task(coro, loop=lp)
            t.set_name("tagged")
            return t

        asyncio.get_running_loop().set_task_factory(factory if on else None)
        return True

    async def aecho(self, x):
        await asyncio.sleep(0)
        return x

    async def afacts(self, tag):
        """What an ``async def`` method sees (its first step runs in the Rust dispatcher
        once the method is resolved): its task, the call's own context, a timeout scope;
        with ``tag == "suspend"``, the same after suspending once."""
        from nodecell import _worker_rt

        first = asyncio.current_task()
        before = _CV.get()
        _CV.set(tag)
        serving = _worker_rt._SERVING.get()
        async with asyncio.timeout(5):  # needs a current task
            await asyncio.sleep(0) if tag == "suspend" else None
        out = {"task": first is not None, "serving": isinstance(serving, int), "cv_before": before}
        if tag == "suspend":
            await asyncio.sleep(0.001)
            out["same_task"] = asyncio.current_task() is first
            out["same_serving"] = _worker_rt._SERVING.get() == serving
            out["cv_after"] = _CV.get()
        return out

    async def aboom(self, msg, suspend=False):
        if suspend:
            await asyncio.sleep(0)
        raise ValueError(msg)

    def served_in_rust(self):
        """Calls this worker's Rust dispatcher answered so far (without the Python dispatch code)."""
        import gc

        from nodecell._worker_rt import WorkerEndpoint

        eps = [o for o in gc.get_objects() if isinstance(o, WorkerEndpoint)]
        return eps[0]._disp.served

    def returns_awaitable(self, x):
        """A plain method that returns a coroutine: the call's value is what it gives."""
        async def later():
            await asyncio.sleep(0)
            return x * 3

        return later()

    def double(self, x):
        return x * 2

    def loop_facts(self):
        """What a plain method sees of asyncio: no running loop, and asyncio.run works."""
        try:
            asyncio.get_running_loop()
            running = True
        except RuntimeError:
            running = False

        async def three():
            return 3

        return {"running": running, "run": asyncio.run(three())}

    def types_of(self, *args):
        return [type(a).__name__ for a in args]

    def env(self, name):
        return os.environ.get(name)

    def thread_pools(self):
        """The worker's thread-pool variables and torch's intra-op thread count."""
        import torch

        return {"env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                        "OPENBLAS_NUM_THREADS")},
                "torch": torch.get_num_threads()}

    def whoami(self):
        return {"uid": os.getuid(), "euid": os.geteuid(), "pid": os.getpid(), "ppid": os.getppid()}

    def versions(self):
        out = {"python": sys.version.split()[0]}
        for m in ("numpy", "torch"):
            try:
                mod = __import__(m)
                out[m] = mod.__version__
                out[m + "_file"] = mod.__file__
            except ImportError:
                out[m] = None
        return out

    def pack_value(self):
        return self.module.VALUE

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    async def asleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    # services and callbacks
    def use_registry(self, key, value):
        reg = Registry()
        n = reg.put(key, value)
        return n, reg.get(key), isinstance(reg, Registry), reg.local_pid() == os.getpid()

    async def use_registry_async(self, key):
        return await Registry().aget(key)

    def reenter(self, ext_name, x):
        return Registry().ask_worker(ext_name, x)

    def call_back(self, fn, *args):
        return fn(*args)

    def lookup_or_default(self, fn, key, default):
        """Code written for a direct call: catches the KeyError the host's function raises."""
        try:
            return fn(key)
        except KeyError:
            return default

    def take_and_drop(self, obj):
        """Takes an argument and keeps nothing of it."""
        return None

    def set_gc(self, enabled):
        """Turn the worker's automatic garbage collection on or off (a test looking for
        objects that only a collection would free: off, they stay)."""
        import gc

        (gc.enable if enabled else gc.disable)()
        return gc.isenabled()

    def make_counter(self, start):
        c = Counter(start)
        self.kept.append(c)
        return c

    def make_adder(self, n):
        return lambda x: x + n

    def poke_private(self, obj):
        return obj._private()

    def use_handle(self, obj, by):
        return obj.incr(by)

    def exported_count(self):
        gc.collect()
        from nodecell._worker_rt import WorkerEndpoint

        eps = [o for o in gc.get_objects() if isinstance(o, WorkerEndpoint)]
        return sum(len(e.exported) for e in eps)

    # tensors
    def tensor_info(self, t):
        return {"ptr": t.data_ptr(), "shape": list(t.shape), "sum": float(t.double().sum()),
                "writable": True}

    def scale_inplace(self, t, f):
        t.mul_(f)
        return float(t.double().sum())

    def numpy_write(self, a):
        try:
            a[0] = 42
            return "written"
        except ValueError as e:
            return f"refused: {e}"

    def fill(self, t, value):
        t.fill_(value)
        return True

    def make_tensor(self, n, value):
        import torch

        return torch.full((n,), float(value))

    def make_array(self, n, value):
        """A fresh float32 numpy array (an output a numpy-only node makes)."""
        import numpy as np

        return np.full(n, float(value), dtype=np.float32)

    def make_pair(self, shape, seed):
        """Two fresh tensors in one result (a mask and its inverse, as real nodes return)."""
        import torch

        g = torch.Generator().manual_seed(seed)
        m = torch.rand(*shape, generator=g)
        return (m, 1.0 - m)

    def inplace_return(self, t, f):
        """Changes its input in place and returns it (common in real nodes)."""
        t.mul_(f)
        return t

    def pool_stats(self):
        from nodecell import _tensors

        return _tensors.tensor_pool_stats()

    def heap_stats(self):
        """The worker heap's counters (torch's large allocations in shared arenas)."""
        from nodecell import _nodecell

        return dict(_nodecell.worker_heap_stats())

    async def fresh_async(self, n, value):
        """A fresh tensor made across a suspension (calls in flight interleave here)."""
        import torch

        t = torch.empty(n)
        await asyncio.sleep(0)
        t.fill_(float(value))
        await asyncio.sleep(0)
        return t

    def churn(self, sizes):
        """Allocates, fills and frees one float32 tensor of each size (elements)."""
        import torch

        total = 0.0
        for n in sizes:
            t = torch.ones(n)
            total += float(t[-1])
            del t
        return total

    async def make_array_async(self, n, value):
        """A fresh float32 numpy array, made in an `async def` method."""
        import numpy as np

        return np.full(n, float(value), dtype=np.float32)

    def array_kept(self, n, value):
        """A fresh numpy array, returned and also kept here (see write_array_kept)."""
        import numpy as np

        self.kept_array = np.full(n, float(value), dtype=np.float32)
        return self.kept_array

    def write_array_kept(self, value):
        self.kept_array[:] = float(value)
        return float(self.kept_array.sum())

    def grow_array(self, n, value):
        """An array grown in place (numpy reallocs its buffer), filled with `value`."""
        import numpy as np

        a = np.full(n, float(value), dtype=np.float32)
        a.resize(2 * n, refcheck=False)
        a[n:] = float(value)
        return a

    def heap_switch(self, on):
        """Stops or resumes the worker heap's new allocations; whether it serves now."""
        from nodecell import _nodecell

        return _nodecell.set_worker_heap(bool(on))

    def fresh_kept(self, n, value):
        """A fresh float32 tensor (a node's output), returned and also kept here."""
        import torch

        self.kept_fresh = torch.empty(n).fill_(float(value))
        return self.kept_fresh

    def write_kept(self, value):
        """Writes the kept output in place (after returning it); returns its sum here."""
        self.kept_fresh.fill_(float(value))
        return float(self.kept_fresh.sum())

    def resend_kept(self):
        return self.kept_fresh

    def drop_fresh(self):
        self.kept_fresh = None
        return True

    def fork_with_heap_blocks(self, n):
        """Forks while holding a heap block; the child frees it, allocates and frees big
        tensors (libc's now: a child never takes from its parent's heap) and reports a
        sum through a pipe. Returns (the child's sum, its exit status, the parent's sum)."""
        import torch

        t = torch.full((n,), 3.0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                torch.set_num_threads(1)  # the parent's OpenMP pool did not survive the fork
                u = t * 2.0
                total = float(u.sum())
                del t, u
                for _ in range(5):
                    v = torch.ones(n)
                    total += float(v.sum())
                    del v
                os.write(w, repr(total).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        got = b""
        while True:
            chunk = os.read(r, 64)
            if not chunk:
                break
            got += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        return float(got or b"nan"), status, float(t.sum())

    def threaded_outputs(self, nthreads, n, rounds):
        """Python threads each allocating, checking and freeing big tensors (torch's own
        intra-op threads too: the fills and sums of n floats run in parallel); returns one
        fresh tensor per thread, filled with its index."""
        import threading

        import torch

        out = [None] * nthreads
        bad = []

        def run(i):
            for r in range(rounds):
                t = torch.empty(n).fill_(float(i + r))
                u = t * 2.0  # another block, freed at once
                if float(u[-1]) != 2.0 * (i + r) or float(t.sum()) != float(n) * (i + r):
                    bad.append((i, r))
                del t, u
            out[i] = torch.full((n,), float(i))

        ts = [threading.Thread(target=run, args=(i,)) for i in range(nthreads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if bad:
            raise AssertionError(f"wrong data in threads: {bad[:5]}")
        return out

    def keep(self, t):
        self.kept.append(t)
        return len(self.kept)

    def drop_kept(self):
        self.kept.clear()
        gc.collect()
        return True

    def make_typed(self, n, dtype):
        import torch

        return torch.linspace(-2, 2, n).to(getattr(torch, dtype))

    def bad_ndarray(self, how):
        """A hostile reply: an inline tensor record whose fields lie."""
        from nodecell import _nodecell

        fields = {"kind": "torch", "dtype": "float32", "shape": [4], "data": b"\0" * 16}
        if how == "short":
            fields["data"] = b"\0" * 15
        elif how == "dtype":
            fields["dtype"] = "float128"
        elif how == "shape":
            fields["shape"] = [-1]
        elif how == "huge":
            fields["shape"] = [1 << 62, 1 << 62]
        return _nodecell.Record("nodecell.ndarray", fields)

    def scribble_outputs(self, value):
        """Hostile: map every arena this process holds writable-shared (the pooled ones
        it sent allow it; the host's refuse) and overwrite it. Returns how many."""
        import mmap

        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if "nodecell-arena" not in os.readlink(f"/proc/self/fd/{fd}"):
                    continue
                size = os.fstat(int(fd)).st_size
                m = mmap.mmap(int(fd), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except (OSError, ValueError):
                continue
            m.write(bytes([value]) * size)
            m.close()
            n += 1
        return n

    def rss_mb(self):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
        return -1

    # failures
    def boom(self, msg):
        raise ValueError(msg)

    def exit_now(self, code):
        os._exit(code)

    def segfault(self):
        import ctypes

        ctypes.string_at(0)

    def hog(self, megabytes):
        blocks = []
        for _ in range(megabytes):
            blocks.append(bytearray(1 << 20))
        return len(blocks)

    def log_something(self, msg):
        logging.getLogger("testpack").warning("log: %s", msg)
        print(f"stdout: {msg}", flush=True)
        return True

    def unsendable(self):
        return threading.Lock()

    def corrupt_ring(self):
        """A hostile worker: publish a record claiming 2 GiB into the worker->host ring,
        ring the host's doorbell, and never answer."""
        import ctypes
        import mmap
        import struct

        for fd in range(3, 256):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if "nodecell-channel" not in target:
                continue
            m = mmap.mmap(fd, os.fstat(fd).st_size)
            slot_count, slot_size = struct.unpack_from("<II", m, 16)
            ring1 = struct.unpack_from("<Q", m, 40)[0]
            ctl = 1024
            head = struct.unpack_from("<Q", m, ctl)[0]
            at = ring1 + (head % slot_count) * slot_size
            struct.pack_into("<IHH", m, at, 0x7FFFFFF0, 0, 0)  # len, kind=inline, reserved
            struct.pack_into("<Q", m, ctl, head + 1)  # publish it
            seq = struct.unpack_from("<I", m, ctl + 256)[0]
            struct.pack_into("<I", m, ctl + 256, (seq + 1) & 0xFFFFFFFF)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(m, ctl + 256))
            ctypes.CDLL(None, use_errno=True).syscall(202, ctypes.c_void_p(addr), 1, 0x7FFFFFFF, None, None, 0)
            time.sleep(30)  # never answer: the host must drop us on its own
        return "no channel memfd found"
