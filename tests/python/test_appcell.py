"""App cells (nodecell.appcell): packs of a host app forked from one zygote that imported torch and the app.

The stand-in app (tests/fixtures/studio_app) with two compatible packs and one whose venv pins
numpy 1.26 (the app cell's zygote imported numpy 2): the two share the app cell (their workers are
children of the same zygote, which preloaded the app's ``nodes`` module) and work through the app's
own executor; the third gets its own cell and says why; a restart is a fork of the same zygote.
Real sandboxes, real venvs, real torch."""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from studio_support import FIXTURES, world_readable_copy

pytest_plugins = ["studio_fixtures"]

PACKS = ("NC-Showcase", "NC-Entry")
NP1_INIT = '''
import numpy


class NumpyVersion:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "np1"

    def run(self):
        return (numpy.__version__,)


NODE_CLASS_MAPPINGS = {"NP1 Version": NumpyVersion}
'''
NP1_MANIFEST = "name: nc-numpy1\nversion: 0.1.0\nisolated: true\nshare_torch: true\ndependencies:\n  - numpy==1.26.4\n"


def _host_pid(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise AssertionError("no Pid in the pidfd's fdinfo")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise AssertionError("no PPid")


def _parents(ext):
    """Host pids of the parents (zygotes) of the extension's live workers."""
    return {_ppid(_host_pid(w.pidfd)) for w in ext._workers if w.alive}


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def _run_prompt(aloop, srv, prompt, outputs):
    import execution

    ex = execution.PromptExecutor(srv)
    t = threading.Thread(target=ex.execute, args=(prompt, f"p{time.monotonic_ns()}", {}, outputs))
    t.start()

    async def wait():
        while t.is_alive():
            await asyncio.sleep(0.01)

    aloop.run(wait())
    return ex


@pytest.fixture(scope="module")
def app(aloop, studio_venv_root):
    d = Path(tempfile.mkdtemp(prefix="nodecell-appcell-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    root = world_readable_copy(FIXTURES / "studio_app", d / "ComfyUI")
    for p in PACKS:
        world_readable_copy(FIXTURES / "packs" / p, root / "custom_nodes" / p)
    np1 = root / "custom_nodes" / "NC-Numpy1"
    np1.mkdir(mode=0o755)
    os.chmod(np1, 0o755)
    (np1 / "__init__.py").write_text(NP1_INIT)
    (np1 / "manifest.yaml").write_text(NP1_MANIFEST)
    for f in np1.iterdir():
        os.chmod(f, 0o644)
    for sub in ("output", "temp", "input", "user"):
        (root / sub).mkdir(mode=0o755)
        os.chmod(root / sub, 0o755)
    sys.path.insert(0, str(root))
    import utils  # noqa: F401 - first, as the app's main.py (its nodes.py puts comfy/ first on sys.path)
    import comfy.cli_args
    import nodes
    import server

    comfy.cli_args.args.cpu = True
    from nodecell import studio

    class App:
        pass

    a = App()
    a.root, a.aloop = root, aloop

    async def load():
        srv = server.PromptServer(asyncio.get_running_loop())
        host = studio.StudioHost(str(studio_venv_root), state=str(d / "state"), app_cell=True,
                                 app_preload=["nodes", "server", "numpy"])
        names = {}
        for p in PACKS:
            names[p] = await host.load_custom_node(str(root / "custom_nodes" / p), nodes.NODE_CLASS_MAPPINGS,
                                                   nodes.NODE_DISPLAY_NAME_MAPPINGS)
        # The app's requirements are shared from the host: numpy 2 unless the pack is told otherwise.
        names["NC-Numpy1"] = await host.load_custom_node(str(np1), nodes.NODE_CLASS_MAPPINGS,
                                                         nodes.NODE_DISPLAY_NAME_MAPPINGS, share=["aiohttp"])
        return srv, host, names

    a.server, a.host, a.names = aloop.run(load())
    yield a

    aloop.run(a.host.stop())
    for names in a.names.values():
        for n in names:
            nodes.NODE_CLASS_MAPPINGS.pop(n, None)
    sys.path.remove(str(root))
    for m in [m for m in sys.modules if m.split(".")[0] in (
            "comfy", "comfy_api", "comfy_execution", "folder_paths", "nodes", "server", "execution", "node_helpers",
            "utils", "app")]:
        del sys.modules[m]
    shutil.rmtree(d, ignore_errors=True)


def test_compatible_packs_are_forked_from_one_zygote_that_preloaded_the_app(app):
    from nodecell.appcell import PackView

    show, entry = app.host.packs["nc-showcase"], app.host.packs["nc-entry"]
    assert isinstance(show._cell, PackView) and isinstance(entry._cell, PackView)
    assert show._cell.app_cell == entry._cell.app_cell
    zygotes = _parents(show) | _parents(entry)
    assert len(zygotes) == 1, zygotes
    (zygote,) = zygotes
    cmd = _cmdline(zygote)
    assert "nodecell._worker" in cmd and "--preload" in cmd and "nodes" in cmd, cmd
    info = show._cell.zygote_info
    assert {"torch", "nodes", "server", "numpy", "nodecell.studio._ext"} <= set(info["preloaded"]) and not info["errors"], info
    # each worker is its pack's: its own environment and name
    assert show.worker_versions["numpy"].startswith("2.")
    walls = {w["name"]: w for w in show.walls}
    assert walls["seccomp"]["state"] == "active"
    assert walls["pack-separation"]["state"] == "missing" and "nc-entry" in walls["pack-separation"]["detail"]


def test_packs_in_the_app_cell_work_through_the_apps_executor(app):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "seed": 3}},
        "2": {"class_type": "SC Invert", "inputs": {"image": ["1", 0], "steps": 1, "delay": 0.0}},
        "3": {"class_type": "NCTint", "inputs": {"image": ["2", 0], "amount": 0.3, "mode": "soft"}},
        "4": {"class_type": "NP1 Version", "inputs": {}},
    }
    run = _run_prompt(app.aloop, app.server, prompt, ["3", "4"])
    assert run.success, run.errors
    img = run.outputs["2"][0]
    assert tuple(img.shape) == (1, 16, 32, 3)
    assert run.outputs["3"][1] == {"colors": [1, 2, 3], "by": "3"}
    assert run.outputs["4"] == ("1.26.4",)


