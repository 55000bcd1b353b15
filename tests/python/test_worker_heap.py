"""The worker heap: torch's large CPU allocations in a worker come from shared arenas,
so a fresh output crosses without a copy, and the worker's later writes to a tensor it
returned still never reach the host (its mapping turns copy-on-write when sent)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import pack  # noqa: E402

N = 1 << 20  # 4 MiB of float32: served by the heap (>= 1 MiB)


def _delta(after, before, *keys):
    return {k: after[k] - before[k] for k in keys}


def test_a_fresh_output_crosses_without_a_copy(aloop, basic_ext):
    h0 = aloop.run(basic_ext.heap_stats())
    assert h0["installed"] and h0["enabled"], h0
    p0 = aloop.run(basic_ext.pool_stats())
    outs = [aloop.run(basic_ext.make_tensor(N, i)) for i in range(4)]
    h1 = aloop.run(basic_ext.heap_stats())
    p1 = aloop.run(basic_ext.pool_stats())
    for i, t in enumerate(outs):
        assert t.shape == (N,) and float(t[0]) == i and float(t[-1]) == i and float(t.sum()) == float(N) * i
    d = _delta(h1, h0, "takes", "sent", "sent_bytes", "privatized", "copied")
    assert d["takes"] >= 4 and d["sent"] == 4 and d["sent_bytes"] == 4 * 4 * N and d["copied"] == 0, (h0, h1)
    assert d["privatized"] == 4, "each sent block's worker mapping went copy-on-write"
    assert p1["copies"] == p0["copies"], ("no output was copied", p0, p1)


def test_writes_after_return_never_reach_the_host(aloop, basic_ext):
    out = aloop.run(basic_ext.fresh_kept(N, 1))
    assert float(out.sum()) == float(N)
    # The worker writes the tensor it returned (and kept), in place.
    assert aloop.run(basic_ext.write_kept(5)) == 5.0 * N
    assert float(out.sum()) == float(N) and float(out[0]) == 1.0, "the host's result is unchanged"
    # Sent again, it comes as the worker sees it now (a copy of its private pages).
    c0 = aloop.run(basic_ext.heap_stats())["copied"]
    again = aloop.run(basic_ext.resend_kept())
    assert float(again.sum()) == 5.0 * N and float(out.sum()) == float(N)
    assert aloop.run(basic_ext.heap_stats())["copied"] == c0 + 1
    assert aloop.run(basic_ext.drop_fresh())


def test_free_and_reuse_in_the_worker_leave_held_outputs_alone(aloop, basic_ext):
    """The worker frees each output's block and allocates the next while the host still
    holds the earlier ones: a held block is never reused, and a released one is reused."""
    held = []
    for i in range(6):
        held.append(aloop.run(basic_ext.fresh_kept(N, i)))
        assert aloop.run(basic_ext.drop_fresh())  # the worker's last reference: freed
    for i, t in enumerate(held):
        assert float(t.sum()) == float(N) * i, i
    h0 = aloop.run(basic_ext.pool_stats())
    del held, t
    for i in range(6):  # the host let go: the worker's frees find those blocks free again
        out = aloop.run(basic_ext.make_tensor(N, 10 + i))
        assert float(out.sum()) == float(N) * (10 + i)
        del out
    h1 = aloop.run(basic_ext.pool_stats())
    assert h1["hits"] - h0["hits"] >= 4, (h0, h1)


def test_threads_allocating_and_freeing_at_once(aloop, basic_ext):
    h0 = aloop.run(basic_ext.heap_stats())
    outs = aloop.run(basic_ext.threaded_outputs(4, N // 2, 25))
    h1 = aloop.run(basic_ext.heap_stats())
    assert len(outs) == 4
    for i, t in enumerate(outs):
        assert float(t.min()) == float(i) and float(t.max()) == float(i)
    assert h1["takes"] - h0["takes"] >= 4 * 25, (h0, h1)
    assert h1["frees"] - h0["frees"] >= 4 * 25 * 2 - 8, (h0, h1)
    assert aloop.run(basic_ext.double(21)) == 42


@pytest.fixture(scope="module")
def twin_ext(aloop, manager, nc, support_dir):
    """A second worker of the same pack, forked from the same zygote."""

    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="basic_heap_twin", module_path=pack(support_dir, "basic"), share_torch=True, timeout=60))

    ext = aloop.run(load())
    yield ext
    aloop.run(ext.stop())


def test_workers_forked_from_one_zygote_have_their_own_heaps(aloop, basic_ext, twin_ext):
    a0, b0 = aloop.run(basic_ext.heap_stats()), aloop.run(twin_ext.heap_stats())
    a = aloop.run(basic_ext.fresh_kept(N, 1))
    b = aloop.run(twin_ext.fresh_kept(N, 2))
    a1, b1 = aloop.run(basic_ext.heap_stats()), aloop.run(twin_ext.heap_stats())
    assert a1["sent"] == a0["sent"] + 1 and b1["sent"] == b0["sent"] + 1, "each served its own output"
    # Each worker writes its kept tensor, frees it and makes new ones: the other's output stays.
    assert aloop.run(basic_ext.write_kept(7)) == 7.0 * N
    assert aloop.run(twin_ext.drop_fresh())
    more = [aloop.run(twin_ext.make_tensor(N, 9)) for _ in range(3)]
    assert float(a.sum()) == float(N) and float(b.sum()) == 2.0 * N
    assert all(float(m.sum()) == 9.0 * N for m in more)
    assert aloop.run(basic_ext.drop_fresh())


def test_the_threshold_is_a_size_in_the_projects_units(aloop, manager, nc, support_dir):
    # NODECELL_WORKER_HEAP_MIN goes through the one size parser: "128KiB" is 131072 bytes, and a
    # 256 KiB output (under the default 1 MiB) then comes from the heap.
    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="basic_heap_min", module_path=pack(support_dir, "basic"), share_torch=True,
            env={"NODECELL_WORKER_HEAP_MIN": "128KiB"}, timeout=60))

    ext = aloop.run(load())
    try:
        h0 = aloop.run(ext.heap_stats())
        assert h0["installed"] and h0["min_bytes"] == 128 * 1024, h0
        out = aloop.run(ext.make_tensor(64 * 1024, 5))  # 64 Ki float32: 256 KiB
        assert float(out.sum()) == 5.0 * 64 * 1024
        assert aloop.run(ext.heap_stats())["takes"] > h0["takes"]
    finally:
        aloop.run(ext.stop())


def test_switched_off_outputs_are_copied_as_before(aloop, manager, nc, support_dir):
    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="basic_heap_off", module_path=pack(support_dir, "basic"), share_torch=True,
            env={"NODECELL_WORKER_HEAP": "0"}, timeout=60))

    ext = aloop.run(load())
    try:
        h = aloop.run(ext.heap_stats())
        assert not h["installed"] and h["off_reason"] == "NODECELL_WORKER_HEAP=0", h
        p0 = aloop.run(ext.pool_stats())
        out = aloop.run(ext.fresh_kept(N, 3))
        p1 = aloop.run(ext.pool_stats())
        assert p1["copies"] == p0["copies"] + 1 and p1["copied_bytes"] - p0["copied_bytes"] == 4 * N
        assert aloop.run(ext.write_kept(4)) == 4.0 * N
        assert float(out.sum()) == 3.0 * N
        assert aloop.run(ext.heap_stats())["takes"] == 0
    finally:
        aloop.run(ext.stop())


def test_a_worker_without_torch_is_unaffected(aloop, manager, nc, support_dir):
    import numpy as np

    async def load():
        if "np2" in manager.extensions:
            return manager.extensions["np2"]
        return await manager.load_extension(nc.ExtensionConfig.from_manifest(pack(support_dir, "np2")))

    ext = aloop.run(load())
    h = aloop.run(ext.heap_stats())
    assert not h["installed"] and h["takes"] == 0, h
    a = aloop.run(ext.make_array(N, 6))
    assert isinstance(a, np.ndarray) and float(a.sum()) == 6.0 * N


def test_torch_imported_after_the_worker_started(aloop, manager, nc, support_dir):
    """No torch in the zygote: the first output (allocated before torch was seen) is
    copied as before, and the hook goes in when the channel first meets torch."""
    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="basic_heap_late", module_path=pack(support_dir, "basic"), share_torch=True,
            preload=[], timeout=60))

    ext = aloop.run(load())
    try:
        h = aloop.run(ext.heap_stats())
        assert not h["installed"] and h["off_reason"] == "torch is not imported yet", h
        first = aloop.run(ext.make_tensor(N, 1))
        h = aloop.run(ext.heap_stats())
        assert h["installed"] and h["sent"] == 0, h
        second = aloop.run(ext.make_tensor(N, 2))
        assert aloop.run(ext.heap_stats())["sent"] == 1
        assert float(first.sum()) == float(N) and float(second.sum()) == 2.0 * N
    finally:
        aloop.run(ext.stop())


def test_a_process_forked_from_a_worker_frees_and_allocates_safely(aloop, basic_ext):
    child_sum, status, parent_sum = aloop.run(basic_ext.fork_with_heap_blocks(N))
    assert status == 0, f"the forked child died: status {status:#x}"
    assert child_sum == 6.0 * N + 5.0 * N and parent_sum == 3.0 * N
    out = aloop.run(basic_ext.make_tensor(N, 8))  # the worker's heap goes on as before
    assert float(out.sum()) == 8.0 * N


def test_the_heap_stopped_and_resumed_at_run_time(aloop, basic_ext):
    kept = aloop.run(basic_ext.fresh_kept(N, 1))  # a heap block, freed after the switch
    assert aloop.run(basic_ext.heap_switch(False)) is False
    try:
        p0, h0 = aloop.run(basic_ext.pool_stats()), aloop.run(basic_ext.heap_stats())
        out = aloop.run(basic_ext.make_tensor(N, 2))
        p1, h1 = aloop.run(basic_ext.pool_stats()), aloop.run(basic_ext.heap_stats())
        assert not h1["enabled"] and h1["takes"] == h0["takes"] and p1["copies"] == p0["copies"] + 1
        assert aloop.run(basic_ext.drop_fresh())  # the block taken before is still the heap's
        assert aloop.run(basic_ext.heap_stats())["frees"] > h1["frees"]
    finally:
        assert aloop.run(basic_ext.heap_switch(True)) is True
    again = aloop.run(basic_ext.make_tensor(N, 3))
    assert aloop.run(basic_ext.heap_stats())["sent"] > h1["sent"]
    assert float(kept.sum()) == float(N) and float(out.sum()) == 2.0 * N and float(again.sum()) == 3.0 * N


def test_a_frozen_outputs_worker_never_uses_the_heap(aloop, manager, nc, support_dir):
    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="basic_heap_frozen", module_path=pack(support_dir, "basic"), share_torch=True,
            frozen_outputs=True, timeout=60))

    ext = aloop.run(load())
    try:
        h = aloop.run(ext.heap_stats())
        assert not h["installed"] and h["off_reason"] == "the channel takes frozen outputs", h
        out = aloop.run(ext.fresh_kept(N, 5))
        assert aloop.run(ext.scribble_outputs(0)) == 0, "nothing it sent can be mapped writable"
        assert float(out.sum()) == 5.0 * N
    finally:
        aloop.run(ext.stop())


def test_outputs_of_calls_in_flight_stay_apart(aloop, basic_ext):
    """Eight async calls in flight, each making and returning its own fresh tensor while the
    others run: every output holds its own value (no block handed to two tensors)."""
    import asyncio

    async def run():
        return await asyncio.gather(*(basic_ext.fresh_async(N, i) for i in range(8)))

    for _ in range(3):
        outs = aloop.run(run())
        for i, t in enumerate(outs):
            assert float(t.min()) == float(i) and float(t.max()) == float(i), i
        del outs


def test_freed_heap_blocks_stay_within_the_pool_limit(aloop, manager, nc, support_dir):
    """Blocks of many sizes freed in the worker: the pool keeps at most its limit of free
    arenas (least recently used dropped), so the worker's idle memory stays bounded."""
    limit = 32 << 20

    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="basic_heap_bounded", module_path=pack(support_dir, "basic"), share_torch=True,
            env={"NODECELL_TENSOR_POOL": str(limit)}, timeout=60))

    ext = aloop.run(load())
    try:
        sizes = [(1 << 20) + k * (1 << 18) for k in range(24)]  # 4-28 MiB, each its own size class
        h0 = aloop.run(ext.heap_stats())
        assert aloop.run(ext.churn(sizes)) == float(len(sizes))
        h1, p = aloop.run(ext.heap_stats()), aloop.run(ext.pool_stats())
        assert h1["takes"] - h0["takes"] == len(sizes) and h1["live_blocks"] == 0, h1
        assert p["limit"] == limit and p["free_bytes"] <= limit and p["dropped"] > 0, p
    finally:
        aloop.run(ext.stop())


