"""Issue 10: synchronous proxy calls return values, from every kind of thread, both ways,
nested to any depth, with nested calls serviced on the thread that waits.

The sampler case: a pack installs a wrapper (a worker function) into a host model
object; the host's sampler calls it synchronously, from a plain thread or from code
running inside an event loop (ComfyUI runs nodes synchronously inside a coroutine on
its prompt thread's loop), and the wrapper calls the host model back meanwhile.
"""
from __future__ import annotations

import asyncio
import gc
import concurrent.futures
import threading
import weakref

import pytest

from conftest import pack


@pytest.fixture(scope="module")
def sync_ext(aloop, nc, support_dir, venv_root):
    import nc_sync

    async def make():
        m = nc.ExtensionManager(nc_sync.SyncExt, nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))
        ext = await m.load_extension(nc.ExtensionConfig(
            name="sync", module_path=pack(support_dir, "basic"), apis=[nc_sync.Relay], timeout=30))
        nc_sync.HOST_EXTENSIONS["sync"] = ext
        return m, ext

    m, ext = aloop.run(make())
    yield ext

    async def stop():
        await m.stop_all_extensions()

    aloop.run(stop())


@pytest.fixture()
def model(aloop, sync_ext, nc):
    import nc_sync

    m = nc_sync.Model()
    assert aloop.run(sync_ext.patch(m)) is True
    assert isinstance(m.wrapper, nc.RemoteCallable) and not m.wrapper.is_async
    return m


def _expect(x, depth):
    # sample: wrapper(apply, x, d) = apply(x, d) * 2; apply(x, d>0) = wrapper(apply, x, d-1) + 1
    v = x + 0.5
    for _ in range(depth):
        v = v * 2 + 1
    return v * 2


def _check_threads(model, tid):
    assert model.threads, "the host model was never called back"
    assert set(model.threads) == {tid}, "nested calls ran on another thread than the one that waited"


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_sampler_from_a_plain_thread(model, depth):
    out = {}

    def run():
        out["tid"] = threading.get_ident()
        out["v"] = model.sample(3, depth)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert out["v"] == _expect(3, depth)
    _check_threads(model, out["tid"])


def test_sampler_inside_another_threads_running_loop(model):
    """ComfyUI's prompt thread: a loop of its own, the node function called
    synchronously inside a coroutine on it."""
    out = {}

    async def prompt():
        out["tid"] = threading.get_ident()
        return model.sample(2, 3)  # a plain call inside a coroutine: returns the value

    def worker_thread():
        out["v"] = asyncio.run(prompt())

    t = threading.Thread(target=worker_thread)
    t.start()
    t.join(60)
    assert out["v"] == _expect(2, 3)
    _check_threads(model, out["tid"])


def test_sampler_inside_the_managers_own_loop(aloop, model):
    """Sync code inside a coroutine on the very loop that owns the extension: that
    loop's thread blocks, receives from the channel itself and serves the callbacks."""

    async def go():
        return threading.get_ident(), model.sample(1, 2)

    tid, v = aloop.run(go())
    assert v == _expect(1, 2)
    _check_threads(model, tid)


def test_sampler_from_an_executor_thread_of_the_loop(aloop, model):
    async def go():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return await asyncio.gather(*(loop.run_in_executor(pool, model.sample, i, 2) for i in range(4)))

    assert aloop.run(go()) == [_expect(i, 2) for i in range(4)]


def test_many_threads_at_once(model):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: model.sample(i, 1), range(64)))
    assert results == [_expect(i, 1) for i in range(64)]


def test_async_remote_callable_gives_an_awaitable(aloop, sync_ext, nc):
    import nc_sync

    m = nc_sync.Model()
    aloop.run(sync_ext.patch_async(m))
    assert isinstance(m.wrapper, nc.RemoteCallable) and m.wrapper.is_async

    async def go():
        aw = m.wrapper(m.apply, 1, 0)
        assert asyncio.iscoroutine(aw)
        return await aw

    assert aloop.run(go()) == (1 + 0.5) * 3

    # ... awaited on another thread's loop too.
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", asyncio.run(m.wrapper(m.apply, 2, 0))))
    t.start()
    t.join(60)
    assert out["v"] == (2 + 0.5) * 3


def test_call_async_gives_an_awaitable_for_a_sync_function(aloop, model):
    async def go():
        return await model.wrapper.call_async(model.apply, 4, 1)

    assert aloop.run(go()) == _expect(4, 1)


def test_worker_sync_service_call_under_its_event_loop_returns_the_value(aloop, sync_ext):
    import nc_sync

    relay = nc_sync.Relay()
    before = relay.total
    kind, value = aloop.run(sync_ext.bump_via_module(5))
    assert kind == "int" and value == before + 5
    kind, value, avalue = aloop.run(sync_ext.bump_on_loop(2))
    assert kind == "int" and value == before + 7 and avalue == before + 9
    assert aloop.run(sync_ext.bump_from_thread(1)) == before + 10


