"""numpy arrays and torch tensors cross without copies; inputs are read-only or copy-on-write."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import pack, rss_mb  # noqa: E402


@pytest.fixture(scope="module")
def np_ext(aloop, manager, nc, support_dir):
    """A worker with numpy 2.x (and no torch)."""

    async def load():
        if "np2" in manager.extensions:
            return manager.extensions["np2"]
        return await manager.load_extension(nc.ExtensionConfig.from_manifest(pack(support_dir, "np2")))

    return aloop.run(load())


def test_private_tensor_is_repointed_then_free(aloop, basic_ext, nc):
    t = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB, private
    assert not nc.is_shared(t)
    p0 = t.data_ptr()
    back = aloop.run(basic_ext.echo(t))
    assert nc.is_shared(t) and t.data_ptr() != p0, "the first send copies into an arena and re-points"
    assert back.data_ptr() == t.data_ptr(), "echoing our own arena back gives the same memory"
    assert torch.equal(back, torch.arange(1 << 20, dtype=torch.float32))
    # The worker saw the same contents.
    info = aloop.run(basic_ext.tensor_info(t))
    assert info["sum"] == float(torch.arange(1 << 20, dtype=torch.float64).sum())


def test_views_and_strides_cross(aloop, basic_ext):
    base = torch.arange(1024 * 1024, dtype=torch.float64).reshape(1024, 1024)
    aloop.run(basic_ext.echo(base))  # re-pointed into an arena
    view = base[10:900:3, 5:1000:7]  # a non-contiguous view of the shared storage
    out = aloop.run(basic_ext.echo(view))
    assert out.data_ptr() == view.data_ptr(), "a view of a shared tensor crosses without a copy"
    assert torch.equal(out, view)
    assert list(out.stride()) == list(view.stride())
    t = base.t()
    assert torch.equal(aloop.run(basic_ext.echo(t)), t)


def test_big_tensor_zero_copy_rss(aloop, basic_ext, nc):
    big = nc.empty((128, 1024, 1024), "float32")  # 512 MiB directly in an arena
    big[0, 0, :4] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    gc.collect()
    before = rss_mb()
    for _ in range(5):
        out = aloop.run(basic_ext.echo(big))
        assert out.data_ptr() == big.data_ptr()
    info = aloop.run(basic_ext.tensor_info(big[0, 0, :4]))
    assert info["sum"] == 10.0
    grown = rss_mb() - before
    assert grown < 64, f"host RSS grew by {grown} MiB while echoing a 512 MiB tensor"


def test_inputs_are_copy_on_write(aloop, basic_ext):
    t = torch.ones(1 << 18)  # 1 MiB
    total = aloop.run(basic_ext.scale_inplace(t, 3.0))
    assert total == 3.0 * (1 << 18), "the worker sees its own writes"
    assert float(t.sum()) == float(1 << 18), "the host tensor is unchanged"


def test_copy_on_write_does_not_leak_into_the_next_call(aloop, basic_ext):
    """The worker reuses its mapping of a host arena between calls: its private writes
    from one call must be gone in the next (it sees the host's data again)."""
    t = torch.ones(1 << 18)
    for _ in range(3):
        assert aloop.run(basic_ext.scale_inplace(t, 3.0)) == 3.0 * (1 << 18)
    t.mul_(2)  # the host changes its tensor: the worker sees the new values
    assert aloop.run(basic_ext.scale_inplace(t, 3.0)) == 6.0 * (1 << 18)
    assert float(t.sum()) == 2.0 * (1 << 18)


def test_numpy_inputs_are_read_only(aloop, np_ext):
    a = np.zeros(1 << 17)  # 1 MiB
    res = aloop.run(np_ext.numpy_write(a))
    assert res.startswith("refused"), res
    assert a[0] == 0


def test_numpy_to_a_torch_only_worker_is_copy_on_write(aloop, basic_ext):
    a = np.zeros(1 << 17)  # arrives as a torch tensor there (no numpy in that venv)
    assert aloop.run(basic_ext.fill(a, 5.0)) is True
    assert a[0] == 0


def test_output_buffer_is_writable_by_the_worker(aloop, basic_ext, nc):
    out = nc.empty((1 << 18,), "float32", shared_writable=True)
    out.zero_()
    assert aloop.run(basic_ext.fill(out, 7.0)) is True
    assert float(out[0]) == 7.0 and float(out[-1]) == 7.0


def test_worker_made_tensors_come_back(aloop, basic_ext):
    t = aloop.run(basic_ext.make_tensor(1 << 20, 3))
    assert t.shape == (1 << 20,) and float(t[0]) == 3.0 and float(t.sum()) == 3.0 * (1 << 20)
    t.add_(1)  # copy-on-write locally: allowed
    assert float(t[0]) == 4.0
    small = aloop.run(basic_ext.make_tensor(4, 2))
    assert small.tolist() == [2.0, 2.0, 2.0, 2.0]


def test_numpy_round_trip_and_dtypes(aloop, np_ext, basic_ext):
    for dt in ("float32", "float64", "int8", "uint16", "int64", "bool", "complex64"):
        a = (np.arange(1 << 16) % 2).astype(dt)
        b = aloop.run(np_ext.echo(a))
        assert b.dtype == a.dtype and np.array_equal(a, b), dt
    bf = torch.randn(1 << 16).to(torch.bfloat16)
    assert torch.equal(aloop.run(basic_ext.echo(bf)), bf)


def test_dict_of_tensors_latent(aloop, basic_ext):
    latent = {"samples": torch.randn(1, 4, 64, 64), "batch_index": [0]}
    out = aloop.run(basic_ext.echo(latent))
    assert torch.equal(out["samples"], latent["samples"]) and out["batch_index"] == [0]


def test_arenas_are_released(aloop, basic_ext, nc):
    """Storage is freed by reference counts: no memfds pile up in the host."""

    def memfds():
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if "nodecell-arena" in os.readlink(f"/proc/self/fd/{fd}"):
                    n += 1
            except OSError:
                pass
        return n

    gc.collect()
    start = memfds()
    for _ in range(20):
        t = torch.randn(1 << 18)
        aloop.run(basic_ext.tensor_info(t))
        del t
    # Releases ride on the worker's next frames; give them a few round trips.
    for _ in range(50):
        gc.collect()
        aloop.run(basic_ext.noop())
        if memfds() - start <= 2:
            break
    assert memfds() - start <= 2, f"{memfds() - start} arena fds left open"


# -- pooled arenas, in-place changes, float8, the inline record (issues 10 and 13) ----------

@pytest.fixture(scope="module")
def other_ext(aloop, manager, nc, support_dir):
    """A second torch worker (another channel), to forward tensors to."""

    async def load():
        if "basic_b" in manager.extensions:
            return manager.extensions["basic_b"]
        return await manager.load_extension(nc.ExtensionConfig(
            name="basic_b", module_path=pack(support_dir, "basic"), share_torch=True, timeout=60))

    return aloop.run(load())


def test_an_input_changed_in_place_comes_back_changed(aloop, basic_ext):
    """A node that scales its input in place and returns it: the host gets the scaled
    tensor (the worker's copy-on-write pages), and its own tensor is untouched."""
    t = torch.ones(1 << 18)  # 1 MiB: an arena, not inline
    back = aloop.run(basic_ext.inplace_return(t, 3.0))
    assert float(back[0]) == 3.0 and float(back.sum()) == 3.0 * (1 << 18)
    assert float(t.sum()) == float(1 << 18), "the host's tensor stays as it was"
    # Unchanged inputs still come back as the host's own memory.
    assert aloop.run(basic_ext.echo(t)).data_ptr() == t.data_ptr()


def test_an_output_changed_by_the_host_goes_back_changed(aloop, basic_ext):
    out = aloop.run(basic_ext.make_tensor(1 << 18, 2))
    out[:10] = 7.0  # copy-on-write here
    info = aloop.run(basic_ext.tensor_info(out))
    assert info["sum"] == 2.0 * ((1 << 18) - 10) + 70.0
    # Unchanged, the worker's own pooled arena goes back without a copy.
    out2 = aloop.run(basic_ext.make_tensor(1 << 18, 5))
    assert aloop.run(basic_ext.tensor_info(out2))["sum"] == 5.0 * (1 << 18)
    assert torch.equal(aloop.run(basic_ext.echo(out2)), out2)


def test_worker_outputs_reuse_pooled_arenas(aloop, basic_ext):
    """Fresh outputs every call: after the first calls the worker copies into arenas the
    host already maps (pool hits), and no memfds pile up in the host."""
    def memfds():
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += "nodecell-arena" in os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        return n

    for _ in range(3):
        del _  # warm up
        aloop.run(basic_ext.make_tensor(36864, 1))
    before = aloop.run(basic_ext.pool_stats())
    fds0 = memfds()
    for i in range(20):
        t = aloop.run(basic_ext.make_tensor(36864, i))  # 147 KB, an IMAGE-sized output
        assert float(t[0]) == float(i) and float(t[-1]) == float(i)
        del t
    after = aloop.run(basic_ext.pool_stats())
    assert after["hits"] - before["hits"] >= 18, (before, after)
    assert after["misses"] - before["misses"] <= 2, (before, after)
    assert memfds() - fds0 <= 2, "no new arena fd per output"


def test_fresh_outputs_of_one_result_get_their_own_arenas(aloop, basic_ext):
    """A node returning a mask and its inverse: both fresh outputs of one reply, the same
    size. With the pool warm (a free arena of that size), each still gets its own arena:
    the first is not free again before the reply is sent (KJNodes' CreateMagicMask came
    back as two inverses)."""
    shape = (1, 128, 160)  # 80 KB each: pooled, not inline
    for i in range(3):  # warm the pool: free arenas of this size class
        aloop.run(basic_ext.make_tensor(128 * 160, i))
    for seed in range(3):
        a, b = aloop.run(basic_ext.make_pair(list(shape), seed))
        m = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, m) and torch.equal(b, 1.0 - m), (seed, float(a.flatten()[0]), float(m.flatten()[0]))
        assert a.data_ptr() != b.data_ptr()
        del a, b


