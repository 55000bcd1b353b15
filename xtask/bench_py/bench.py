"""Benchmark driver for `cargo xtask bench py`: one implementation per run.

    python bench.py --impl nodecell  --out RAW.json --work DIR [--quick] [--only a,b]
    python bench.py --impl pyisolate --out RAW.json --work DIR [--quick] [--only a,b]

`cargo xtask bench py` runs it twice (nodecell from the repo's .venv, pyisolate
0.10.2 from target/bench/venv), then merges both files into target/bench/py.json
and prints the comparison. Both runs execute the same scenarios against the same
extension code (ext_nodecell.py / ext_pyisolate.py differ only in their base
class) and the same empty pack (pack/).

The output file is rewritten after every scenario, so a run that is killed or
crashes still leaves the rows measured so far. A scenario that fails records
`{"name": ..., "error": ...}` and the run goes on.

Row fields: `median_ns`, `p90_ns`, `min_ns`, `samples` for timings; `value` and
`unit` for worker_rss_mb-like rows and concurrent_noop_calls_per_s; `note` where
something about the measurement must be said.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PACK = os.path.join(HERE, "pack")
if HERE not in sys.path:
    sys.path.insert(0, HERE)

MiB = 1 << 20
GiB = 1 << 30

#: The scenarios of issue 5, in the order the table lists them.
SCENARIOS = ["cold_start_shared_torch", "worker_rss_mb", "noop_rtt", "echo_small_rtt", "concurrent_noop_calls_per_s",
             "torch_1MiB_rtt", "torch_64MiB_rtt", "torch_1GiB_rtt", "numpy_1MiB_rtt", "numpy_64MiB_rtt"]

#: Tensor scenarios of issue 10 (outputs, fresh sends), each a group of rows.
TENSOR_SCENARIOS = ["image_node", "matmul_node", "fresh_64MiB"]

# The already-shared torch rows: seconds of warm-up after the first send, then of samples.
TORCH_WARMUP_S = 0.5
TORCH_SAMPLE_S = 1.0

# Small arguments of a typical node call: what `echo_small_rtt` sends and gets back.
SMALL = {"seed": 42, "steps": 20, "cfg": 7.5, "sampler": "euler_a", "size": [512, 512], "denoise": 1.0,
         "prompt": "a lighthouse on a cliff at dusk"}


def log(msg: str) -> None:
    print(f"[bench py] {msg}", file=sys.stderr, flush=True)


def pct(samples, p):
    s = sorted(samples)
    if not s:
        return None
    i = round((len(s) - 1) * p)
    return s[min(i, len(s) - 1)]


class Results:
    """Rows written to `path` after each scenario (atomic rename)."""

    def __init__(self, impl: str, path: str, meta: dict) -> None:
        self.impl = impl
        self.path = path
        self.rows: list = []
        self.meta = meta

    def _flush(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"impl": self.impl, "meta": self.meta, "rows": self.rows}, f, indent=1)
        os.replace(tmp, self.path)

    def timing(self, scenario: str, samples_ns, note: str = None) -> None:
        row = {"name": f"{self.impl}/{scenario}", "median_ns": int(statistics.median(samples_ns)),
               "p90_ns": int(pct(samples_ns, 0.9)), "min_ns": int(min(samples_ns)), "samples": len(samples_ns)}
        if note:
            row["note"] = note
        self.rows.append(row)
        log(f"{row['name']}: median {row['median_ns'] / 1e3:.1f} us, p90 {row['p90_ns'] / 1e3:.1f} us, "
            f"n={row['samples']}")
        self._flush()

    def value(self, scenario: str, value: float, unit: str, samples=None, note: str = None) -> None:
        row = {"name": f"{self.impl}/{scenario}", "value": round(float(value), 3), "unit": unit}
        if samples is not None:
            row["samples"] = samples
        if note:
            row["note"] = note
        self.rows.append(row)
        log(f"{row['name']}: {row['value']} {unit}")
        self._flush()

    def error(self, scenario: str, message: str) -> None:
        self.rows.append({"name": f"{self.impl}/{scenario}", "error": message})
        log(f"{self.impl}/{scenario}: ERROR {message}")
        self._flush()


async def sample_pair(fa, fb, iters: int, budget_s: float, warmup: int = 3):
    """Like :func:`sample` for two calls at once, alternating them call by call, so
    both see the same machine: on a 2-vCPU VM the scheduler may put host and worker on
    one core for a while and on two cores later, and the ratio of two rows measured
    one after the other then shows that, not the calls. Returns both sample lists."""
    for _ in range(warmup):
        await fa()
        await fb()
    a, b = [], []
    deadline = time.perf_counter() + budget_s
    for i in range(iters):
        t0 = time.perf_counter_ns()
        await fa()
        t1 = time.perf_counter_ns()
        await fb()
        t2 = time.perf_counter_ns()
        a.append(t1 - t0)
        b.append(t2 - t1)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return a, b


async def sample(fn, iters: int, budget_s: float, warmup: int = 3, min_iters: int = 3, warmup_s: float = 0.0):
    """Call `await fn()` `warmup` times (and on until `warmup_s` seconds have passed),
    then up to `iters` times (stopping after `budget_s` seconds once `min_iters`
    samples exist); return the samples in ns."""
    warm_until = time.perf_counter() + warmup_s
    for _ in range(warmup):
        await fn()
    while time.perf_counter() < warm_until:
        await fn()
    out = []
    deadline = time.perf_counter() + budget_s
    for i in range(iters):
        t0 = time.perf_counter_ns()
        await fn()
        out.append(time.perf_counter_ns() - t0)
        if i + 1 >= min_iters and time.perf_counter() > deadline:
            break
    return out


def proc_kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def loadavg() -> list:
    """The 1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return []


