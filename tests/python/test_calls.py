"""Calls through a real sandboxed worker: values, services, callbacks, handles, volume."""
from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref

import pytest


def test_values_round_trip(aloop, basic_ext, testext):
    value = {
        "none": None, "bools": [True, False], "int": -7, "big": 10**40, "neg_big": -(10**30),
        "float": 2.5, "str": "héllo", "bytes": b"\x00\xff", "tuple": (1, (2, 3)), "list": [[], {}],
        "set": {1, 2, 3}, "frozenset": frozenset({"a"}), 5: "int key", (1, 2): "tuple key",
        "point": testext.Point(1.0, 2.0, "p"), "color": testext.Color.GREEN,
    }
    out = aloop.run(basic_ext.echo(value))
    assert out["point"] == testext.Point(1.0, 2.0, "p")
    assert out["color"] is testext.Color.GREEN
    assert out["frozenset"] == {"a"}
    out["frozenset"] = frozenset(out["frozenset"])
    assert out == value
    assert aloop.run(basic_ext.types_of(1, 1.0, "s", b"b", (1,), [1], {1: 2}, {1}, None, True, 10**20)) == [
        "int", "float", "str", "bytes", "tuple", "list", "dict", "set", "NoneType", "bool", "int"]


def test_kwargs_and_async_methods(aloop, basic_ext):
    assert aloop.run(basic_ext.echo(1, 2, a=3)) == ((1, 2), {"a": 3})
    assert aloop.run(basic_ext.aecho([1, "x"])) == [1, "x"]
    assert aloop.run(basic_ext.pack_value()) == 42


def test_async_methods_run_as_tasks_in_their_own_context(aloop, basic_ext):
    # Each method is called several times: the first call resolves it (Python), later
    # ones are served by the worker's Rust dispatcher, which must behave the same.
    for _ in range(3):
        assert aloop.run(basic_ext.afacts("first")) == {"task": True, "serving": True, "cv_before": None}
        assert aloop.run(basic_ext.afacts("suspend")) == {
            "task": True, "serving": True, "cv_before": None,
            "same_task": True, "same_serving": True, "cv_after": "suspend"}


def test_async_method_errors_in_the_first_step_and_after_suspending(aloop, basic_ext, nc):
    for suspend in (False, True, False, True):
        with pytest.raises(nc.RemoteError) as e:
            aloop.run(basic_ext.aboom("kaboom", suspend))
        assert (e.value.remote_type, e.value.remote_message) == ("ValueError", "kaboom")
        assert "raise ValueError" in e.value.remote_traceback
    assert aloop.run(basic_ext.aecho("still serving")) == "still serving"


def test_a_task_factory_on_the_worker_loop_makes_the_calls_tasks(aloop, basic_ext):
    # Without a factory the dispatcher makes a plain Task itself; with one, the factory does.
    async def go():
        plain = [await basic_ext.task_name() for _ in range(3)]
        await basic_ext.set_tagging_factory(True)
        tagged = [await basic_ext.task_name() for _ in range(3)]
        await basic_ext.set_tagging_factory(False)
        back = [await basic_ext.task_name() for _ in range(3)]
        return plain, tagged, back

    plain, tagged, back = aloop.run(go())
    assert tagged == ["tagged"] * 3
    assert "tagged" not in plain + back


def test_plain_methods_after_async_ones_see_no_running_loop(aloop, basic_ext):
    # The dispatcher sets the worker's loop as the running one for an async method's first
    # step (and sends its answer before unsetting it): a plain method served next, on the
    # same thread, must see no running loop and be able to run one itself.
    async def go():
        out = []
        for _ in range(5):
            await basic_ext.anoop()
            await basic_ext.afacts("first")
            out.append(await basic_ext.loop_facts())
        return out

    assert aloop.run(go()) == [{"running": False, "run": 3}] * 5


