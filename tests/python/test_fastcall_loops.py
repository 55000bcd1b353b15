"""The host's fast path (``_nodecell.FastCall``) when event loops and threads change under
it: a loop run again on another thread, ``asyncio.run`` twice, a closed loop and a new one,
threads with loops of their own calling one extension at once. Every call must answer
correctly (no exception, no hang), and the fast path must arm again where it is safe
(``FastCall.answered`` counts the calls it answered itself)."""
from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import pack

#: Calls per burst; ``asleep`` answers after the fast path's spin window (a future waits).
N = 50


def _manager(nc, testext, venv_root):
    return nc.ExtensionManager(testext.TestExt, nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))


def _cfg(nc, support_dir, name):
    return nc.ExtensionConfig(name=name, module_path=pack(support_dir, "basic"), timeout=60)


async def _burst(ext, tag):
    """Quick calls one after another, slow ones in flight, and both gathered: the fast
    path's answers, its continuations and the general path."""
    quick = [await ext.aecho((tag, i)) for i in range(N)]
    plain = [await ext.double(i) for i in range(N)]
    slow = asyncio.ensure_future(ext.asleep(0.05))
    many = await asyncio.gather(*(ext.aecho((tag, i)) for i in range(N)), ext.asleep(0.02))
    assert quick == [(tag, i) for i in range(N)], quick
    assert plain == [2 * i for i in range(N)], plain
    assert many[:-1] == [(tag, i) for i in range(N)] and many[-1] == 0.02, many
    assert await slow == 0.05
    return (await ext.whoami())["pid"]