def descendants(root: int) -> list:
    """`root` and every process below it (host pid view)."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_memory(root: int) -> tuple:
    """(sum of Pss, sum of Rss) in KiB over `root`'s process tree, number of processes."""
    pids = descendants(root)
    pss = sum(max(proc_kb(f"/proc/{p}/smaps_rollup", "Pss:"), 0) for p in pids)
    rss = sum(max(proc_kb(f"/proc/{p}/status", "VmRSS:"), 0) for p in pids)
    return pss, rss, len(pids)


def pack_dependencies() -> list:
    """What the benchmark pack declares: numpy, pinned to the host's version (the numpy
    scenarios need it in the worker). pyisolate skips it (inherited from the host's
    site-packages); nodecell installs it into the pack's venv from uv's cache."""
    import numpy

    return [f"numpy=={numpy.__version__}"]


# -- the two implementations ---------------------------------------------------------------------

class NodecellImpl:
    name = "nodecell"

    def __init__(self, work: str) -> None:
        import nodecell
        from ext_nodecell import BenchExt, image_node, matmul_node

        self.image_node = image_node
        self.matmul_node = matmul_node
        self.nc = nodecell
        self.venvs = os.path.join(work, "nodecell-venvs")
        os.makedirs(self.venvs, exist_ok=True)
        self.manager = nodecell.ExtensionManager(BenchExt, nodecell.ExtensionManagerConfig(venv_root_path=self.venvs))
        self.has_prewarm = hasattr(self.manager, "prewarm")
        self.cold_start_note = (
            "load_extension + first call after `await manager.prewarm(config)` (warm zygote)"
            if self.has_prewarm else
            "second load of the same pack after ext.stop() (venv cached, no prewarm API yet: "
            "sandbox, zygote with torch import and worker all start again)")

    def config(self, name: str = "bench_nc"):
        # NODECELL_WORKER_HEAP / _MIN set for the bench reach the worker (A/B of the worker heap).
        env = {k: os.environ[k] for k in ("NODECELL_WORKER_HEAP", "NODECELL_WORKER_HEAP_MIN") if k in os.environ}
        return self.nc.ExtensionConfig(name=name, module_path=PACK, share_torch=True, isolated=True,
                                       dependencies=pack_dependencies(), env=env)

    async def load(self, name: str = "bench_nc"):
        ext = self.manager.load_extension(self.config(name))
        await ext
        return ext

    async def prewarm(self, name: str = "bench_nc") -> None:
        if self.has_prewarm:
            await self.manager.prewarm(self.config(name))

    async def stop(self, ext) -> None:
        await ext.stop()

    async def stop_all(self) -> None:
        await self.manager.stop_all_extensions()

    def tree_root(self, ext):
        cell = getattr(ext, "_cell", None)
        proc = getattr(cell, "proc", None)
        return getattr(proc, "pid", None)

    def versions(self, ext) -> dict:
        # Extension.__getattr__ turns unknown names into remote methods: look on the class.
        for attr in ("worker_versions", "versions"):
            if isinstance(getattr(type(ext), attr, None), property):
                return dict(getattr(ext, attr) or {})
        return {}

    def numpy_shared(self, arr):
        """The arena-backed copy of `arr` (sent without copying)."""
        out = self.nc.empty(arr.shape, str(arr.dtype), kind="numpy")
        out[...] = arr
        return out


