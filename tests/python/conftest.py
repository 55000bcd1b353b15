"""Shared fixtures for the Python tests: a world-readable copy of the support files,
a persistent venv cache, and one asyncio loop (in a thread) that every test's
coroutines run on, so extensions loaded once can serve many tests.

Sandboxed workers run as host uid 65534 when the tests run as root, so every file
they read must be world-readable: pytest's own tmp dirs (mode 0700) are not.

The skip policy (skip_policy.py) is loaded here: a skip not on its short, justified
list is reported as a failure.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Tuple

import pytest
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV_ROOT = Path(os.environ.get("NODECELL_TEST_VENV_ROOT", "/var/tmp/nodecell-tests/venvs"))


def _world_readable(p: Path) -> None:
    for root, dirs, files in os.walk(p):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


@pytest.fixture(scope="session")
def support_dir():
    d = Path(tempfile.mkdtemp(prefix="nodecell-support-", dir="/var/tmp"))
    shutil.copytree(HERE / "support", d, dirs_exist_ok=True)
    _world_readable(d)
    os.chmod(d, 0o755)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def venv_root():
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    for p in [VENV_ROOT, *VENV_ROOT.parents]:
        if str(p) in ("/", "/var", "/var/tmp"):
            break
        os.chmod(p, 0o755)
    return VENV_ROOT


class LoopThread:
    """An asyncio loop running in a background thread; ``run(coro)`` waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def aloop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def nc(support_dir):
    import nodecell

    return nodecell


@pytest.fixture(scope="session")
def testext(support_dir):
    import nc_testext

    return nc_testext


@pytest.fixture(scope="session")
def manager(aloop, nc, testext, venv_root):
    """One manager for the session; extensions it loads are stopped at the end."""

    async def make():
        return nc.ExtensionManager(testext.TestExt, nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))

    m = aloop.run(make())
    yield m

    async def stop():
        await m.stop_all_extensions()

    aloop.run(stop())


def pack(support_dir: Path, name: str) -> str:
    return str(support_dir / "packs" / name)


@pytest.fixture(scope="session")
def basic_ext(aloop, manager, nc, testext, support_dir):
    """The basic pack (no dependencies, share_torch) with the Registry service."""

    async def load():
        ext = await manager.load_extension(nc.ExtensionConfig(
            name="basic", module_path=pack(support_dir, "basic"), share_torch=True,
            apis=[testext.Registry], timeout=60))
        testext.HOST_EXTENSIONS["basic"] = ext
        return ext

    return aloop.run(load())


def rss_mb(pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


# mypy's stubtest of the compiled module (test_stubs.py): about 50 s of one CPU, mostly
# typeshed's analysis (stubtest turns mypy's cache off). It starts as soon as the tests are
# collected and runs beside the tests before test_stubs.py, which waits for its result.
STUBTEST = [sys.executable, "-m", "mypy.stubtest", "nodecell._nodecell"]
STUBTEST_TEST = "test_stubs.py::test_stubtest_on_the_extension_module"
STUBTEST_RUN = pytest.StashKey[Tuple[subprocess.Popen, IO[bytes]]]()


def start_stubtest() -> Tuple[subprocess.Popen, IO[bytes]]:
    """Starts stubtest (from /tmp, so this checkout's sources are not what it imports); its
    output goes to a temporary file (a pipe nobody reads could fill and stall it)."""
    out = tempfile.TemporaryFile()
    return subprocess.Popen(STUBTEST, stdout=out, stderr=subprocess.STDOUT, cwd="/tmp"), out


def _end(run: Tuple[subprocess.Popen, IO[bytes]]) -> None:
    proc, out = run
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    out.close()


def stubtest_result(config: pytest.Config, timeout: float = 600) -> Tuple[int, str, bool]:
    """Stubtest's exit status, its output, and whether it was the run started after collection."""
    early = config.stash.get(STUBTEST_RUN, None)
    if early is not None:
        del config.stash[STUBTEST_RUN]
    proc, out = early or start_stubtest()
    try:
        rc = proc.wait(timeout)
        out.seek(0)
        return rc, out.read().decode(errors="replace"), early is not None
    finally:
        _end((proc, out))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start stubtest early when its test is among the selected ones."""
    if any(item.nodeid.endswith(STUBTEST_TEST) for item in session.items):
        session.config.stash[STUBTEST_RUN] = start_stubtest()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A stubtest whose test did not run (stopped early, -x) is ended, not left behind."""
    run = session.config.stash.get(STUBTEST_RUN, None)
    if run is not None:
        del session.config.stash[STUBTEST_RUN]
        _end(run)


_ = stat
