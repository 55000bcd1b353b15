"""nodecell's own API behaves the way code written for pyisolate 0.10 expects (issue 12):
event loops that come and go, stopping without ``await``, ``PYISOLATE_CHILD``, names
normalized instead of rejected, config fields that fail loudly, and a handle that never
shadows the extension's methods nor turns unknown names into remote calls.

Real sandboxes, real workers; each test uses its own manager and event loops.
"""
from __future__ import annotations

import asyncio
import glob
import os
import shutil
import tempfile
import threading
import time

import pytest

from conftest import pack


def _children() -> set:
    me = str(os.getpid())
    out = set()
    for d in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.add(int(d.split("/")[2]))
    return out


def _wait_gone(before: set, timeout: float = 10.0) -> set:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _children() - before
        if not left:
            return left
        time.sleep(0.05)
    return _children() - before


@pytest.fixture
def shadow(support_dir):
    import nc_compat_ext

    return nc_compat_ext


@pytest.fixture
def mark_dir():
    d = tempfile.mkdtemp(prefix="nc-compat-mark-", dir="/var/tmp")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _manager(nc, ext_type, venv_root):
    return nc.ExtensionManager(ext_type, nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))


def _cfg(nc, support_dir, name="shadow", **kw):
    return nc.ExtensionConfig(name=name, module_path=pack(support_dir, "basic"), **kw)


# -- the handle never shadows the extension, never invents calls -----------------------------------

def test_proxy_reaches_methods_the_handle_shadows(aloop, nc, shadow, support_dir, venv_root):
    async def go():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        ext = await m.load_extension(_cfg(nc, support_dir))
        try:
            return (await ext.proxy.call(7), await ext.proxy.start(), await ext.proxy.config(),
                    await ext.call("call", 8))
        finally:
            await m.stop_all_extensions()

    assert aloop.run(go()) == (("call", 7), "start", "config", ("call", 8))


def test_unknown_attributes_raise_instead_of_calling(aloop, nc, shadow, support_dir, venv_root):
    async def go():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        ext = await m.load_extension(_cfg(nc, support_dir, name="unknown"))
        try:
            with pytest.raises(AttributeError, match="register_event_handler"):
                ext.register_event_handler  # noqa: B018 - pyisolate's handle API, not the extension's
            with pytest.raises(AttributeError, match="no_such_method"):
                ext.proxy.no_such_method  # noqa: B018
            with pytest.raises(AttributeError):
                ext._private  # noqa: B018
            return await ext.pid()
        finally:
            await m.stop_all_extensions()

    assert isinstance(aloop.run(go()), int)


# -- worker environment and names ------------------------------------------------------------------

def test_workers_see_pyisolate_child(aloop, nc, shadow, support_dir, venv_root):
    async def go():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        ext = await m.load_extension(_cfg(nc, support_dir, name="child-env"))
        try:
            return await ext.env("PYISOLATE_CHILD")
        finally:
            await m.stop_all_extensions()

    assert aloop.run(go()) == "1"


def test_names_with_spaces_and_unicode_are_normalized(aloop, nc, shadow, support_dir, venv_root):
    cfg = _cfg(nc, support_dir, name="Mon pack à moi | 你好")
    assert cfg["name"] == "Mon pack à moi | 你好"
    assert cfg["normalized_name"] == "Mon_pack_à_moi_你好"
    assert nc.config.normalize_name("../My Extension| rm -rf /") == "My_Extension_rm_-rf"
    for bad in ("", "////", None, "a\0b"):
        with pytest.raises(nc.ConfigError) as e:
            nc.ExtensionConfig(name=bad, module_path="/tmp")
        assert e.value.field == "name"

    async def go():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        ext = await m.load_extension(cfg)
        try:
            return m.extensions.get("Mon pack à moi | 你好") is ext, await ext.env("NODECELL_PACK")
        finally:
            await m.stop_all_extensions()

    assert aloop.run(go()) == (True, "Mon pack à moi | 你好")


def test_fields_nodecell_cannot_honour_fail_naming_the_field(nc):
    base = {"name": "x", "module_path": "/tmp"}
    for field, value in (("package_manager", "conda"), ("conda_channels", ["conda-forge"]),
                         ("conda_dependencies", ["eccodes"]), ("conda_platforms", ["linux-64"]),
                         ("cuda_wheels", {"index_url": "https://x/", "packages": ["a"]}),
                         ("sealed_host_ro_paths", ["/opt"]), ("execution_model", "in-process")):
        with pytest.raises(nc.ConfigError) as e:
            nc.ExtensionConfig({**base, field: value})
        assert e.value.field == field, (field, e.value)
    with pytest.raises(nc.ConfigError) as e:
        nc.ExtensionConfig({**base, "execution_model": "sealed_worker", "share_torch": True})
    assert e.value.field == "execution_model" and "share_torch" in str(e.value)
    # The values nodecell honours are kept, not dropped.
    cfg = nc.ExtensionConfig({**base, "execution_model": "sealed_worker", "package_manager": "uv"})
    assert cfg["execution_model"] == "sealed_worker" and cfg["package_manager"] == "uv"
    assert nc.ExtensionConfig(base)["execution_model"] == "host-coupled"
    # A config round-trips through the constructor (derived keys are accepted back).
    assert nc.ExtensionConfig(dict(cfg)) == cfg