@pytest.fixture(scope="module")
def np_torch_ext(aloop, manager, nc, support_dir):
    """A worker with numpy (its own venv) and the host's torch."""

    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="heap_np_torch", module_path=pack(support_dir, "np2"), share_torch=True,
            dependencies=["numpy>=2,<3"], timeout=60))

    ext = aloop.run(load())
    yield ext
    aloop.run(ext.stop())


def test_numpy_outputs_come_from_the_heap_too(aloop, np_torch_ext):
    """numpy's allocation policy is the heap (NumPy >= 1.22, every serving thread): a
    fresh array crosses without a copy, plain and `async def` methods alike, ten times in
    a row (calls are served on more than one thread); writes after returning stay in the
    worker; an array grown in place (numpy's realloc) stays right."""
    import numpy as np

    ext = np_torch_ext
    assert float(aloop.run(ext.make_tensor(N, 1)).sum()) == float(N)  # torch seen
    h0, p0 = aloop.run(ext.heap_stats()), aloop.run(ext.pool_stats())
    assert h0["numpy"], h0
    for i in range(5):
        a = aloop.run(ext.make_array(N, 6 + i))
        b = aloop.run(ext.make_array_async(N, 7 + i))
        assert isinstance(a, np.ndarray) and float(a.sum()) == (6.0 + i) * N and float(b.sum()) == (7.0 + i) * N
    h1, p1 = aloop.run(ext.heap_stats()), aloop.run(ext.pool_stats())
    assert h1["sent"] - h0["sent"] == 10 and p1["copies"] == p0["copies"], (h0, h1, p0, p1)
    kept = aloop.run(ext.array_kept(N, 1))
    assert aloop.run(ext.write_array_kept(9)) == 9.0 * N
    assert float(kept.sum()) == float(N), "the host's array is unchanged"
    g = aloop.run(ext.grow_array(N, 4))
    assert g.shape == (2 * N,) and float(g.min()) == 4.0 and float(g.max()) == 4.0