def test_a_worker_rewriting_its_sent_outputs_cannot_reach_forwarded_copies(aloop, basic_ext, other_ext):
    """What SECURITY.md promises for pooled outputs: a worker can still change an output
    it sent until the host releases it (pages the host did not write), but a tensor the
    host forwards to another pack is a copy made then, and the host stays up."""
    out = aloop.run(basic_ext.make_tensor(1 << 18, 4))
    kept = aloop.run(basic_ext.make_tensor(1 << 18, 4))
    assert float(out.sum()) == 4.0 * (1 << 18)
    # Sent to another pack: copied into a host arena for it (and `out` re-pointed there).
    forwarded = aloop.run(other_ext.echo(out))
    assert aloop.run(basic_ext.scribble_outputs(0)) >= 1
    assert float(kept.abs().sum()) == 0.0, "the worker's later writes show through (documented)"
    assert float(out.sum()) == 4.0 * (1 << 18), "a forwarded tensor is the host's own copy"
    assert float(forwarded.sum()) == 4.0 * (1 << 18), "the other pack's copy did not change"
    assert aloop.run(other_ext.tensor_info(forwarded))["sum"] == 4.0 * (1 << 18)
    assert aloop.run(basic_ext.double(21)) == 42


def test_frozen_outputs_stay_immutable(aloop, manager, nc, support_dir):
    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="basic_frozen", module_path=pack(support_dir, "basic"), share_torch=True,
            frozen_outputs=True, timeout=60))

    ext = aloop.run(load())
    out = aloop.run(ext.make_tensor(1 << 18, 4))
    assert aloop.run(ext.scribble_outputs(0)) == 0, "nothing it sent can be mapped writable"
    assert float(out.sum()) == 4.0 * (1 << 18)
    t = torch.ones(1 << 18)
    assert float(aloop.run(ext.inplace_return(t, 2.0)).sum()) == 2.0 * (1 << 18)
    aloop.run(ext.stop())


