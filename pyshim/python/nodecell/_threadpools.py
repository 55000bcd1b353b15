"""How many compute threads a worker's thread pools start with (its launch environment).

torch (OpenMP), MKL and OpenBLAS size their pools from the environment when they
start, and by default take one thread per CPU the process may run on. A worker
computes while the host waits on it: the host's calling thread polls for the
reply (``_Worker.spin_for``) and the app goes on with its own threads. With a
pool as large as the machine, the pool's threads and the host's share CPUs, and
a parallel op finishes only when its slowest thread is scheduled again. Measured
on a 2-vCPU VM (loaded, 2026-12-05): a node of five elementwise ops on a 147 KB
image took 133 us inside a 2-thread worker and 49 us inside a 1-thread one, and
the isolated call 320 us against 157 us; a 1024x1024 matmul took 13.8 ms vs
16.2 ms (so one CPU less costs heavy CPU nodes up to 1/N of their speed).

So a worker's pools default to one thread fewer than the CPUs the host may use
(at least one), or to the pack's CPU limit (``max_cpu_percent``, rounded up) when
it has one; a value the host's own environment sets is passed on instead, and
the pack's ``env`` overrides either (its ``OMP_NUM_THREADS`` sizes all three).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

__all__ = ["THREAD_VARS", "thread_env", "worker_threads"]

#: The variables a worker's thread pools are sized by (OpenMP/torch, MKL, OpenBLAS).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _host_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_threads(max_cpu_percent: float | None = None, cpus: int | None = None) -> int:
    """The default pool size of a worker: ``ceil(max_cpu_percent / 100)`` when the pack has
    a CPU limit, else one less than ``cpus`` (the host's CPUs), within ``[1, cpus]``."""
    n = _host_cpus() if cpus is None else int(cpus)
    want = math.ceil(max_cpu_percent / 100) if max_cpu_percent else n - 1
    return max(1, min(n, want))


def thread_env(max_cpu_percent: float | None = None,
               pack_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread-pool variables of a worker's launch environment (``pack_env``, the pack's
    ``env``, goes over them afterwards). Each one the host's environment sets keeps the
    host's value; the others take the pack's ``OMP_NUM_THREADS`` when it sets one (torch
    reads ``MKL_NUM_THREADS`` over it: a default there would undo the pack's choice),
    else the host's, else :func:`worker_threads`."""
    n = ((pack_env or {}).get("OMP_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
         or str(worker_threads(max_cpu_percent)))
    return {k: os.environ.get(k) or n for k in THREAD_VARS}