class PyisolateImpl:
    name = "pyisolate"

    def __init__(self, work: str) -> None:
        # Under bwrap, torch's shared-memory manager socket lives in TMPDIR: it must be
        # a writable directory mounted into the sandbox (see FIELD-NOTES), and set before
        # torch is imported.
        self.tmp = os.path.join(work, "pyisolate-tmp")
        os.makedirs(self.tmp, exist_ok=True)
        os.environ["TMPDIR"] = self.tmp
        import tempfile

        tempfile.tempdir = None
        import pyisolate
        from ext_pyisolate import BenchExt

        self.pi = pyisolate
        self.BenchExt = BenchExt
        import ext_pyisolate

        ext_pyisolate._quiet_pyisolate()
        self.image_node = ext_pyisolate.image_node
        self.matmul_node = ext_pyisolate.matmul_node
        self.venvs = os.path.join(work, "pyisolate-venvs")
        os.makedirs(self.venvs, exist_ok=True)
        self.manager = None
        self.has_prewarm = False
        self.cold_start_note = "load_extension (lazy) + first call returning, venv already built"

    def _manager(self):
        if self.manager is None:
            self.manager = self.pi.ExtensionManager(
                self.BenchExt, self.pi.ExtensionManagerConfig(venv_root_path=self.venvs))
        return self.manager

    def config(self, name: str = "bench_pi"):
        return self.pi.ExtensionConfig(
            name=name, module_path=PACK, isolated=True, dependencies=pack_dependencies(), apis=[], share_torch=True,
            share_cuda_ipc=False, sandbox={"writable_paths": [self.tmp], "readonly_paths": [HERE]},
            env={"TMPDIR": self.tmp})

    async def load(self, name: str = "bench_pi"):
        ext = self._manager().load_extension(self.config(name))  # synchronous and lazy
        await ext.noop()  # the process starts on the first call
        return ext

    async def prewarm(self, name: str = "bench_pi") -> None:
        return None

    async def stop(self, ext) -> None:
        self._manager().stop_all_extensions()

    async def stop_all(self) -> None:
        if self.manager is not None:
            self.manager.stop_all_extensions()
        try:
            self.pi.flush_tensor_keeper()
            self.pi.purge_orphan_sender_shm_files()
        except Exception:  # noqa: BLE001 - cleanup only
            pass

    def tree_root(self, ext):
        inner = getattr(ext, "_extension", None)
        proc = getattr(inner, "proc", None)
        return getattr(proc, "pid", None)

    def versions(self, ext) -> dict:
        return {}

    def numpy_shared(self, arr):
        return None  # pyisolate has no shared numpy arrays: they always cross as JSON lists


# -- scenarios -----------------------------------------------------------------------------------