def test_held_tensors_grow_the_pool_and_it_stays_bounded(aloop, basic_ext, nc):
    """A worker that keeps every input it gets (the host cannot reuse those arenas) and
    outputs the host keeps: both pools grow, everything stays correct, and once let go
    the free arenas above the limit are dropped."""
    nc.set_tensor_pool(8 << 20)
    try:
        ins = [np.full(1 << 18, i, dtype=np.float32) for i in range(12)]  # 1 MiB each
        for a in ins:
            aloop.run(basic_ext.keep(a))
        outs = [aloop.run(basic_ext.make_tensor(1 << 18, i)) for i in range(12)]
        for i, o in enumerate(outs):
            assert float(o[0]) == float(i)
        assert aloop.run(basic_ext.drop_kept())
        del outs
        gc.collect()
        for _ in range(3):
            aloop.run(basic_ext.make_tensor(1 << 18, 0))  # releases ride on these calls
        nc.tensor_pool_stats()
        aloop.run(basic_ext.tensor_info(np.ones(1 << 18, dtype=np.float32)))
        s = nc.tensor_pool_stats()
        assert s["free_bytes"] <= 8 << 20, s
    finally:
        nc.set_tensor_pool(512 << 20)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_tensors_cross(aloop, basic_ext, dtype):
    dt = getattr(torch, dtype)
    for n in (16, 1 << 17):  # inline and in an arena
        t = torch.linspace(-2, 2, n).to(dt)
        back = aloop.run(basic_ext.echo(t))
        assert back.dtype == dt and torch.equal(back.view(torch.uint8), t.view(torch.uint8))
        made = aloop.run(basic_ext.make_typed(n, dtype))
        assert made.dtype == dt and torch.equal(made.view(torch.uint8), t.view(torch.uint8))


