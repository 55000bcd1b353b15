"""Benchmark driver for `cargo xtask bench ray`.

    python bench.py --out RAW.json [--quick]

Starts a local two-node Ray cluster (a head, where this driver runs, and one
worker raylet "w1"), then measures in the same run, for each scenario (noop,
numpy 64 MiB, torch 64 MiB round trips):

* ``local``: a local cell (backend "local"), the zero-copy arena path (the
  numpy array is allocated with ``nodecell.empty``; the torch tensor moves into
  an arena on its first send);
* ``remote``: a cell placed on raylet w1 (backend "ray"): Ray actor call + the
  cell's local channel on that node, tensors through Ray's object store;
* ``plain``: a plain Ray actor on raylet w1, the same method, no nodecell.

Writes ``{"rows": [{"scenario", "side", "median_ns", "p90_ns", "min_ns",
"samples"} | {"scenario", "side", "error"}], "meta": {...}}`` after every row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20


def log(msg: str) -> None:
    print(f"[bench ray] {msg}", file=sys.stderr, flush=True)


class Results:
    def __init__(self, path: str, meta: dict) -> None:
        self.path, self.meta, self.rows = path, meta, []

    def _flush(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": self.meta, "rows": self.rows}, f, indent=1)
        os.replace(tmp, self.path)

    def timing(self, scenario: str, side: str, samples: list) -> None:
        s = sorted(samples)
        row = {"scenario": scenario, "side": side, "median_ns": int(statistics.median(s)),
               "p90_ns": int(s[min(len(s) - 1, round((len(s) - 1) * 0.9))]), "min_ns": int(s[0]),
               "samples": len(s)}
        self.rows.append(row)
        log(f"{scenario} / {side}: median {row['median_ns'] / 1e3:.1f} us, p90 {row['p90_ns'] / 1e3:.1f} us, "
            f"n={len(s)}")
        self._flush()

    def error(self, scenario: str, side: str, message: str) -> None:
        self.rows.append({"scenario": scenario, "side": side, "error": message[:300]})
        log(f"{scenario} / {side}: ERROR {message}")
        self._flush()


async def sample(fn, iters: int, budget_s: float, warmup: int = 3):
    for _ in range(warmup):
        await fn()
    out = []
    deadline = time.perf_counter() + budget_s
    for i in range(iters):
        t0 = time.perf_counter_ns()
        await fn()
        out.append(time.perf_counter_ns() - t0)
        if i >= 4 and time.perf_counter() > deadline:
            break
    return out


class PlainActor:
    """The baseline: a plain Ray actor with the same two methods (no sandbox, no nodecell);
    defined here so Ray ships it by value."""

    def noop(self):
        return None

    def echo(self, x):
        return x


def staged_copy() -> str:
    """The extension module and the pack, world-readable (workers never run as host root)."""
    d = tempfile.mkdtemp(prefix="nodecell-bench-ray-", dir="/var/tmp")
    shutil.copy(os.path.join(HERE, "ext_ray.py"), d)
    shutil.copytree(os.path.join(HERE, "pack"), os.path.join(d, "pack"))
    for root, dirs, files in os.walk(d):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return d


async def run(args, res: Results, stage: str) -> None:
    import numpy as np
    import ray
    import torch

    import nodecell
    from ext_ray import RayBenchExt
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    iters = 50 if args.quick else 300
    big_iters = 5 if args.quick else 30
    venvs = args.venv_root
    os.makedirs(venvs, exist_ok=True)
    pack = os.path.join(stage, "pack")
    local = nodecell.ExtensionManager(RayBenchExt, nodecell.ExtensionManagerConfig(venv_root_path=venvs))
    remote = nodecell.ExtensionManager(RayBenchExt, nodecell.ExtensionManagerConfig(
        venv_root_path=venvs, backend="ray", ray={"placement_timeout": 600}))
    t = time.perf_counter()
    deps = ["numpy>=2,<3"]  # numpy in the worker too, so numpy arrays come back as numpy
    lext = await local.load_extension(nodecell.ExtensionConfig(
        name="bench_local", module_path=pack, share_torch=True, dependencies=deps))
    log(f"local cell up in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    rext = await remote.load_extension(nodecell.ExtensionConfig(
        name="bench_remote", module_path=pack, share_torch=True, dependencies=deps,
        placement={"resources": {"w1": 1}}))
    log(f"cell on raylet w1 up in {time.perf_counter() - t:.1f}s ({rext.placement['node_id'][:12]}, "
        f"remote={rext.remote})")
    res.meta["remote_node"] = rext.placement
    plain = ray.remote(PlainActor).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        rext.placement["node_id"], soft=False)).remote()
    await plain.noop.remote()

    # 64 MiB each. The numpy array lives in an arena (nodecell.empty), as a host sending
    # numpy without copies would make it; to Ray it is an ordinary array.
    arr = nodecell.empty([64 * MiB // 8], "float64", kind="numpy")
    arr[:] = np.random.default_rng(0).random(arr.shape[0])
    ten = torch.from_numpy(arr.copy()).float().repeat(2)
    assert arr.nbytes == 64 * MiB and ten.numel() * 4 == 64 * MiB

    async def plain_echo(x):
        return await plain.echo.remote(x)

    sides = {
        "local": (lambda: lext.noop(), lambda x: lext.echo(x)),
        "remote": (lambda: rext.noop(), lambda x: rext.echo(x)),
        "plain": (lambda: plain.noop.remote(), plain_echo),
    }
    for side, (noop, echo) in sides.items():
        for scenario, fn, n in (("noop", noop, iters),
                                ("numpy_64MiB", lambda: echo(arr), big_iters),
                                ("torch_64MiB", lambda: echo(ten), big_iters)):
            if args.only and scenario not in args.only:
                continue
            try:
                if scenario != "noop":
                    back = await fn()
                    if tuple(back.shape) != tuple((arr if scenario.startswith("numpy") else ten).shape):
                        raise AssertionError(f"echo returned shape {tuple(back.shape)}")
                    del back
                res.timing(scenario, side, await sample(fn, n, 20 if scenario == "noop" else 30))
            except Exception as e:  # noqa: BLE001 - a failing row must not stop the run
                traceback.print_exc()
                res.error(scenario, side, f"{type(e).__name__}: {e}")
    await local.stop_all_extensions()
    await remote.stop_all_extensions()
    ray.kill(plain)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", type=lambda s: s.split(","), default=None)
    p.add_argument("--venv-root", default="/var/tmp/nodecell-bench/venvs")
    p.add_argument("--store-mb", type=int, default=768, help="object store per raylet")
    args = p.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    stage = staged_copy()
    sys.path.insert(0, stage)
    res = Results(args.out, {"ray": ray.__version__, "python": sys.version.split()[0], "quick": args.quick})
    store = args.store_mb << 20
    t = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head": 1}, "object_store_memory": store})
    cluster.add_node(num_cpus=1, resources={"w1": 1}, object_store_memory=store)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    cluster.wait_for_nodes()
    log(f"cluster (head + raylet w1) up in {time.perf_counter() - t:.1f}s")
    try:
        asyncio.run(run(args, res, stage))
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(stage, ignore_errors=True)


if __name__ == "__main__":
    main()
