"""A worker that crashes, hangs, hogs memory or breaks the protocol: the host stays up,
the call fails with a clear exception, the next call gets a fresh worker."""
from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import textwrap

import pytest

from conftest import REPO, pack


@pytest.fixture(scope="module")
def fragile(aloop, manager, nc, support_dir):
    async def load():
        return await manager.load_extension(nc.ExtensionConfig(
            name="fragile", module_path=pack(support_dir, "hostile"), timeout=3,
            max_memory="200MB", max_pids=64))

    return aloop.run(load())


def test_exit_fails_the_call_and_restarts(aloop, fragile, nc):
    before = aloop.run(fragile.whoami())["pid"]
    with pytest.raises(nc.WorkerCrashed) as e:
        aloop.run(fragile.exit_now(7))
    assert e.value.reason == "exited" and e.value.exit_code == 7
    assert "status 7" in str(e.value)
    after = aloop.run(fragile.whoami())["pid"]
    assert after != before


def test_segfault(aloop, fragile, nc):
    import signal

    with pytest.raises(nc.WorkerCrashed) as e:
        aloop.run(fragile.segfault())
    assert e.value.reason == "signal" and e.value.signal == signal.SIGSEGV
    assert "SIGSEGV" in str(e.value)
    assert aloop.run(fragile.double(4)) == 8


def test_timeout_kills_and_restarts(aloop, fragile, nc):
    with pytest.raises(nc.CallTimeout) as e:
        aloop.run(fragile.sleep(30))
    assert e.value.timeout == 3
    assert aloop.run(fragile.double(5)) == 10


def test_async_timeout(aloop, fragile, nc):
    with pytest.raises(nc.CallTimeout):
        aloop.run(fragile.asleep(30))
    assert aloop.run(fragile.noop()) is None


def test_memory_hog_is_killed_by_its_limit(aloop, fragile, nc):
    with pytest.raises(nc.WorkerCrashed) as e:
        aloop.run(fragile.hog(1024))
    assert e.value.reason == "memory", e.value
    assert "memory limit" in str(e.value)
    assert aloop.run(fragile.double(6)) == 12


def test_pending_calls_fail_together(aloop, fragile, nc):
    async def go():
        slow = [asyncio.ensure_future(fragile.asleep(2)) for _ in range(5)]
        await asyncio.sleep(0.1)
        crash = asyncio.ensure_future(fragile.exit_now(3))
        return await asyncio.gather(*slow, crash, return_exceptions=True)

    results = aloop.run(go())
    assert all(isinstance(r, nc.WorkerCrashed) for r in results), results
    assert aloop.run(fragile.noop()) is None


def test_hostile_worker_corrupting_the_ring(aloop, fragile, basic_ext, nc):
    with pytest.raises(nc.WorkerCrashed) as e:
        aloop.run(fragile.corrupt_ring())
    assert e.value.reason in ("protocol", "exited", "signal"), e.value
    # The host is fine, the other extension is untouched, the hostile one restarts.
    assert aloop.run(basic_ext.double(21)) == 42
    assert aloop.run(fragile.double(2)) == 4


def test_unsendable_argument_fails_locally(aloop, fragile):
    import threading

    lock = threading.Lock()
    # A lock crosses as a handle: the worker can hold it but the call works.
    assert aloop.run(fragile.types_of(lock)) == ["RemoteObject"]


def test_provision_error_carries_uv_message(aloop, manager, nc, support_dir):
    async def go():
        ext = manager.load_extension(nc.ExtensionConfig(
            name="broken-deps", module_path=pack(support_dir, "basic"),
            dependencies=["nodecell-this-package-does-not-exist==99.0"]))
        try:
            await ext.start()
        finally:
            await ext.stop()

    with pytest.raises(nc.ProvisionError) as e:
        aloop.run(go())
    msg = str(e.value)
    assert "nodecell-this-package-does-not-exist" in msg
    assert "not found" in msg.lower() or "no solution" in msg.lower() or "because" in msg.lower(), msg


ROOTLESS_USER = "nodecell-test"


def _ensure_user() -> str:
    try:
        pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        ROOTLESS_USER], check=True)
    return ROOTLESS_USER


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the unprivileged test user")
def test_rootless_host_and_sandbox_unavailable(support_dir, venv_root, tmp_path):
    """As an unprivileged user: the API works, and a wall the user cannot have
    (a memory limit without a delegated cgroup) raises SandboxUnavailable in
    required mode and runs with a warning in best-effort mode."""
    user = _ensure_user()
    script = support_dir / "rootless_probe.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys, json
        sys.path.insert(0, {str(support_dir)!r})
        import nodecell, nc_testext
        async def main():
            m = nodecell.ExtensionManager(nc_testext.TestExt, nodecell.ExtensionManagerConfig(
                venv_root_path="/tmp/nodecell-rootless-venvs"))
            out = {{}}
            ext = await m.load_extension(nodecell.ExtensionConfig(
                name="rl", module_path={pack(support_dir, "basic")!r}))
            out["whoami"] = await ext.whoami()
            await ext.stop()
            try:
                e2 = await m.load_extension(nodecell.ExtensionConfig(
                    name="rl-mem", module_path={pack(support_dir, "basic")!r}, max_memory="256MB"))
                out["required"] = "started"
            except nodecell.SandboxUnavailable as e:
                out["required"] = "unavailable"
                out["walls"] = e.walls
                out["message"] = str(e)
            e3 = await m.load_extension(nodecell.ExtensionConfig(
                name="rl-be", module_path={pack(support_dir, "basic")!r}, max_memory="256MB",
                sandbox_mode="best-effort"))
            out["best_effort"] = await e3.double(4)
            out["be_missing"] = [w["name"] for w in e3.walls if w["state"] == "missing"]
            await m.stop_all_extensions()
            print(json.dumps(out))
        asyncio.run(main())
    """))
    os.chmod(script, 0o644)
    env = {"PATH": f"{REPO}/.venv/bin:/usr/bin:/bin", "HOME": "/tmp", "UV_CACHE_DIR": "/tmp/nodecell-rootless-uv",
           "UV_PYTHON_DOWNLOADS": "never"}
    r = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                        f"{REPO}/.venv/bin/python", str(script)], capture_output=True, text=True, env=env,
                       timeout=300, cwd="/tmp")
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    uid = pwd.getpwnam(user).pw_uid
    assert out["whoami"]["uid"] == uid
    assert out["required"] == "unavailable", out
    assert "memory-limit" in out["walls"], out
    assert out["best_effort"] == 8
    assert "memory-limit" in out["be_missing"]
