"""CUDA tensors across the sandbox (share_cuda_ipc): fd-exported allocations, zero-copy.

The end-to-end tests need a CUDA device and are reported as skipped ("not run")
without one; the refusal tests run everywhere.
"""
from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")

from conftest import pack, rss_mb  # noqa: E402

HAVE_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device here: not run")
MiB = 1 << 20


class _FakeDevice:
    type = "cuda"
    index = 0

    def __str__(self) -> str:
        return "cuda:0"


class _FakeCudaTensor:
    """Stands in for a CUDA tensor where there is no device: the refusals look only at
    the device and the channel, before any CUDA work."""

    device = _FakeDevice()


def _ext(aloop, manager, nc, support_dir, name, **cfg):
    async def load():
        if name in manager.extensions:
            return manager.extensions[name]
        return await manager.load_extension(nc.ExtensionConfig(
            name=name, module_path=pack(support_dir, "basic"), share_torch=True, timeout=120, **cfg))

    return aloop.run(load())


@pytest.fixture(scope="module")
def gpu_ext(aloop, manager, nc, support_dir):
    """The basic pack as a gpu pack that shares CUDA memory."""
    return _ext(aloop, manager, nc, support_dir, "basic-cuda", gpu=True, share_cuda_ipc=True)


# -- everywhere ----------------------------------------------------------------------------

def test_refusal_without_share_cuda_ipc_is_clear(nc):
    from nodecell import _cuda, _nodecell

    ch = _nodecell.Channel.create()
    assert not ch.cuda
    with pytest.raises(TypeError, match=r"share_cuda_ipc=True.*\.cpu\(\)"):
        _cuda.encode_cuda(_FakeCudaTensor(), ch)
    ch.close()


@pytest.mark.skipif(HAVE_CUDA, reason="a CUDA device is present: the no-device refusal is not reachable")
def test_refusal_without_a_device_is_clear(nc):
    from nodecell import _cuda, _nodecell

    assert _cuda.cuda_available() is False
    reason = _cuda.cuda_unavailable_reason()
    assert reason, "the reason CUDA is unusable is reported"
    ch = _nodecell.Channel.create(cuda=True)
    assert ch.cuda and _nodecell.cuda_channel(ch.id)
    with pytest.raises(TypeError, match="cannot export CUDA memory") as e:
        _cuda.encode_cuda(_FakeCudaTensor(), ch)
    assert reason in str(e.value) and ".cpu()" in str(e.value)
    with pytest.raises(RuntimeError, match="CUDA buffer"):
        _nodecell.CudaBuffer(MiB, 0)
    ch.close()
    assert not _nodecell.cuda_channel(ch.id)


def test_channel_cuda_flag_reaches_the_worker_end(nc):
    import os

    from nodecell import _nodecell

    for flag in (False, True):
        host = _nodecell.Channel.create(cuda=flag)
        ring, sock = host.peer_fds()
        worker = _nodecell.Channel.open(ring, sock)
        os.close(ring)
        os.close(sock)
        assert (host.cuda, worker.cuda) == (flag, flag)
        assert _nodecell.cuda_channel(worker.id) is flag
        worker.close()
        host.close()


# -- with a CUDA device --------------------------------------------------------------------

@needs_cuda
def test_cuda_tensor_without_sharing_is_refused_clearly(aloop, basic_ext):
    t = torch.ones(4, device="cuda")
    with pytest.raises(TypeError, match="share_cuda_ipc"):
        aloop.run(basic_ext.echo(t))
    assert aloop.run(basic_ext.echo(1)) == 1


@needs_cuda
def test_cuda_echo_is_zero_copy_and_repoints(aloop, gpu_ext, nc):
    t = torch.arange(MiB, dtype=torch.float32, device="cuda")  # 4 MiB, private
    p0 = t.data_ptr()
    back = aloop.run(gpu_ext.echo(t))
    assert back.is_cuda and back.device == t.device
    assert t.data_ptr() != p0, "the first send copies into an exportable allocation and re-points"
    assert back.data_ptr() == t.data_ptr(), "our own allocation echoed back is the same memory"
    assert torch.equal(back, torch.arange(MiB, dtype=torch.float32, device="cuda"))
    p1 = t.data_ptr()
    again = aloop.run(gpu_ext.echo(t))
    assert t.data_ptr() == p1 and again.data_ptr() == p1, "the next send is free"
    info = aloop.run(gpu_ext.tensor_info(t))
    assert info["sum"] == float(torch.arange(MiB, dtype=torch.float64).sum())
    # A strided view of the shared storage crosses as is.
    view = t.reshape(1024, 1024)[3:900:2, 7:1000:3]
    out = aloop.run(gpu_ext.echo(view))
    assert out.data_ptr() == view.data_ptr() and list(out.stride()) == list(view.stride())
    assert torch.equal(out, view)