def test_worker_to_host_to_worker_nested(aloop, sync_ext):
    """worker (async method) -> host sync service -> the same worker, synchronously."""
    assert aloop.run(sync_ext.nested_via_host("sync", 21)) == 42


@pytest.mark.parametrize("n", [1, 3, 8])
def test_deep_reentrancy_both_ways(aloop, sync_ext, n):
    """host -> worker -> host -> worker ... n levels, every call synchronous."""
    assert aloop.run(sync_ext.down("sync", n)) == n
    assert aloop.run(sync_ext.adown("sync", n)) == n


@pytest.mark.parametrize("n", [1, 2, 5])
def test_nested_async_calls_while_a_loop_is_blocked(aloop, sync_ext, n):
    """host -> worker async method, which calls the host synchronously (blocking the worker's
    loop) -> host -> the worker's async method again ...: each nested async call runs although
    the loop that would run it waits."""
    assert sync_ext.call_sync("adown_blocking", "sync", n) == n

    async def on_loop():  # the same from the manager's loop thread, blocked as well
        return sync_ext.call_sync("adown_blocking", "sync", n)

    assert aloop.run(on_loop()) == n


def test_async_host_service_under_a_blocked_host_loop(aloop, sync_ext):
    """The sampler blocks the manager's own loop thread; the patch calls an async host
    service meanwhile: it runs (on a private loop), the sampler gets its value."""
    import nc_sync

    m = nc_sync.Model()
    assert aloop.run(sync_ext.patch_abump(m)) is True
    before = nc_sync.Relay().total

    async def go():
        return m.sample(2, 1)

    assert aloop.run(go()) == _expect(2, 1)
    assert nc_sync.Relay().total == before + 2  # bumped once per wrapper call (depth 1: twice)


def test_call_sync_from_every_thread_kind(aloop, sync_ext):
    assert sync_ext.call_sync("double", 2) == 4  # plain thread (the test's)

    async def on_loop():
        return sync_ext.call_sync("double", 3)

    assert aloop.run(on_loop()) == 6  # the manager's own loop thread
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", asyncio.run(on_loop())))
    t.start()
    t.join(60)
    assert out["v"] == 6  # inside another thread's running loop


def test_await_from_another_threads_loop(sync_ext):
    async def go():
        return await asyncio.gather(*(sync_ext.double(i) for i in range(20)))

    assert asyncio.run(go()) == [2 * i for i in range(20)]


def test_sync_call_timeout_and_crash_are_nodecell_errors(aloop, nc, support_dir, venv_root):
    import nc_sync

    async def make():
        m = nc.ExtensionManager(nc_sync.SyncExt, nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))
        return m, await m.load_extension(nc.ExtensionConfig(
            name="sync-fragile", module_path=pack(support_dir, "basic"), timeout=1.5))

    m, ext = aloop.run(make())
    try:
        with pytest.raises(nc.CallTimeout):
            ext.call_sync("sleep", 30)
        assert ext.call_sync("double", 5) == 10  # a fresh worker
        with pytest.raises(nc.WorkerCrashed) as e:
            ext.call_sync("exit_now", 4)
        assert e.value.reason == "exited" and e.value.exit_code == 4

        async def on_loop():
            try:
                ext.call_sync("segfault")
            except nc.WorkerCrashed as err:
                crash = err
            return crash, ext.call_sync("double", 6)  # restarted from the blocked loop thread

        crash, v = aloop.run(on_loop())
        assert crash.reason == "signal" and v == 12
    finally:
        async def stop():
            await m.stop_all_extensions()

        aloop.run(stop())


def test_a_failed_synchronous_call_leaves_no_reference_cycle_in_the_host(model):
    """A synchronous call that raises (here: the worker's function calls a host function that
    raises) is gone with its frames once the exception is handled, by reference counting
    alone: the waiter must not keep the exception, whose traceback holds the caller's frames
    and what they hold (a model, handles into the worker), in a cycle until a collection."""

    class Canary:
        pass

    refs = []

    def bad_apply(x, depth):
        raise KeyError("no such sigma")

    def run():
        canary = Canary()
        refs.append(weakref.ref(canary))
        try:
            model.wrapper(bad_apply, 1, 0)
        except KeyError:
            pass

    gc.collect()
    gc.disable()
    try:
        t = threading.Thread(target=run)
        t.start()
        t.join(60)
        assert refs and refs[0]() is None, "the failed call's frames are still alive"
    finally:
        gc.enable()
