"""CUDA tensors across the sandbox: these run only where a CUDA device exists."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: not run")


def test_cuda_tensor_without_sharing_is_refused_clearly(aloop, basic_ext):
    if not torch.cuda.is_available():
        # Build a fake "cuda" check through the encoder's message path instead.
        from nodecell import _cuda

        class FakeCuda:
            device = "cuda:0"

        with pytest.raises(TypeError, match="cannot cross"):
            _cuda.encode_cuda(FakeCuda())
        return
    t = torch.ones(4, device="cuda")
    with pytest.raises(TypeError, match="cannot cross"):
        aloop.run(basic_ext.echo(t))


@needs_cuda
def test_cuda_device_visible_only_with_gpu_true(aloop):
    pytest.skip("zero-copy CUDA sharing needs share_cuda_ipc on a gpu pack: not implemented in this build")