@needs_cuda
def test_worker_writes_reach_the_host_and_back(aloop, gpu_ext):
    t = torch.zeros(MiB, device="cuda")
    assert aloop.run(gpu_ext.fill(t, 3.0)) is True
    assert torch.all(t == 3.0), "CUDA memory is shared read-write: the worker's fill is visible"
    t.fill_(5.0)
    assert aloop.run(gpu_ext.tensor_info(t))["sum"] == 5.0 * MiB, "the host's later writes reach the worker"
    assert aloop.run(gpu_ext.scale_inplace(t, 2.0)) == 10.0 * MiB
    assert torch.all(t == 10.0)


@needs_cuda
def test_worker_made_cuda_tensor_crosses(aloop, gpu_ext, nc):
    from nodecell import _nodecell

    x = torch.ones(MiB, device="cuda")
    y = aloop.run(gpu_ext.double(x))  # a new tensor made in the worker
    assert y.is_cuda and torch.all(y == 2.0)
    loc = _nodecell.cuda_locate(y.data_ptr(), 4)
    assert loc is not None and isinstance(loc[0], _nodecell.CudaView), "mapped from the worker's allocation"
    z = aloop.run(gpu_ext.echo(y))
    assert z.data_ptr() == y.data_ptr(), "the worker's allocation comes back as the same mapping"


@needs_cuda
def test_host_memory_does_not_grow_by_the_tensor_size(aloop, gpu_ext):
    aloop.run(gpu_ext.echo(torch.ones(MiB, device="cuda")))  # CUDA contexts are up on both sides
    w0 = aloop.run(gpu_ext.rss_mb())
    big = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
    big[:16] = 7
    gc.collect()
    before = rss_mb()
    for _ in range(3):
        out = aloop.run(gpu_ext.echo(big))
        assert out.data_ptr() == big.data_ptr()
        del out
    gc.collect()
    grew = rss_mb() - before
    assert grew < 64, f"host RSS grew {grew} MiB sending a 256 MiB CUDA tensor"
    wgrew = aloop.run(gpu_ext.rss_mb()) - w0
    assert wgrew < 64, f"worker RSS grew {wgrew} MiB receiving a 256 MiB CUDA tensor"


@needs_cuda
def test_shared_cuda_memory_is_freed_when_released(aloop, gpu_ext):
    torch.cuda.synchronize()
    free0 = torch.cuda.mem_get_info()[0]
    t = torch.ones(512 * MiB, dtype=torch.uint8, device="cuda")
    aloop.run(gpu_ext.tensor_info(t))  # exported, imported by the worker, released
    del t
    gc.collect()
    torch.cuda.empty_cache()
    for _ in range(3):  # releases and retirements ride on the next frames
        aloop.run(gpu_ext.noop())
    torch.cuda.synchronize()
    free1 = torch.cuda.mem_get_info()[0]
    assert free0 - free1 < 64 * MiB, f"{(free0 - free1) // MiB} MiB of device memory still held"


@needs_cuda
def test_cuda_tensor_where_it_cannot_be_mapped_fails_that_call_only(aloop, manager, nc, support_dir):
    # share_cuda_ipc without gpu: the worker's sandbox has no NVIDIA devices.
    ext = _ext(aloop, manager, nc, support_dir, "basic-cuda-nogpu", share_cuda_ipc=True)
    t = torch.ones(1024, device="cuda")
    with pytest.raises(nc.RemoteError, match="CUDA tensor arrived"):
        aloop.run(ext.echo(t))
    assert aloop.run(ext.echo(41)) == 41, "the channel is not poisoned"
    cpu = torch.arange(1 << 16, dtype=torch.float32)
    assert torch.equal(aloop.run(ext.echo(cpu)), cpu)
