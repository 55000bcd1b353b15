"""The host's fast path (``_nodecell.FastCall``): ``await ext.method()`` answered in one
Rust call must behave as the general path does: coroutine functions and coroutines as
asyncio expects them, the same errors, calls that wait, a worker that dies, a stop."""
from __future__ import annotations

import asyncio
import inspect
import signal

import pytest
from conftest import pack


def _python_path_off(ext):
    """Make the Python fast path raise: what still answers went through Rust."""
    def refuse(*_a, **_k):
        raise AssertionError("the Python fast path was taken")

    ext._call_fast = refuse


def _python_path_on(ext):
    del ext._call_fast


def test_methods_stay_coroutine_functions_and_give_coroutines(aloop, basic_ext):
    assert inspect.iscoroutinefunction(basic_ext.aecho)
    assert inspect.iscoroutinefunction(basic_ext.echo)  # a plain `def` in the worker: awaited in the host
    assert asyncio.iscoroutinefunction(basic_ext.proxy.aecho)
    assert basic_ext.aecho.__name__ == "aecho"

    async def go():
        await basic_ext.anoop()  # arms the fast path (the general path does)
        assert basic_ext._fast.armed
        _python_path_off(basic_ext)
        try:
            coro = basic_ext.aecho("c")
            assert asyncio.iscoroutine(coro)
            direct = await coro
            task = await asyncio.create_task(basic_ext.aecho("t"))
            fut = await asyncio.ensure_future(basic_ext.echo("f"))
            gathered = await asyncio.gather(basic_ext.aecho(1), basic_ext.echo(2, k=3), basic_ext.call("aecho", 4))
            waited = await asyncio.wait_for(basic_ext.aecho("w"), 30)
        finally:
            _python_path_on(basic_ext)
        return direct, task, fut, gathered, waited

    assert aloop.run(go()) == ("c", "t", "f", [1, ((2,), {"k": 3}), 4], "w")


def test_errors_on_the_fast_path_are_the_general_paths(aloop, basic_ext, nc):
    async def go():
        await basic_ext.anoop()
        assert basic_ext._fast.armed
        out = []
        _python_path_off(basic_ext)
        try:
            # boom again and again: served by the worker's Rust dispatcher after the first
            for coro in (basic_ext.aboom("first step"), *(basic_ext.boom("plain") for _ in range(3))):
                try:
                    await coro
                except Exception as e:  # noqa: BLE001 - compared below
                    out.append(e)
        finally:
            _python_path_on(basic_ext)
        return out

    remote, *plain = aloop.run(go())
    assert isinstance(remote, nc.RemoteError)
    assert (remote.remote_type, remote.remote_message) == ("ValueError", "first step")
    assert len(plain) == 3
    for e in plain:
        assert isinstance(e, ValueError) and isinstance(e, nc.RemoteError)  # catchable as itself
        assert (e.remote_type, e.remote_message) == ("ValueError", "plain")
        assert "raise ValueError" in e.remote_traceback  # the worker's frames, every time


def test_an_argument_that_cannot_cross_raises_and_sends_nothing(aloop, basic_ext):
    deep: list = []
    for _ in range(200):
        deep = [deep]

    async def go():
        await basic_ext.anoop()
        assert basic_ext._fast.armed
        _python_path_off(basic_ext)
        try:
            with pytest.raises(ValueError, match="nested deeper") as e:
                await basic_ext.aecho(deep)
            after = await basic_ext.aecho("after")
        finally:
            _python_path_on(basic_ext)
        return after, e.value

    after, err = aloop.run(go())
    assert after == "after" and "levels" in str(err)


def test_calls_that_must_wait_and_calls_in_flight(aloop, basic_ext):
    async def go():
        await basic_ext.anoop()
        assert basic_ext._fast.armed
        slow = asyncio.ensure_future(basic_ext.asleep(0.05))  # past any spin window: waits on a future
        quick = [await basic_ext.aecho(i) for i in range(20)]  # meanwhile, answered at once
        many = await asyncio.gather(*(basic_ext.aecho(i) for i in range(200)))
        return await slow, quick, many

    slow, quick, many = aloop.run(go())
    assert slow == 0.05 and quick == list(range(20)) and many == list(range(200))


@pytest.fixture(scope="module")
def crashy(aloop, manager, nc, support_dir):
    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="fastcrash", module_path=pack(support_dir, "hostile"), timeout=10))

    ext = aloop.run(load())
    yield ext
    aloop.run(ext.stop())


def test_a_worker_crash_mid_call_fails_the_call_and_the_next_call_rearms(aloop, crashy, nc):
    async def go():
        before = (await crashy.whoami())["pid"]
        await crashy.noop()
        assert crashy._fast.armed
        with pytest.raises(nc.WorkerCrashed) as e:
            await crashy.exit_now(5)  # dies while the fast path spins for its answer
        assert e.value.exit_code == 5
        assert not crashy._fast.armed
        after = (await crashy.whoami())["pid"]  # a fresh worker, armed again
        await crashy.noop()
        assert crashy._fast.armed
        # Killed between calls, unnoticed: the next call fails with the real reason or
        # starts a fresh worker, never hangs nor crashes the host.
        signal.pidfd_send_signal(crashy._workers[0].pidfd, signal.SIGKILL)
        try:
            await asyncio.wait_for(crashy.double(2), 30)
        except nc.WorkerCrashed:
            pass
        return before, after, await crashy.double(3)

    before, after, six = aloop.run(go())
    assert before != after and six == 6


def test_stop_disarms_and_later_calls_raise(aloop, manager, nc, support_dir):
    async def go():
        ext = await manager.load_extension(nc.ExtensionConfig(
            name="faststop", module_path=pack(support_dir, "basic"), timeout=30))
        await ext.anoop()
        await ext.anoop()
        armed = ext._fast.armed
        await ext.stop()
        with pytest.raises(nc.ExtensionStopped):
            await ext.anoop()
        return armed, ext._fast.armed

    assert aloop.run(go()) == (True, False)
