"""How many compute threads a worker's thread pools start with (its launch environment).

torch (OpenMP), MKL and OpenBLAS size their pools from the environment when they
start, and by default take one thread per CPU the process may run on. A worker
computes while the host waits on it: the host's calling thread polls for the reply
for a moment (``_Worker.spin_for``, at most 400 us) and then sleeps until it lands,
so during a node of any length the host needs no CPU, and the app's other threads
are as idle as they would be if the node ran in the host itself (where torch would
use every CPU). So a worker's pools default to all the CPUs the host may use, as
torch in the host does, or to the pack's CPU limit (``max_cpu_percent``, rounded up)
when it has one. Measured on a 2-vCPU VM (see README, issue 10 part of "Measured
on the development VM"): a 1024x1024 matmul node and a 12.6 MB IMAGE node run up to
twice as fast in a 2-thread worker as in a 1-thread one (the earlier default, one
CPU fewer than the host's), while a short node (147 KB IMAGE, tens of us, inside the
host's poll) stays within its target. A value the host's own environment sets is
passed on instead, and the pack's ``env`` overrides either (its ``OMP_NUM_THREADS``
sizes all three).
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
    a CPU limit, else ``cpus`` (the host's CPUs), within ``[1, cpus]``."""
    n = _host_cpus() if cpus is None else int(cpus)
    want = math.ceil(max_cpu_percent / 100) if max_cpu_percent else n
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