def test_float8_to_a_numpy_only_worker_fails_that_call_clearly(aloop, np_ext):
    t = torch.zeros(1 << 17, dtype=torch.float8_e4m3fn)
    with pytest.raises(Exception, match="float8_e4m3fn.*numpy"):
        aloop.run(np_ext.echo(t))
    assert aloop.run(np_ext.echo(3)) == 3


def test_the_dtype_table_is_rusts(nc):
    from nodecell import _nodecell, _tensors

    rows = _nodecell.dtypes()
    assert len(rows) == 17 and {"float8_e4m3fn", "float8_e5m2", "bfloat16"} <= {r[0] for r in rows}
    assert [r[1] for r in rows] == list(range(17)), "codes are the wire's"
    for name, code, size, np_name, torch_name in rows:
        assert _tensors.DTYPES[name] == (code, size, np_name)
        assert getattr(torch, torch_name).itemsize == size, name
        if np_name is not None:
            assert np.dtype(np_name).itemsize == size, name


@pytest.mark.parametrize("how", ["short", "dtype", "shape", "huge"])
def test_a_lying_inline_record_fails_that_call_only(aloop, basic_ext, how):
    with pytest.raises(Exception, match="nodecell.ndarray"):
        aloop.run(basic_ext.bad_ndarray(how))
    assert aloop.run(basic_ext.double(4)) == 8


def test_inline_records_are_checked_when_built(nc):
    from nodecell import _nodecell

    a = np.arange(4, dtype=np.float32)
    r = _nodecell.inline_tensor("numpy", "float32", [4], a.__array_interface__["data"][0], 16)
    assert r.name == "nodecell.ndarray" and r.fields["data"] == a.tobytes()
    with pytest.raises(ValueError, match="do not hold"):
        _nodecell.inline_tensor("numpy", "float32", [5], a.__array_interface__["data"][0], 16)
    with pytest.raises(ValueError, match="unknown dtype"):
        _nodecell.inline_tensor("numpy", "float128", [4], a.__array_interface__["data"][0], 16)