def test_a_pack_whose_venv_changes_an_imported_distribution_gets_its_own_cell(app):
    from nodecell.appcell import PackView

    np1 = app.host.packs["nc-numpy1"]
    assert not isinstance(np1._cell, PackView)
    why = app.host.manager._app_cells.own_cell["nc-numpy1"]
    assert "numpy 1.26.4" in why and "zygote imported 2." in why, why
    shared = _parents(app.host.packs["nc-showcase"])
    assert _parents(np1).isdisjoint(shared)
    assert "pack-separation" not in {w["name"] for w in np1.walls}
    assert np1.worker_versions["numpy"] == "1.26.4"


def test_a_restart_is_a_fork_of_the_same_zygote(app):
    entry = app.host.packs["nc-entry"]
    before_zygote = _parents(entry)
    before_pids = {w.pidfd and _host_pid(w.pidfd) for w in entry._workers}

    async def restart():
        t0 = time.perf_counter()
        await entry.restart()
        return time.perf_counter() - t0

    app.aloop.run(restart())
    assert _parents(entry) == before_zygote
    assert {_host_pid(w.pidfd) for w in entry._workers}.isdisjoint(before_pids)
    # and it still works
    run = _run_prompt(app.aloop, app.server, {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "seed": 1}},
        "2": {"class_type": "NCTint", "inputs": {"image": ["1", 0], "amount": 0.1, "mode": "hard"}}}, ["2"])
    assert run.success, run.errors


def test_the_zygotes_death_fails_its_packs_calls_and_the_next_call_starts_a_fresh_app_cell(app):
    import signal

    from nodecell import WorkerCrashed
    from nodecell.appcell import PackView

    show, entry = app.host.packs["nc-showcase"], app.host.packs["nc-entry"]
    (zygote,) = _parents(show) | _parents(entry)
    old_cell = show._cell.app_cell
    os.kill(zygote, signal.SIGKILL)

    async def settle():
        for _ in range(500):
            if show._cell.dead and entry._cell.dead and not show._workers and not entry._workers:
                return
            await asyncio.sleep(0.01)

    app.aloop.run(settle())
    assert show._cell.dead and entry._cell.dead
    assert isinstance(show.last_crash, WorkerCrashed) and isinstance(entry.last_crash, WorkerCrashed)
    # the next call starts a fresh app cell, shared again
    run = _run_prompt(app.aloop, app.server, {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "seed": 1}},
        "2": {"class_type": "SC Invert", "inputs": {"image": ["1", 0], "steps": 1, "delay": 0.0}},
        "3": {"class_type": "NCTint", "inputs": {"image": ["2", 0], "amount": 0.1, "mode": "hard"}}}, ["3"])
    assert run.success, run.errors
    assert isinstance(show._cell, PackView) and show._cell.app_cell == entry._cell.app_cell != old_cell
    assert len(_parents(show) | _parents(entry)) == 1 and zygote not in _parents(show)