# -- event loops come and go ----------------------------------------------------------------------

def test_calls_and_stop_work_across_event_loops(nc, shadow, support_dir, venv_root):
    kids0 = _children()
    m = _manager(nc, shadow.ShadowExt, venv_root)

    async def first():
        ext = await m.load_extension(_cfg(nc, support_dir, name="loops"))
        return ext, await ext.pid()

    ext, pid1 = asyncio.run(first())  # this loop is closed afterwards
    assert _children() - kids0, "the sandbox outlives the loop that started it"

    async def later():
        return await ext.pid(), await ext.proxy.call(1)

    for _ in range(3):  # each call on a fresh loop, again and again
        pid, called = asyncio.run(later())
        assert called == ("call", 1)
    assert isinstance(pid1, int) and isinstance(pid, int)

    async def stop():
        await ext.stop()

    asyncio.run(stop())
    assert _wait_gone(kids0) == set(), "stop() from a new loop ended the sandbox"
    with pytest.raises(nc.ExtensionStopped):
        asyncio.run(later())


def test_calls_from_another_threads_loop_are_served_by_the_sandboxs_loop(aloop, nc, shadow, support_dir,
                                                                          venv_root):
    async def load():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        return m, await m.load_extension(_cfg(nc, support_dir, name="threads"))

    m, ext = aloop.run(load())
    results = []

    def other_thread():
        async def go():
            return await ext.pid(), await ext.proxy.call("x")

        results.append(asyncio.run(go()))

    try:
        ts = [threading.Thread(target=other_thread) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert len(results) == 3 and len({r[0] for r in results}) == 1, results
        assert all(r[1] == ("call", "x") for r in results)
        assert ext._cell is not None and ext._cell.loop is aloop.loop, "the sandbox stayed on its own loop"
    finally:
        aloop.run(_stop_all(m))


def test_sandboxes_on_two_live_loops_do_not_steal_each_others_events(aloop, nc, shadow, support_dir,
                                                                        venv_root):
    """The reactor is one per process; each loop's reader may drain events of the other's
    workers, which must reach their own loop (they were dropped: calls hung)."""

    async def load_a():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        return m, await m.load_extension(_cfg(nc, support_dir, name="loop-a"))

    ma, a = aloop.run(load_a())
    done = []

    def hammer_a():
        async def go():
            for i in range(150):
                assert await a.proxy.call(i) == ("call", i)
        aloop.run(go(), timeout=120)
        done.append("a")

    async def on_b():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        b = await m.load_extension(_cfg(nc, support_dir, name="loop-b"))
        t = threading.Thread(target=hammer_a)
        t.start()
        try:
            for i in range(150):
                assert await asyncio.wait_for(b.proxy.call(i), 30) == ("call", i)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 150)
            await m.stop_all_extensions()

    try:
        asyncio.run(on_b())
        assert done == ["a"]
    finally:
        aloop.run(_stop_all(ma))


async def _stop_all(m):
    await m.stop_all_extensions()


# -- stop_all_extensions ----------------------------------------------------------------------------

def test_stop_all_without_await_inside_a_running_loop_really_stops(nc, shadow, support_dir, venv_root,
                                                                    mark_dir):
    kids0 = _children()

    async def go():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        ext = await m.load_extension(_cfg(nc, support_dir, name="unawaited", env={"NC_STOP_MARK": mark_dir},
                                          sandbox={"writable_paths": [mark_dir]}))
        await ext.pid()
        assert _children() - kids0
        m.stop_all_extensions()  # no await: pyisolate's synchronous call
        left = _children() - kids0  # checked before this coroutine yields once
        return m, ext, left

    m, ext, left = asyncio.run(go())
    assert left == set(), "the sandboxes ended before stop_all_extensions() returned"
    assert m.extensions == {}
    with pytest.raises(nc.ExtensionStopped):
        asyncio.run(ext.pid())
    assert os.listdir(mark_dir) == [], "ended at once: no stop() hook ran"


def test_stop_all_awaited_is_graceful_and_forgets_the_names(nc, shadow, support_dir, venv_root, mark_dir):
    kids0 = _children()

    async def go():
        m = _manager(nc, shadow.ShadowExt, venv_root)
        cfg = _cfg(nc, support_dir, name="awaited", env={"NC_STOP_MARK": mark_dir},
                   sandbox={"writable_paths": [mark_dir]})
        ext = await m.load_extension(cfg)
        await ext.pid()
        await m.stop_all_extensions()
        assert m.extensions == {}
        again = await m.load_extension(cfg)  # the name is free again
        r = await again.proxy.start()
        task = asyncio.ensure_future(m.stop_all_extensions())  # a task of it works too
        await task
        return r

    assert asyncio.run(go()) == "start"
    assert _wait_gone(kids0) == set()
    assert len(os.listdir(mark_dir)) == 2, "each worker's stop() hook ran"


def test_stop_all_from_sync_code_after_the_loop_closed(nc, shadow, support_dir, venv_root):
    kids0 = _children()
    m = _manager(nc, shadow.ShadowExt, venv_root)

    async def load():
        ext = await m.load_extension(_cfg(nc, support_dir, name="closed-loop"))
        return await ext.pid()

    asyncio.run(load())
    assert _children() - kids0
    m.stop_all_extensions()
    assert _wait_gone(kids0) == set()
