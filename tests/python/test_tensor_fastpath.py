"""torch tensors already in shared memory are recognised in Rust: sent and received
without the Python hooks (``_tensors.encode_torch`` / ``decode_tensor``), on a real
channel pair (rings in a memfd, both ends in this process)."""
from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")

MiB = 1 << 20


@pytest.fixture
def pair(nc):
    """(host channel, worker channel, calls) with the real endpoints' hooks, each
    counting how often the Python encode and tensor hooks run."""
    from nodecell import _nodecell, _rpc, _tensors

    h = _nodecell.Channel.create()
    w = _nodecell.Channel.open(*h.peer_fds())
    calls = {"encode": 0, "decode": 0}
    eps = []
    for ch, peer in ((h, "worker"), (w, "host")):
        ep = _rpc.Endpoint(ch, peer)
        eps.append(ep)

        def encode(obj, ep=ep):
            calls["encode"] += 1
            return ep.encode_hook(obj)

        def decode(src, kind, writable):
            calls["decode"] += 1
            return _tensors.decode_tensor(src, kind, writable)

        ch.set_hooks(encode, decode, ep.decode_handle, ep.decode_record, ep.decode_error)
    yield h, w, calls
    for ch in (w, h):
        ch.close()


def _send(src, dst, value):
    from nodecell import _rpc

    assert src.send(_rpc.REPLY, 1, value)
    kind, _cid, payload = dst.try_recv()
    assert kind == _rpc.REPLY
    return payload


def test_an_arena_tensor_crosses_and_comes_back_without_the_python_hooks(pair, nc):
    h, w, calls = pair
    x = nc.empty([MiB // 4], "float32")
    x.copy_(torch.arange(MiB // 4, dtype=torch.float32))
    y = _send(h, w, x)
    assert type(y) is torch.Tensor and torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    back = _send(w, h, y)
    assert back.data_ptr() == x.data_ptr(), "the host's own arena comes back as the same memory"
    assert back.shape == x.shape and back.stride() == x.stride() and back.dtype == x.dtype
    assert calls == {"encode": 0, "decode": 0}, calls
    # Views and strides keep their layout on the fast path too.
    v = x.view(512, 512)[:, 1::2]
    got = _send(h, w, v)
    assert got.stride() == v.stride() and torch.equal(got, v)
    assert calls == {"encode": 0, "decode": 0}, calls


def test_a_tensor_received_twice_from_one_arena_slot_shares_its_mapping(pair, nc):
    h, w, calls = pair
    x = nc.empty([MiB // 4], "float32").fill_(2.0)
    first = _send(h, w, x)
    p = first.data_ptr()
    # Kept for reuse, the mapping is alone in its 2 MiB blocks (its scans for written
    # pages then skip untouched bytes per block): x starts its arena, so p starts one.
    assert p % (2 << 20) == 0, hex(p)
    del first
    gc.collect()
    second = _send(h, w, x)
    assert second.data_ptr() == p, "the copy-on-write mapping of the slot is reused, not mapped again"
    # A write there stays local, and the next receive sees the owner's bytes again.
    second.fill_(5.0)
    assert float(x[0]) == 2.0
    del second
    gc.collect()
    third = _send(h, w, x)
    assert float(third.min()) == float(third.max()) == 2.0
    assert calls["encode"] == 0 and calls["decode"] == 0


def test_what_the_rust_path_declines_still_goes_through_the_hooks(pair, nc):
    h, w, calls = pair
    # A private tensor: copied into a pooled arena and re-pointed by the Python layer.
    t = torch.full((MiB // 4,), 3.0)
    got = _send(h, w, t)
    assert calls["encode"] == 1 and nc.is_shared(t) and float(got.sum()) == 3.0 * (MiB // 4)
    # A subclass of torch.Tensor (a Parameter) is not the exact type.
    p = torch.nn.Parameter(nc.empty([MiB // 4], "float32").fill_(1.0), requires_grad=False)
    got = _send(h, w, p)
    assert calls["encode"] == 2 and float(got.sum()) == MiB // 4
    # A small tensor travels inline (the Python layer builds the record).
    small = nc.empty([16], "float32").fill_(7.0)
    got = _send(h, w, small)
    assert calls["encode"] == 3 and float(got.sum()) == 7.0 * 16
    # numpy arrays keep the Python path (and come back as arrays).
    a = nc.empty([MiB // 4], "float32", kind="numpy")
    got = _send(h, w, a)
    assert calls["encode"] == 4 and type(got).__module__ == "numpy"


def test_a_view_from_another_channel_is_left_to_the_python_layer(pair, nc):
    """A tensor received on one channel and sent on another cannot be named by its slot
    there: the Rust path declines it, and the Python layer copies it (a worker's output)."""
    from nodecell import _nodecell, _rpc

    h, w, calls = pair
    x = nc.empty([MiB // 4], "float32").fill_(1.0)
    y = _send(h, w, x)
    h2 = _nodecell.Channel.create()
    w2 = _nodecell.Channel.open(*h2.peer_fds())
    eps = [_rpc.Endpoint(h2, "worker"), _rpc.Endpoint(w2, "host")]
    try:
        got = _send(w2, h2, y)
        assert torch.equal(got, x) and got.data_ptr() not in (x.data_ptr(), y.data_ptr())
        assert calls == {"encode": 0, "decode": 0}, "the other channel's own hooks ran"
    finally:
        del eps
        w2.close()
        h2.close()