def _in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["v"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller
            out["e"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    assert not t.is_alive(), "hung"
    if "e" in out:
        raise out["e"]
    return out["v"]


#: A spin window no answer outlasts (10 s), set before a call that the fast path must
#: answer itself: how it is armed decides the test, not how loaded the machine is.
_LONG_SPIN = 10_000_000_000


async def _fast_path_answers(ext):
    """The fast path is armed for this thread and loop, or arms on the first call (the
    general path does), and answers the next call itself."""
    w = ext._workers[0]
    before = ext._fast.answered
    for _ in range(2):
        w.spin_ns = _LONG_SPIN
        assert await ext.aecho("fast") == "fast"
    assert ext._fast.armed and ext._fast.answered > before, (ext._fast.answered, before)
    return (await ext.whoami())["pid"]


async def _both(ext, tag):
    pid = await _burst(ext, tag)
    assert await _fast_path_answers(ext) == pid
    return pid


def test_asyncio_run_twice_on_one_thread(nc, testext, support_dir, venv_root):
    m = _manager(nc, testext, venv_root)

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-twice"))
        return ext, await _both(ext, "a")

    try:
        ext, _ = asyncio.run(first())
        for tag in ("b", "c"):  # a new loop each time, on this thread
            asyncio.run(_both(ext, tag))
    finally:
        m.stop_all_extensions()


def test_a_loop_run_again_on_another_thread(nc, testext, support_dir, venv_root):
    m = _manager(nc, testext, venv_root)
    lp = asyncio.new_event_loop()

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-moved"))
        return ext, await _both(ext, "a")

    try:
        ext, pid = _in_thread(lp.run_until_complete, first())
        # The same loop, now run by another thread (the first one has ended): the same
        # sandbox and worker, and the fast path armed for that thread; then this one.
        assert _in_thread(lp.run_until_complete, _both(ext, "b")) == pid
        assert lp.run_until_complete(_both(ext, "c")) == pid
        assert ext._cell.loop_thread == threading.get_ident()
    finally:
        m.stop_all_extensions()
        lp.close()


def test_the_arming_thread_runs_a_new_loop_while_the_old_one_runs_elsewhere(nc, testext, support_dir,
                                                                           venv_root):
    """Armed on this thread with loop L; then L runs forever on another thread and this
    thread runs a loop of its own. The fast path still takes calls here (it cannot tell
    cheaply): answered in the spin they return; else they wait on L, and what the worker
    sends meanwhile is L's to handle, on L's thread (it was: RuntimeError / ValueError,
    a future of L awaited on this thread's loop)."""
    m = _manager(nc, testext, venv_root)
    lp = asyncio.new_event_loop()

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-elsewhere"))
        return ext, await _both(ext, "a")

    ext, pid = lp.run_until_complete(first())  # armed for this thread and lp
    t = threading.Thread(target=lp.run_forever)
    t.start()
    seen = []

    def cb(x):
        seen.append(threading.get_ident())
        return x + 1

    async def here():
        w = ext._workers[0]
        answered = ext._fast.answered
        w.spin_ns = _LONG_SPIN
        assert await ext.aecho("quick") == "quick"
        assert ext._fast.answered == answered + 1, "answered by the fast path on this thread"
        w.spin_ns = 50_000
        assert await ext.asleep(0.05) == 0.05  # waits past the spin: on L's future
        w.spin_ns = 50_000
        assert await ext.call_back(cb, 41) == 42  # the worker calls back during the spin
        w.spin_ns = 50_000
        assert await asyncio.gather(ext.asleep(0.02), ext.aecho(1), ext.call_back(cb, 1)) == [0.02, 1, 2]
        return await _burst(ext, "b")

    try:
        assert asyncio.run(here()) == pid
        assert seen and set(seen) == {t.ident}, "callbacks run on L's thread"
        assert asyncio.run_coroutine_threadsafe(_both(ext, "c"), lp).result(120) == pid  # armed for L's thread
        assert ext._cell.loop_thread == t.ident
        assert asyncio.run(_burst(ext, "d")) == pid  # now served by L through the general path
    finally:
        asyncio.run_coroutine_threadsafe(m.stop_all_extensions(), lp).result(60)
        lp.call_soon_threadsafe(lp.stop)
        t.join(30)
        lp.close()


def test_threads_with_their_own_loops_call_one_extension_at_once(nc, testext, support_dir, venv_root):
    m = _manager(nc, testext, venv_root)
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever)
    t.start()

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-concurrent"))
        return ext, await _both(ext, "home")

    try:
        ext, pid = asyncio.run_coroutine_threadsafe(first(), lp).result(120)
        errors = []
        pids = []

        def caller(k):
            try:
                for r in range(3):
                    pids.append(asyncio.run(_burst(ext, (k, r))))
            except BaseException as e:  # noqa: BLE001 - asserted below
                errors.append(e)

        ts = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
        for c in ts:
            c.start()
        home = [asyncio.run_coroutine_threadsafe(_both(ext, ("home", r)), lp).result(120) for r in range(3)]
        for c in ts:
            c.join(120)
        assert not any(c.is_alive() for c in ts), "hung"
        assert errors == [], errors
        assert set(pids) == {pid} and len(pids) == 6 and set(home) == {pid}
    finally:
        asyncio.run_coroutine_threadsafe(m.stop_all_extensions(), lp).result(60)
        lp.call_soon_threadsafe(lp.stop)
        t.join(30)
        lp.close()


def test_a_closed_loop_and_a_new_one(nc, testext, support_dir, venv_root):
    m = _manager(nc, testext, venv_root)
    lp = asyncio.new_event_loop()

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-closed"))
        return ext, await _both(ext, "a")

    try:
        ext, _ = lp.run_until_complete(first())
        lp.close()
        lp = asyncio.new_event_loop()
        asyncio.set_event_loop(lp)
        lp.run_until_complete(_both(ext, "b"))  # a new sandbox on the new loop (the old loop is gone)
        lp.run_until_complete(_both(ext, "c"))
    finally:
        asyncio.set_event_loop(None)
        m.stop_all_extensions()
        lp.close()


def test_a_synchronous_call_on_the_loops_old_thread_leaves_the_loops_answers_to_it(nc, testext, support_dir,
                                                                                   venv_root):
    """L ran on this thread (the sandbox last saw it here), now runs on another, and this
    thread calls synchronously from a loop of its own while L waits for an answer: this
    thread receives meanwhile as a thread apart from L does (not as L's blocked thread,
    which handles everything itself), and L's answer reaches L."""
    m = _manager(nc, testext, venv_root)
    lp = asyncio.new_event_loop()

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-sync"))
        return ext, await _both(ext, "a")

    ext, pid = lp.run_until_complete(first())
    t = threading.Thread(target=lp.run_forever)
    t.start()

    async def here():
        ext._workers[0].spin_ns = 50_000
        waiting = asyncio.ensure_future(ext.asleep(0.1))  # sent from here, waits on L
        await asyncio.sleep(0)
        assert ext.call_sync("sleep", 0.3) == 0.3
        return await asyncio.wait_for(waiting, 30)  # a hang guard, not a timing

    try:
        assert asyncio.run(here()) == 0.1
        assert asyncio.run(_burst(ext, "b")) == pid
    finally:
        asyncio.run_coroutine_threadsafe(m.stop_all_extensions(), lp).result(60)
        lp.call_soon_threadsafe(lp.stop)
        t.join(30)
        lp.close()


def test_threads_with_their_own_loops_after_the_sandboxs_loop_is_gone(nc, testext, support_dir, venv_root):
    """An app that runs ``asyncio.run`` per request in a thread pool: the loop that started
    the sandbox is closed, and two threads, each with a loop of its own, call at once. A
    sandbox lives on one loop, so one thread's calls are served by the other's loop, which
    ends when that thread's request does: a call that loop had not begun is made again
    from the caller's loop; one it was running when it ended fails with LoopEnded. No
    hang, no other error, every answer right. (Was: a start lock shared across loops left
    one thread's loop asleep for ever; the wrong loop's future awaited.)"""
    m = _manager(nc, testext, venv_root)

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-pool"))
        return ext, await _burst(ext, "a")

    try:
        ext, _ = asyncio.run(first())
        errors = []
        done = []
        go = threading.Barrier(2)

        def caller(k):
            go.wait(30)
            for r in range(4):
                try:
                    asyncio.run(_burst(ext, (k, r)))
                    done.append((k, r))
                except nc.LoopEnded as e:
                    assert "was cut off: the event loop serving the sandbox" in str(e), e
                except BaseException as e:  # noqa: BLE001 - asserted below
                    errors.append(e)

        ts = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
        for c in ts:
            c.start()
        for c in ts:
            c.join(120)
        assert not any(c.is_alive() for c in ts), "hung"
        assert errors == [], errors
        assert done, "no request answered in full"
        assert asyncio.run(_both(ext, "after")) > 0  # and afterwards, on a loop of its own
    finally:
        m.stop_all_extensions()


def test_a_call_cut_off_by_the_end_of_the_loop_serving_it_raises_loop_ended(nc, testext, support_dir,
                                                                          venv_root):
    """The sandbox's loop is an ``asyncio.run`` in another thread that returns while this
    thread's call is in flight there: LoopEnded names the pack and the method; once that
    loop is closed, the next call starts a sandbox on this thread's loop."""
    m = _manager(nc, testext, venv_root)
    loaded = threading.Event()
    box = {}

    async def serve():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-cut"))
        await ext.aecho(0)
        box["ext"] = ext
        loaded.set()
        for _ in range(3000):  # until this thread's call waits here (a guard, not a timing)
            if ext._workers[0].inflight:
                return
            await asyncio.sleep(0.01)

    t = threading.Thread(target=asyncio.run, args=(serve(),))
    t.start()
    try:
        assert loaded.wait(120)
        ext = box["ext"]

        async def here():
            with pytest.raises(nc.LoopEnded, match=r"pack 'loops-cut': asleep\(\) was cut off"):
                await ext.asleep(30)
            await asyncio.get_running_loop().run_in_executor(None, t.join, 60)  # that loop is closed now
            return await _both(ext, "after")

        assert asyncio.run(here()) > 0
    finally:
        t.join(60)
        m.stop_all_extensions()


def test_a_caller_cancelling_a_call_handed_to_another_loop_gets_cancelled_error(nc, testext, support_dir,
                                                                              venv_root):
    """A call served by the sandbox's loop in another thread, cancelled by its caller: a
    CancelledError for the caller (not LoopEnded: that loop lives on), the worker's call
    cancelled too, and the extension goes on."""
    m = _manager(nc, testext, venv_root)
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever)
    t.start()

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-cancel"))
        return ext, await _both(ext, "a")

    try:
        ext, pid = asyncio.run_coroutine_threadsafe(first(), lp).result(120)

        async def here():
            task = asyncio.ensure_future(ext.asleep(60))
            for _ in range(3000):  # until it waits over there (a guard, not a timing)
                if ext._workers[0].inflight:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(3000):  # the wait over there ended too
                if not ext._workers[0].inflight:
                    break
                await asyncio.sleep(0.01)
            assert not ext._workers[0].inflight
            return await _burst(ext, "after")

        assert asyncio.run(here()) == pid
    finally:
        asyncio.run_coroutine_threadsafe(m.stop_all_extensions(), lp).result(60)
        lp.call_soon_threadsafe(lp.stop)
        t.join(30)
        lp.close()


