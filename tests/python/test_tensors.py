"""numpy arrays and torch tensors cross without copies; inputs are read-only or copy-on-write."""
from __future__ import annotations

import gc
import os

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