# -- host sends of private arrays and tensors: pooled, reused, freed off the call path (issue 10) --

def _arena_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "nodecell-arena" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return n


def test_host_sends_of_a_private_array_reuse_pooled_arenas(aloop, np_ext, nc):
    """A plain numpy array sent every call is copied into a pooled host arena: after the
    first calls no new arena (memfd) is made; the result is never the caller's memory."""
    a = np.random.default_rng(0).random(1 << 18, dtype=np.float32)  # 1 MiB, private
    for _ in range(3):
        aloop.run(np_ext.echo(a))
    before, fds0 = nc.tensor_pool_stats(), _arena_fds()
    for i in range(12):
        a[0] = i
        r = aloop.run(np_ext.echo(a))
        assert r[0] == i and np.array_equal(r, a)
        assert not np.shares_memory(r, a), "the caller's array is never handed out"
        del r
    after = nc.tensor_pool_stats()
    assert after["hits"] - before["hits"] >= 11, (before, after)
    assert after["misses"] - before["misses"] <= 1, (before, after)
    assert _arena_fds() - fds0 <= 1, "no new memfd per call"


def test_numpy_outputs_of_a_worker_reuse_its_pooled_arenas(aloop, np_ext):
    """Fresh numpy outputs (a numpy-only worker) go through the worker's pool like torch
    outputs: one copy into an arena the host already maps, no new memfd per call."""
    for i in range(3):
        aloop.run(np_ext.make_array(1 << 18, i))
    before, fds0 = aloop.run(np_ext.pool_stats()), _arena_fds()
    for i in range(12):
        a = aloop.run(np_ext.make_array(1 << 18, i))  # 1 MiB
        assert isinstance(a, np.ndarray) and a[0] == i and a[-1] == i
        del a
    after = aloop.run(np_ext.pool_stats())
    assert after["hits"] - before["hits"] >= 11, (before, after)
    assert after["misses"] - before["misses"] <= 1, (before, after)
    assert _arena_fds() - fds0 <= 1, "no new memfd per output"


def test_live_results_never_share_a_reused_arena(aloop, np_ext, basic_ext):
    """Results the host still holds keep their bytes while later sends of the same size
    run: an arena is reused only once neither side holds a view of it."""
    a = np.empty(1 << 18, dtype=np.float32)
    held = []
    for i in range(6):
        a.fill(i)
        held.append(aloop.run(np_ext.echo(a)))
    t = torch.empty(1 << 18)
    held_t = []
    for i in range(6):  # torch outputs of the worker's pool, same size class
        held_t.append(aloop.run(basic_ext.make_tensor(1 << 18, i)))
    for i in range(20):  # churn: arenas freed meanwhile are reused
        a.fill(100 + i)
        assert float(aloop.run(np_ext.echo(a))[7]) == 100 + i
        t.fill_(200 + i)
        assert float(aloop.run(basic_ext.echo(t.clone()))[7]) == 200 + i
        aloop.run(basic_ext.make_tensor(1 << 18, 300 + i))
    for i, r in enumerate(held):
        assert r.min() == r.max() == i, f"held result {i} changed under the host"
    for i, r in enumerate(held_t):
        assert float(r.min()) == float(r.max()) == i, f"held worker output {i} changed"
    ptrs = {r.__array_interface__["data"][0] for r in held} | {r.data_ptr() for r in held_t}
    assert len(ptrs) == 12, "two live results alias one arena"