class Bench:
    def __init__(self, impl, res: Results, quick: bool, only) -> None:
        self.impl = impl
        self.res = res
        self.quick = quick
        self.only = only
        self.ext = None

    def want(self, scenario: str) -> bool:
        return self.only is None or scenario in self.only

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    async def guarded(self, scenario: str, coro_fn, timeout: float) -> None:
        if not self.want(scenario):
            return
        log(f"{self.impl.name}/{scenario} ...")
        try:
            await asyncio.wait_for(coro_fn(), timeout)
        except asyncio.TimeoutError:
            self.res.error(scenario, f"did not finish within {timeout:g} s")
        except Exception as e:  # noqa: BLE001 - record and go on
            tb = traceback.format_exc(limit=3)
            log(tb)
            self.res.error(scenario, f"{type(e).__name__}: {e}"[:600])
        gc.collect()

    # cold start: load to first call returning, venv ready ---------------------------------------
    async def cold_start(self) -> None:
        impl = self.impl
        t0 = time.perf_counter()
        ext = await impl.load("bench_cold")  # builds (or finds) the venv; not timed
        await ext.noop()
        await impl.stop(ext)
        log(f"{impl.name}: first load (venv build or cache hit) + stop took {time.perf_counter() - t0:.2f} s")

        async def loads(prewarm: bool):
            samples, stops, warms = [], [], []
            for _ in range(self.n(3, 2)):
                if prewarm:
                    t = time.perf_counter_ns()
                    await impl.prewarm("bench_cold")
                    warms.append(time.perf_counter_ns() - t)
                t = time.perf_counter_ns()
                ext = await impl.load("bench_cold")
                await ext.noop()
                samples.append(time.perf_counter_ns() - t)
                t = time.perf_counter_ns()
                await impl.stop(ext)
                stops.append(time.perf_counter_ns() - t)
            return samples, stops, warms

        if impl.has_prewarm:
            samples, _stops, warms = await loads(True)
            self.res.timing("cold_start_shared_torch", samples, note=impl.cold_start_note)
            self.res.timing("prewarm", warms, note="await manager.prewarm(config): sandbox + zygote importing "
                                                   "torch, venv cached")
            samples, stops, _ = await loads(False)
            self.res.timing("cold_start_no_prewarm", samples,
                            note="load_extension + first call with no warm zygote (venv cached): sandbox, "
                                 "zygote importing torch, worker")
        else:
            samples, stops, _ = await loads(False)
            self.res.timing("cold_start_shared_torch", samples, note=impl.cold_start_note)
        self.res.timing("stop_extension", stops)

    async def load_main(self) -> None:
        self.ext = await self.impl.load()
        for _ in range(20):
            await self.ext.noop()
        v = self.impl.versions(self.ext)
        if v:
            self.res.meta["worker_versions"] = v

    async def memory(self) -> None:
        m = await self.ext.mem()
        self.res.value("worker_rss_mb", m["rss_kb"] / 1024, "MiB",
                       note="VmRSS of the worker process, read by the worker after load + 20 noop calls, "
                            "before any tensor scenario")
        if m.get("pss_kb", -1) >= 0:
            self.res.value("worker_pss_mb", m["pss_kb"] / 1024, "MiB",
                           note="Pss of the worker (pages shared with a zygote or other processes split)")
        root = self.impl.tree_root(self.ext)
        if root:
            pss, rss, n = tree_memory(root)
            self.res.value("tree_pss_mb", pss / 1024, "MiB",
                           note=f"sum of Pss over the whole isolation tree ({n} processes from the host's "
                                f"child down: launcher/bwrap, sandbox init, zygote, worker)")

    async def rtt(self, scenario: str, fn, iters: int, budget: float, warmup: int = 5, note=None,
                  min_iters: int = 3, warmup_s: float = 0.0) -> None:
        self.res.timing(scenario, await sample(fn, iters, budget, warmup, min_iters, warmup_s), note=note)

    async def concurrent(self) -> None:
        await self._concurrent("concurrent_noop_calls_per_s", "noop")
        if self.impl.name == "nodecell":
            await self._concurrent("concurrent_noop_sync_calls_per_s", "noop_sync")

    async def _concurrent(self, scenario: str, method: str) -> None:
        ext = self.ext
        rates = []
        window = 1.0

        async def one_round() -> float:
            stop_at = time.perf_counter() + window
            count = 0

            async def caller() -> None:
                nonlocal count
                fn = getattr(ext, method)
                while time.perf_counter() < stop_at:
                    await fn()
                    count += 1

            t = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(8)))
            return count / (time.perf_counter() - t)

        await one_round()  # warm-up
        for _ in range(self.n(5, 3)):
            rates.append(await one_round())
        self.res.value(scenario, statistics.median(rates), "calls/s", samples=len(rates),
                       note=f"8 coroutines each awaiting {method}() in a loop for {window:g} s; median of rounds "
                            f"(min {min(rates):.0f}, max {max(rates):.0f})")

    async def torch_case(self, label: str, nbytes: int) -> None:
        """First send of a private tensor, then echoes of the now shared tensor: each
        row warms up for TORCH_WARMUP_S and samples for TORCH_SAMPLE_S of wall time, on
        both sides alike (a row of a few dozen calls right after a 1 GiB copy measures
        where the scheduler left the two processes, not the call)."""
        import torch

        iters, budget = 10_000_000, self.n(TORCH_SAMPLE_S, TORCH_SAMPLE_S / 5)
        warmup_s = self.n(TORCH_WARMUP_S, TORCH_WARMUP_S / 3)

        scenario = f"torch_{label}_rtt"
        x = torch.ones(nbytes // 4, dtype=torch.float32)  # a private tensor, as a node would make it
        t = time.perf_counter_ns()
        y = await self.ext.echo(x)  # first send: the one-time move into shared memory
        first = time.perf_counter_ns() - t
        if not (isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == x.dtype):
            raise RuntimeError(f"echo returned {type(y).__name__} {getattr(y, 'shape', '')}")
        if nbytes <= 64 * MiB and not torch.equal(x, y):
            raise RuntimeError("echo returned different data")
        del y
        self.res.timing(f"torch_{label}_first_send", [first],
                        note="first echo of a private tensor: includes the one-time move into shared memory "
                             "(nodecell: copy into an arena + re-point; pyisolate: share_memory_ to /dev/shm)")

        async def call() -> None:
            r = await self.ext.echo(x)
            if r.shape != x.shape:
                raise RuntimeError("wrong shape back")

        await self.rtt(scenario, call, iters, budget, warmup_s=warmup_s,
                       note="echo of an already-shared float32 tensor (after its first send), result dropped; "
                            f"{warmup_s:g} s of warm-up, then {budget:g} s of samples")
        if self.impl.name == "nodecell":
            async def call_sync() -> None:
                r = await self.ext.echo_sync(x)
                if r.shape != x.shape:
                    raise RuntimeError("wrong shape back")

            await self.rtt(f"torch_{label}_sync_rtt", call_sync, iters, budget, warmup_s=warmup_s,
                           note="as torch_*_rtt, through a plain `def` method")
        x = None  # drop the tensor (the closures above are done with it)
        gc.collect()

    async def numpy_case(self, label: str, nbytes: int, iters: int, budget: float, warmup: int = 2,
                         min_iters: int = 3) -> None:
        import numpy as np

        scenario = f"numpy_{label}_rtt"
        rng = np.random.default_rng(1)
        a = rng.random(nbytes // 4, dtype=np.float32)  # image-like float data

        def check(r) -> None:
            n = len(r) if isinstance(r, list) else getattr(r, "size", -1)
            if n != a.size:
                raise RuntimeError(f"echo returned {type(r).__name__} of {n} items, sent {a.size}")

        back_type = []

        async def call() -> None:
            r = await self.ext.echo(a)
            check(r)
            if not back_type:
                back_type.append(type(r).__module__ + "." + type(r).__name__)

        note = "echo of a plain (private) float32 numpy array"
        await self.rtt(scenario, call, iters, budget, warmup=warmup, note=note, min_iters=min_iters)
        if back_type and back_type[0] != "numpy.ndarray":
            self.res.rows[-1]["note"] += f"; comes back as {back_type[0]}, not numpy.ndarray"
            self.res._flush()
        shared = self.impl.numpy_shared(a)
        if shared is not None:
            async def call_shared() -> None:
                check(await self.ext.echo(shared))

            await self.rtt(f"numpy_{label}_arena_rtt", call_shared, iters, budget,
                           note="echo of an arena-allocated array (nodecell.empty(kind='numpy'))")

    async def image_node_case(self) -> None:
        """A node-like function producing a fresh IMAGE tensor, called directly in the host
        and through the extension, in the same run: a 147 KB (1x128x96x3) and a 12.6 MB
        (1x1024x1024x3) float32 image. The input is the same (already shared) tensor
        every call, as a workflow passes one node's output to the next."""
        import torch

        node = self.impl.image_node
        for label, shape, iters in (("147KB", (1, 128, 96, 3), self.n(2000, 300)),
                                    ("12MB", (1, 1024, 1024, 3), self.n(100, 30))):
            img = torch.rand(shape)
            await self.ext.echo(img)  # shared once, as a previous node's output would be
            expect = node(img)

            async def direct(img=img) -> None:
                node(img)

            async def isolated(img=img) -> None:
                (out,) = await self.ext.image_node(img)
                if out.shape != img.shape:
                    raise RuntimeError("wrong shape back")

            (out,) = await self.ext.image_node(img)
            if not torch.allclose(out, expect):
                raise RuntimeError("the isolated node returned different data")
            del out
            await self.rtt(f"image_{label}_node_direct", direct, iters, self.n(4, 1),
                           note=f"image_node on a {list(shape)} float32 image, called in the host")
            await self.rtt(f"image_{label}_node_rtt", isolated, iters, self.n(4, 1),
                           note=f"image_node on a {list(shape)} float32 image through the extension "
                                "(a fresh output tensor every call)")
            del img
            gc.collect()

    async def matmul_node_case(self) -> None:
        """A heavy CPU node (a 1024x1024 float32 matmul, a fresh 4 MiB output) called directly
        in the host and through the extension, in the same run: what the worker's thread
        pools cost compute-bound nodes (nodecell's workers default to one CPU less than
        the host's, see nodecell/_threadpools.py; the host keeps torch's default)."""
        import torch

        node = self.impl.matmul_node
        a = torch.rand(1024, 1024)
        await self.ext.echo(a)  # shared once, as a previous node's output would be
        expect = node(a)
        (out,) = await self.ext.matmul_node(a)
        if not torch.allclose(out, expect, rtol=1e-4, atol=1e-3):
            raise RuntimeError("the isolated node returned different data")
        del out

        async def direct(a=a) -> None:
            node(a)

        async def isolated(a=a) -> None:
            (r,) = await self.ext.matmul_node(a)
            if r.shape != a.shape:
                raise RuntimeError("wrong shape back")

        iters = self.n(60, 15)
        await self.rtt("matmul_1024_node_direct", direct, iters, self.n(6, 2), warmup=2,
                       note=f"a @ a on a [1024, 1024] float32 tensor in the host ({torch.get_num_threads()} threads)")
        await self.rtt("matmul_1024_node_rtt", isolated, iters, self.n(6, 2), warmup=2,
                       note="a @ a on a [1024, 1024] float32 tensor through the extension (a fresh 4 MiB "
                            "output every call; the worker's own thread-pool size)")
        del a
        gc.collect()

    async def fresh_64MiB_case(self) -> None:
        """A fresh private 64 MiB tensor every call (made before the clock starts), echoed:
        its first send each time. Next to it, one memcpy of 64 MiB into memory already
        faulted in, measured in this run, and a plain 64 MiB numpy echo (numpy_64MiB_rtt)."""
        import numpy as np
        import torch

        n = 64 * MiB
        src = np.random.default_rng(2).random(n // 4, dtype=np.float32)
        dst = np.empty_like(src)
        dst.fill(1.0)
        copies = []
        for _ in range(self.n(20, 8)):
            t0 = time.perf_counter_ns()
            np.copyto(dst, src)
            copies.append(time.perf_counter_ns() - t0)
        self.res.timing("memcpy_64MiB", copies, note="np.copyto of 64 MiB into a buffer already faulted in "
                                                     "(the baseline of the fresh-send goals)")
        # The same copy from a fresh private tensor (what a first send copies): torch's
        # allocator takes plain 4 KiB pages where numpy asks for transparent huge pages,
        # and reading freshly faulted 4 KiB pages is much slower here.
        fresh_copies = []
        for i in range(self.n(12, 5)):
            x = torch.empty(n // 4, dtype=torch.float32).fill_(float(i))
            t0 = time.perf_counter_ns()
            np.copyto(dst, x.numpy())
            fresh_copies.append(time.perf_counter_ns() - t0)
            del x
        self.res.timing("memcpy_64MiB_from_fresh_tensor", fresh_copies,
                        note="np.copyto of a fresh private 64 MiB torch tensor (made like the fresh-send "
                             "rows' tensors) into a buffer already faulted in: the copy a first send makes")
        del src, dst
        samples = []
        for i in range(self.n(12, 5)):
            x = torch.empty(n // 4, dtype=torch.float32).fill_(float(i))
            t0 = time.perf_counter_ns()
            y = await self.ext.echo(x)
            samples.append(time.perf_counter_ns() - t0)
            if y.shape != x.shape or float(y[-1]) != float(i):
                raise RuntimeError("echo returned different data")
            del x, y
            gc.collect()
        self.res.timing("torch_64MiB_fresh_send", samples[1:] if len(samples) > 2 else samples,
                        note="echo of a fresh private float32 tensor every call (its first send; nodecell: "
                             "one copy into a pooled arena + re-point; pyisolate: share_memory_); the "
                             "very first call of the run is left out (see torch_64MiB_first_send)")
        # The same made in the worker: a fresh 64 MiB output every call (nodecell: allocated in a
        # shared arena by the worker heap, no copy; pyisolate: share_memory_ of the output).
        samples = []
        for i in range(self.n(12, 5)):
            t0 = time.perf_counter_ns()
            y = await self.ext.fresh_64MiB_out(i)
            samples.append(time.perf_counter_ns() - t0)
            if y.shape != (n // 4,) or float(y[0]) != float(i) or float(y[-1]) != float(i):
                raise RuntimeError("fresh_64MiB_out returned different data")
            del y
            gc.collect()
        self.res.timing("torch_64MiB_fresh_out", samples[1:] if len(samples) > 2 else samples,
                        note="a fresh private 64 MiB float32 tensor made in the worker every call "
                             "(torch.empty().fill_(i)) and returned; the first call is left out")

    async def zygote_restart(self) -> None:
        """nodecell only: time from a worker crash to the next call returning (fresh worker forked
        by the cell's warm zygote)."""
        nc = self.impl.nc
        samples = []
        for _ in range(self.n(5, 3)):
            try:
                await self.ext.crash()
            except nc.WorkerCrashed:
                pass
            t = time.perf_counter_ns()
            await self.ext.noop()
            samples.append(time.perf_counter_ns() - t)
        self.res.timing("worker_start_from_warm_zygote", samples,
                        note="after a worker crash: next call returning on a fresh worker forked by the "
                             "still-running zygote (torch already imported)")

    async def run(self) -> None:
        ext_calls = lambda: self.ext  # noqa: E731
        await self.guarded("cold_start_shared_torch", self.cold_start, 300)
        log(f"{self.impl.name}: loading the extension used by the remaining scenarios")
        try:
            await asyncio.wait_for(self.load_main(), 300)
        except Exception as e:  # noqa: BLE001 - nothing else can run; say so in every row
            log(traceback.format_exc(limit=3))
            msg = f"the extension could not be loaded: {type(e).__name__}: {e}"[:600]
            for sc in SCENARIOS[1:]:
                if self.want(sc):
                    self.res.error(sc, msg)
            return
        await self.guarded("worker_rss_mb", self.memory, 60)
        async def noop_case() -> None:
            if self.impl.name != "nodecell":
                await self.rtt("noop_rtt", lambda: ext_calls().noop(), self.n(5000, 1000), self.n(5, 2), 100)
                return
            # The `async def` and the plain `def` noop alternate call by call (one placement
            # of host and worker on the cores for both: see sample_pair).
            a, d = await sample_pair(lambda: ext_calls().noop(), lambda: ext_calls().noop_sync(),
                                     self.n(5000, 1000), 2 * self.n(5, 2), 100)
            self.res.timing("noop_rtt", a, note="`async def` method; sampled alternating with noop_sync_rtt")
            self.res.timing("noop_sync_rtt", d, note="a plain `def` method (pyisolate only forwards `async def` "
                                                     "methods); sampled alternating with noop_rtt")

        await self.guarded("noop_rtt", noop_case, 120)
        await self.guarded("echo_small_rtt", lambda: self.rtt(
            "echo_small_rtt", lambda: ext_calls().echo(SMALL), self.n(5000, 1000), self.n(5, 2), 100,
            note="a dict of 7 small fields (ints, floats, str, list) and back"), 120)
        await self.guarded("concurrent_noop_calls_per_s", self.concurrent, 120)
        await self.guarded("torch_1MiB_rtt", lambda: self.torch_case("1MiB", MiB), 180)
        await self.guarded("torch_64MiB_rtt", lambda: self.torch_case("64MiB", 64 * MiB), 180)
        await self.guarded("torch_1GiB_rtt", lambda: self.torch_case("1GiB", GiB), 300)
        await self.guarded("numpy_1MiB_rtt", lambda: self.numpy_case("1MiB", MiB, self.n(500, 100), self.n(4, 1)), 300)
        if self.impl.name == "pyisolate" and self.quick:
            if self.want("numpy_64MiB_rtt"):
                self.res.error("numpy_64MiB_rtt", "skipped with --quick (about a minute per call: the array "
                                                  "crosses as a JSON list of 16M floats)")
        else:
            slow = self.impl.name == "pyisolate"  # ~1 min per call: one sample, no warm-up
            await self.guarded("numpy_64MiB_rtt", lambda: self.numpy_case(
                "64MiB", 64 * MiB, self.n(100, 20), self.n(4, 1), warmup=0 if slow else 2,
                min_iters=1 if slow else 3), 400)
        await self.guarded("image_node", self.image_node_case, 400)
        await self.guarded("matmul_node", self.matmul_node_case, 300)
        await self.guarded("fresh_64MiB", self.fresh_64MiB_case, 300)
        if self.impl.name == "nodecell":
            await self.guarded("worker_start_from_warm_zygote", self.zygote_restart, 120)


async def amain(args) -> int:
    meta = {"python": sys.version.split()[0], "argv": sys.argv[1:], "pid": os.getpid()}
    res = Results(args.impl, args.out, meta)
    res._flush()
    impl = NodecellImpl(args.work) if args.impl == "nodecell" else PyisolateImpl(args.work)
    try:
        import torch

        meta["torch"] = torch.__version__
        import numpy

        meta["numpy"] = numpy.__version__
        if args.impl == "nodecell":
            meta["nodecell"] = impl.nc.__version__
            meta["nodecell_path"] = os.path.dirname(impl.nc.__file__)
            meta["prewarm_api"] = impl.has_prewarm
        else:
            meta["pyisolate"] = impl.pi.__version__
    except Exception as e:  # noqa: BLE001
        meta["version_error"] = str(e)
    meta["cold_start_measured"] = impl.cold_start_note
    meta["loadavg_start"] = loadavg()
    meta["cpus"] = os.cpu_count()
    only = set(args.only.split(",")) if args.only else None
    bench = Bench(impl, res, args.quick, only)
    try:
        await bench.run()
    finally:
        try:
            await asyncio.wait_for(impl.stop_all(), 60)
        except Exception as e:  # noqa: BLE001
            log(f"stopping: {type(e).__name__}: {e}")
        res.meta["loadavg_end"] = loadavg()
        res.meta["finished"] = True
        res._flush()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impl", choices=["nodecell", "pyisolate"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True, help="folder for venvs and temporary files (kept between runs)")
    ap.add_argument("--quick", action="store_true", help="fewer iterations; skip pyisolate's numpy_64MiB")
    ap.add_argument("--only", default=None, help="comma-separated scenario names")
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.work, exist_ok=True)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