def test_async_calls_back_to_back_and_every_other_kind_between_them(aloop, basic_ext):
    # A dispatcher thread leaves the worker's loop set as its running loop after an async
    # call that ended in its first step (unsetting costs a getpid): the next async call
    # must still find it set (afacts' current_task() and timeout need it), and everything
    # else served on that thread must not: plain methods (loop_facts runs asyncio.run),
    # calls that suspend (the Python layer drives the loop), awaitables returned by plain
    # methods, errors.
    async def go():
        out = []
        for _ in range(3):
            await basic_ext.anoop()
            await basic_ext.anoop()
            out.append(await basic_ext.afacts("first"))
            out.append(await basic_ext.loop_facts())
            out.append(await basic_ext.aecho("suspends"))
            out.append(await basic_ext.afacts("first"))
            out.append(await basic_ext.returns_awaitable(1))
            out.append(await basic_ext.afacts("suspend"))
            try:
                await basic_ext.aboom("x")
            except Exception as e:  # noqa: BLE001
                out.append(isinstance(e, ValueError))
            out.append(await basic_ext.afacts("first"))
            out.append(await basic_ext.loop_facts())
        return out

    first = {"task": True, "serving": True, "cv_before": None}
    suspended = dict(first, same_task=True, same_serving=True, cv_after="suspend")
    got = aloop.run(go())
    assert got == [first, {"running": False, "run": 3}, "suspends", first, 3, suspended, True,
                   first, {"running": False, "run": 3}] * 3


def test_plain_method_returning_an_awaitable_and_calls_in_flight(aloop, basic_ext):
    assert [aloop.run(basic_ext.returns_awaitable(5)) for _ in range(3)] == [15, 15, 15]

    async def mixed():
        # Suspended calls keep the worker's loop busy: the ones arriving meanwhile queue
        # on it (not served in Rust) and every call still gets its own answer.
        return await asyncio.gather(*(
            [basic_ext.asleep(0.02) for _ in range(3)] + [basic_ext.aecho(i) for i in range(20)]
            + [basic_ext.afacts("first") for _ in range(5)] + [basic_ext.double(i) for i in range(5)]))

    got = aloop.run(mixed())
    assert got[:3] == [0.02] * 3 and got[3:23] == list(range(20))
    assert all(f == {"task": True, "serving": True, "cv_before": None} for f in got[23:28])
    assert got[28:] == [2 * i for i in range(5)]


def test_resolved_calls_are_answered_by_the_rust_dispatcher(aloop, basic_ext):
    async def go():
        await basic_ext.double(0)  # resolved (by Python) once
        await basic_ext.anoop()
        before = await basic_ext.served_in_rust()
        for i in range(20):
            assert await basic_ext.double(i) == 2 * i
            assert await basic_ext.anoop() is None
            assert await basic_ext.aecho(i) == i  # suspends: its task ends on the loop
        return await basic_ext.served_in_rust() - before

    # The 40 calls of methods that end in their first step were answered in Rust.
    assert aloop.run(go()) >= 40


def test_many_async_calls_while_plain_calls_hold_receivers(aloop, basic_ext):
    # Plain calls that block make the worker bring in more receiving threads; async calls
    # arriving on those threads while another one drives the loop are queued on it and
    # must still run (a queued start nobody drives would never answer).
    async def go():
        for _ in range(5):
            got = await asyncio.gather(*(
                [basic_ext.sleep(0.005) for _ in range(4)] + [basic_ext.aecho(i) for i in range(100)]
                + [basic_ext.anoop() for _ in range(50)] + [basic_ext.double(i) for i in range(50)]))
            assert got[4:104] == list(range(100)) and got[154:] == [2 * i for i in range(50)]

    aloop.run(go())