def test_a_repointed_tensor_frees_its_private_storage_off_the_call(aloop, basic_ext, nc):
    """The first send of a fresh private tensor copies it into a pooled arena and
    re-points it; its old 64 MiB storage is unmapped afterwards by the nodecell-free
    thread (once no other send queued a storage for a moment, not during the call), and
    the tensor keeps its values."""
    n = 16 << 20  # 64 MiB of float32: above glibc's mmap threshold, so freeing unmaps it
    t = torch.full((n,), 3.0)
    p0 = t.data_ptr()

    def mapping_of(addr):
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= addr < hi:
                    return lo, hi
        return None

    old = mapping_of(p0)
    assert old is not None
    back = aloop.run(basic_ext.echo(t))
    assert nc.is_shared(t) and t.data_ptr() != p0
    assert back.data_ptr() == t.data_ptr() and float(back[-1]) == 3.0 and float(t.sum()) == 3.0 * n
    def freed(addr, was):  # the free runs on another thread, after a quiet moment
        deadline = time.monotonic() + 10
        while mapping_of(addr) == was and time.monotonic() < deadline:
            aloop.run(basic_ext.noop())
            time.sleep(0.005)
        return mapping_of(addr) != was

    assert freed(p0, old), "the replaced private storage was never freed"
    assert [th.name for th in __import__("threading").enumerate()].count("nodecell-free") == 1
    # The same under inference mode (ComfyUI runs nodes in it): the tensor made outside
    # it is re-pointed, its old storage freed, nothing raised.
    u = torch.full((n,), 4.0)
    q0 = u.data_ptr()
    old_u = mapping_of(q0)
    with torch.inference_mode():
        assert float(aloop.run(basic_ext.echo(u))[-1]) == 4.0
    assert nc.is_shared(u) and float(u[0]) == 4.0
    assert freed(q0, old_u), "the replaced private storage was never freed"
    # A tensor whose storage another view shares is not re-pointed (nothing to free).
    base = torch.full((1 << 20,), 2.0)
    view, other = base[10:], base[:5]
    assert float(aloop.run(basic_ext.echo(view)).sum()) == 2.0 * ((1 << 20) - 10)
    assert not nc.is_shared(base) and not nc.is_shared(other) and float(view.sum()) == 2.0 * ((1 << 20) - 10)


def _mapping_of(addr):
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return lo, hi
    return None


def test_with_a_full_free_backlog_the_old_storage_is_freed_inline(aloop, basic_ext, nc, monkeypatch):
    """The idle-priority freer takes at most FREE_BACKLOG bytes; beyond that the send that
    replaced a private storage frees it itself, before the call returns."""
    from nodecell import _tensors

    monkeypatch.setattr(_tensors, "FREE_BACKLOG", 0)
    t = torch.full((16 << 20,), 5.0)  # 64 MiB: freeing it unmaps it
    p0 = t.data_ptr()
    old = _mapping_of(p0)
    assert old is not None
    assert float(aloop.run(basic_ext.echo(t))[-1]) == 5.0
    assert nc.is_shared(t) and _mapping_of(p0) != old, "not freed by the send itself"


_FREER_AT_EXIT = """
import atexit, threading, torch
from nodecell import _tensors

def check():  # registered first, so it runs after the handlers registered later
    alive = [t.name for t in threading.enumerate() if t.name == "nodecell-free" and t.is_alive()]
    print("alive", alive, flush=True)

atexit.register(check)
holder = torch.empty(0).set_(torch.empty(1 << 20).untyped_storage())
assert _tensors._free_later(holder, 4 << 20)
del holder
"""


def test_the_free_thread_ends_before_the_interpreter_finalizes():
    """The nodecell-free thread is done before finalization: left inside ``Tensor.set_``
    then, taking the GIL back ended it with pthread_exit, whose unwinding through torch's
    noexcept frames aborted the process (this file's neighbour test_tensor_fastpath.py run
    alone exited with SIGABRT about every other time)."""
    r = subprocess.run([sys.executable, "-c", _FREER_AT_EXIT], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "alive []" in r.stdout, r.stdout
