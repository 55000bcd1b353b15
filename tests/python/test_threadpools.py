"""A worker's thread pools (torch/OpenMP, MKL, OpenBLAS) default to the host's CPUs (the host
sleeps while it awaits a node), or to the pack's CPU limit; the host's own environment and the
pack's ``env`` override the default."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")

from conftest import pack

VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def test_the_default_pool_size(nc):
    from nodecell._threadpools import worker_threads

    assert [worker_threads(None, cpus=n) for n in (1, 2, 8)] == [1, 2, 8]
    assert worker_threads(250, cpus=8) == 3, "a CPU limit, rounded up"
    assert worker_threads(50, cpus=8) == 1
    assert worker_threads(800, cpus=2) == 2, "never more than the host's CPUs"


def test_the_hosts_own_setting_is_passed_on(nc, monkeypatch):
    from nodecell._threadpools import thread_env

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "5")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = thread_env(300)
    assert env["OPENBLAS_NUM_THREADS"] == "5"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(min(3, len(os.sched_getaffinity(0))))
    assert thread_env(None, {"OMP_NUM_THREADS": "4"}) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4",
                                                          "OPENBLAS_NUM_THREADS": "5"}


def test_a_worker_starts_with_the_default_pools(aloop, basic_ext):
    if any(os.environ.get(k) for k in VARS):
        pytest.fail(f"the test host's environment sets {[k for k in VARS if os.environ.get(k)]}: unset them")
    want = len(os.sched_getaffinity(0))
    got = aloop.run(basic_ext.thread_pools())
    assert got == {"env": {k: str(want) for k in VARS}, "torch": want}


def test_a_packs_env_and_cpu_limit_size_its_pools(aloop, manager, nc, support_dir):
    async def load(name, **kw):
        return await manager.load_extension(nc.ExtensionConfig(
            name=name, module_path=pack(support_dir, "basic"), share_torch=True, timeout=60, **kw))

    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.fail("this test needs a host with 2 CPUs or more (the default, all of them, is then above 1)")
    # One thread: below the default (all the host's CPUs).
    own = aloop.run(load("threads_env", env={"OMP_NUM_THREADS": "1"}))
    try:
        got = aloop.run(own.thread_pools())
        assert got == {"env": {k: "1" for k in VARS}, "torch": 1}, \
            "the pack's OMP_NUM_THREADS sizes every pool"
    finally:
        aloop.run(own.stop())
    # A CPU limit of half a CPU: one thread, not the host's CPUs.
    limited = aloop.run(load("threads_cpu", max_cpu_percent=50))
    try:
        got = aloop.run(limited.thread_pools())
        assert got == {"env": {k: "1" for k in VARS}, "torch": 1}, got
    finally:
        aloop.run(limited.stop())


def test_a_pack_forked_from_an_app_cells_zygote_gets_its_own_pool_size(nc):
    """torch sized its pool in the zygote; the pack's setup (what a forked worker applies
    before serving) resizes it to the pack's OMP_NUM_THREADS."""
    import subprocess
    import sys

    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.fail("this test needs a host with 2 CPUs or more")
    code = ("import os, torch\n"
            "from nodecell import _pack_setup\n"
            "before = torch.get_num_threads()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    _pack_setup.apply({'env': {'OMP_NUM_THREADS': '1'}})\n"
            "    print(before, torch.get_num_threads(), flush=True)\n"
            "    os._exit(0)\n"
            "os.waitpid(pid, 0)\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(cpus))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(cpus), "1"]