def test_a_synchronous_call_that_needs_a_worker_from_a_loop_that_ends_raises_loop_ended(nc, testext, support_dir,
                                                                                       venv_root):
    """A synchronous call from a thread without a loop, when no worker lives: the worker is
    started on the sandbox's loop, in another thread; that loop ends before running it.
    LoopEnded, not a wait without end (it was: .result() with no end)."""
    m = _manager(nc, testext, venv_root)
    lp = asyncio.new_event_loop()

    def serve():
        lp.run_forever()
        lp.close()

    t = threading.Thread(target=serve)
    t.start()

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, "loops-sync-start"))
        await ext.aecho(0)
        w = ext._workers[0]
        ext._retire(w)  # no live worker: the next call starts one
        w.kill()
        return ext

    try:
        ext = asyncio.run_coroutine_threadsafe(first(), lp).result(120)
        block, handed = threading.Event(), threading.Event()
        lp.call_soon_threadsafe(block.wait)  # the loop is busy until its end is queued
        pick = ext._pick_worker

        def picking():
            handed.set()
            return pick()

        ext._pick_worker = picking
        out = {}

        def call():
            try:
                out["v"] = ext.call_sync("double", 2)
            except BaseException as e:  # noqa: BLE001 - asserted below
                out["e"] = e

        c = threading.Thread(target=call)
        c.start()
        assert handed.wait(60)
        lp.call_soon_threadsafe(lp.stop)  # before or after the start is queued: either way never run
        block.set()
        t.join(60)
        c.join(60)
        assert not c.is_alive(), "hung"
        assert isinstance(out.get("e"), nc.LoopEnded), out
        assert "starting a worker" in str(out["e"])
        del ext._pick_worker
        assert asyncio.run(_burst(ext, "after")) > 0  # a sandbox on this loop
    finally:
        block.set()
        t.join(30)
        m.stop_all_extensions()