def test_a_task_started_by_an_async_method_runs_without_another_call(aloop, basic_ext):
    # The method ends in its first step (run eagerly, without a loop turn); the task it
    # started must still run, although no other async call comes to drive the loop.
    assert aloop.run(basic_ext.start_background()) is True
    deadline = time.monotonic() + 5
    while not aloop.run(basic_ext.background_done()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert aloop.run(basic_ext.background_done()) is True


def test_worker_is_unprivileged_and_env_is_clean(aloop, basic_ext):
    import os

    os.environ["NODECELL_TEST_SECRET"] = "do-not-leak"
    who = aloop.run(basic_ext.whoami())
    if os.geteuid() == 0:
        assert who["uid"] != 0 and who["euid"] != 0, who
    assert aloop.run(basic_ext.env("NODECELL_TEST_SECRET")) is None
    assert aloop.run(basic_ext.env("NODECELL_PACK")) == "basic"


def test_proxied_singleton_sync_and_async(aloop, basic_ext, testext):
    reg = testext.Registry()
    n, got, is_instance, local = aloop.run(basic_ext.use_registry("k", [1, 2]))
    assert (got, is_instance, local) == ([1, 2], True, True)
    assert reg.data["k"] == [1, 2] and n == len(reg.data)
    assert aloop.run(basic_ext.use_registry_async("k")) == [1, 2]


def test_reentrant_host_worker_host_worker(aloop, basic_ext):
    # host -> worker.reenter -> host Registry.ask_worker -> worker.double -> back out
    assert aloop.run(basic_ext.reenter("basic", 21)) == 42


def test_callbacks_both_ways(aloop, basic_ext):
    seen = []

    def cb(x, y):
        seen.append((x, y))
        return x * y

    assert aloop.run(basic_ext.call_back(cb, 6, 7)) == 42
    assert seen == [(6, 7)]

    async def go():
        adder = await basic_ext.make_adder(10)
        # A plain function of the worker: calling it gives the value (issue 10's rule);
        # call_async() gives an awaitable of it.
        return adder(5), await adder.call_async(6)

    assert aloop.run(go()) == (15, 16)


def test_remote_handles_and_release(aloop, basic_ext, nc, testext):
    async def go():
        c = await basic_ext.make_counter(5)
        assert isinstance(c, nc.RemoteObject)
        assert await c.incr(2) == 7
        assert await c.getattr("value") == 7
        return c

    c = aloop.run(go())
    before = aloop.run(basic_ext.exported_count())
    assert before >= 1
    del c
    gc.collect()

    async def settle():
        for _ in range(100):
            await basic_ext.noop()  # releases ride along with the next frames
            if await basic_ext.exported_count() < before:
                return True
            await asyncio.sleep(0.01)
        return False

    assert aloop.run(settle()), "the worker never got the release of the dropped proxy"

    # A host object passed to the worker crosses as a handle; its methods run here.
    host_counter = testext.Counter(100)
    assert aloop.run(basic_ext.use_handle(host_counter, 5)) == 105
    assert host_counter.value == 105


def test_private_names_are_not_reachable_from_the_worker(aloop, basic_ext, testext, nc):
    class Secretive:
        def public(self):
            return "ok"

        def _private(self):
            return "leak"

    async def go():
        return await basic_ext.poke_private(Secretive())

    with pytest.raises(nc.RemoteError) as e:
        aloop.run(go())
    assert "AttributeError" in e.value.remote_type or "not reachable" in str(e.value)


def test_modules_and_classes_never_cross_as_handles(aloop, basic_ext):
    import os

    with pytest.raises(TypeError):
        aloop.run(basic_ext.echo(os))


def test_unsendable_results_become_handles(aloop, basic_ext, nc):
    lock = aloop.run(basic_ext.unsendable())
    assert isinstance(lock, nc.RemoteObject)


def test_remote_error_carries_type_and_traceback(aloop, basic_ext, nc):
    with pytest.raises(nc.RemoteError) as e:
        aloop.run(basic_ext.boom("kaboom"))
    assert e.value.remote_type == "ValueError"
    assert e.value.remote_message == "kaboom"
    assert "def boom" in e.value.remote_traceback or "raise ValueError" in e.value.remote_traceback


def test_builtin_errors_stay_catchable_as_themselves(aloop, basic_ext, nc):
    """A remote builtin exception is also that builtin (only the name crosses), both ways."""
    with pytest.raises(ValueError) as e:  # the worker's ValueError, caught as a ValueError here
        aloop.run(basic_ext.boom("kaboom"))
    assert isinstance(e.value, nc.RemoteError) and e.value.remote_type == "ValueError"
    table = {"a": 1}

    def lookup(key):
        return table[key]

    assert aloop.run(basic_ext.lookup_or_default(lookup, "a", 0)) == 1
    assert aloop.run(basic_ext.lookup_or_default(lookup, "zz", -1)) == -1  # the worker caught KeyError
    made_up = nc.errors.remote_error("os.system", "x")
    assert type(made_up) is nc.RemoteError, "only builtins' exception names are mirrored"


async def _released(ext, ref):
    """Calls into ``ext`` (its releases ride along) until the host object behind ``ref`` is
    gone (True) or 200 rounds passed (False)."""
    for _ in range(200):
        await ext.noop()
        gc.collect()
        if ref() is None:
            return True
        await asyncio.sleep(0.01)
    return False


def test_a_host_callable_that_raised_in_the_worker_is_released_without_a_collection(aloop, basic_ext):
    """A host function the worker called and that raised is released as soon as the worker's
    method returns, by reference counting alone: the exception the worker caught must not keep
    the frames (and the handle in them) alive in a reference cycle until the worker's garbage
    collector runs (a host model stayed pinned that way). The worker's collector is off here."""

    class Lookup:
        def __call__(self, key):
            raise KeyError(key)

    lookup = Lookup()
    ref = weakref.ref(lookup)
    assert aloop.run(basic_ext.set_gc(False)) is False
    try:
        assert aloop.run(basic_ext.lookup_or_default(lookup, "zz", -1)) == -1
        del lookup
        gc.collect()

        assert aloop.run(_released(basic_ext, ref)), \
            "the worker still holds the host function after its method returned"
    finally:
        aloop.run(basic_ext.set_gc(True))



def test_ten_thousand_sequential_calls(aloop, basic_ext):
    async def go():
        out = []
        for i in range(10_000):
            out.append(await basic_ext.double(i))
        return out

    assert aloop.run(go()) == [2 * i for i in range(10_000)]


def test_thousand_concurrent_calls(aloop, basic_ext):
    async def go():
        return await asyncio.gather(*(basic_ext.aecho(i) for i in range(1000)),
                                    *(basic_ext.double(i) for i in range(1000)))

    out = aloop.run(go())
    assert out == list(range(1000)) + [2 * i for i in range(1000)]


def test_concurrent_async_calls_never_strand(aloop, basic_ext):
    """Regression: async calls arriving while another thread drove the worker's loop
    could be left as started-but-never-run tasks (a hang until the call timed out)."""

    async def client(n):
        for i in range(n):
            assert await basic_ext.anoop() is None
            assert await basic_ext.aecho(i) == i
        return n

    async def go():
        return await asyncio.wait_for(asyncio.gather(*(client(400) for _ in range(8))), 60)

    assert aloop.run(go()) == [400] * 8


def test_worker_logs_and_stdout_reach_host_logging(aloop, basic_ext):
    records = []

    class H(logging.Handler):
        def emit(self, r):
            records.append((r.name, r.getMessage()))

    h = H()
    lg = logging.getLogger("nodecell.basic")
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    try:
        aloop.run(basic_ext.log_something("hello-from-worker"))

        async def wait():
            for _ in range(200):
                if len([r for r in records if "hello-from-worker" in r[1]]) >= 2:
                    return
                await asyncio.sleep(0.01)

        aloop.run(wait())
    finally:
        lg.removeHandler(h)
    assert ("nodecell.basic.testpack", "log: hello-from-worker") in records
    assert any(n == "nodecell.basic" and m == "stdout: hello-from-worker" for n, m in records), records


def test_releases_queued_by_finalizers_on_other_threads_are_never_lost():
    """Proxy finalizers queue releases on whatever thread the GC runs while the loop's thread
    takes them to send: every queued reference comes out exactly once (a lost one would keep
    the peer's object alive for good)."""
    import sys
    import threading

    from nodecell import _nodecell
    from nodecell._rpc import Endpoint

    class Quiet(Endpoint):
        def _schedule_release_flush(self) -> None:
            pass

    ch = _nodecell.Channel.create()
    ep = Quiet(ch, "test")
    per_thread, threads = 20000, 4
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        def queue(base: int) -> None:
            for i in range(per_thread):
                ep.release_later(base + i, 1)

        ts = [threading.Thread(target=queue, args=(k * per_thread,)) for k in range(threads)]
        for t in ts:
            t.start()
        taken = []
        while any(t.is_alive() for t in ts):
            taken.extend(ep.take_releases())
        for t in ts:
            t.join()
        taken.extend(ep.take_releases())
    finally:
        sys.setswitchinterval(old)
        ch.close()
    assert sorted(taken) == list(range(threads * per_thread))


def test_a_host_object_passed_to_a_worker_method_is_released_once_the_call_returned(aloop, basic_ext):
    """The worker keeps nothing of a call's arguments after answering it: a host object passed
    to a method (here its first call, served by the Python layer) is released at once, even
    while the thread that served it only waits for more (a dispatcher thread kept the last
    call's payload in its loop until it served another: a host model stayed pinned that way)."""

    class Obj:
        pass

    aloop.run(basic_ext.noop())
    obj = Obj()
    ref = weakref.ref(obj)
    assert aloop.run(basic_ext.take_and_drop(obj)) is None
    del obj
    gc.collect()

    assert aloop.run(_released(basic_ext, ref)), "the worker still holds the argument of a call it answered"
