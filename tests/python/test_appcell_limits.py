"""A memory hog in an app cell: packs forked from one zygote share the cell's memory limit; the
pack that runs past it is the one killed (its call fails naming the limit, its next call gets a
fresh fork), while its neighbour's worker and the zygote live on. Real sandbox, real cgroup
limit, real torch in the zygote."""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from studio_support import FIXTURES, _run_prompt, forget_app, host_pid, parent_pid, world_readable_copy

pytest_plugins = ["studio_fixtures"]

LIMIT = "1500MB"
HOG_INIT = '''
import os


class Hog:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mb": ("INT", {"default": 0, "min": 0, "max": 1 << 20})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "hog"

    def run(self, mb):
        held = []
        while len(held) * 64 < mb:  # 64 MB at a time, every page touched
            held.append(os.urandom(1) * (64 << 20))
        return (str(os.getpid()),)


NODE_CLASS_MAPPINGS = {"%s Hog": Hog}
'''
HOGS = {"NC-HogA": "nc-hog-a", "NC-HogB": "nc-hog-b"}


def _hog(app, folder, mb):
    return _run_prompt(app.aloop.run, app.server, {"1": {"class_type": f"{folder} Hog", "inputs": {"mb": mb}}}, ["1"])


def _live(ext):
    return {host_pid(w.pidfd) for w in ext._workers if w.alive}


@pytest.fixture(scope="module")
def app(aloop, studio_venv_root):
    d = Path(tempfile.mkdtemp(prefix="nodecell-appcell-limits-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    root = world_readable_copy(FIXTURES / "studio_app", d / "ComfyUI")
    for folder, name in HOGS.items():
        pack = root / "custom_nodes" / folder
        pack.mkdir(mode=0o755, parents=True)
        os.chmod(pack, 0o755)
        (pack / "__init__.py").write_text(HOG_INIT % folder)
        (pack / "manifest.yaml").write_text(f"name: {name}\nversion: 0.1.0\nisolated: true\nshare_torch: true\n"
                                            f"dependencies: []\nsandbox:\n  max_memory: {LIMIT}\n")
        for f in pack.iterdir():
            os.chmod(f, 0o644)
    for sub in ("output", "temp", "input", "user"):
        (root / sub).mkdir(mode=0o755, exist_ok=True)
        os.chmod(root / sub, 0o755)
    sys.path.insert(0, str(root))
    import utils  # noqa: F401 - first, as the app's main.py
    import nodes
    import server
    from nodecell import studio

    class App:
        pass

    a = App()
    a.root, a.aloop = root, aloop

    async def load():
        srv = server.PromptServer(asyncio.get_running_loop())
        host = studio.StudioHost(str(studio_venv_root), state=str(d / "state"), app_cell=True,
                                 app_preload=["nodes", "server"])
        names = {}
        for folder in HOGS:
            names[folder] = await host.load_custom_node(str(root / "custom_nodes" / folder),
                                                        nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
        return srv, host, names

    a.server, a.host, a.names = aloop.run(load())
    yield a

    aloop.run(a.host.stop())
    for names in a.names.values():
        for n in names:
            nodes.NODE_CLASS_MAPPINGS.pop(n, None)
    forget_app(root)
    shutil.rmtree(d, ignore_errors=True)


def test_the_pack_past_the_app_cells_memory_limit_is_killed_and_its_neighbour_lives_on(app):
    from nodecell.appcell import PackView

    a, b = app.host.packs["nc-hog-a"], app.host.packs["nc-hog-b"]
    assert isinstance(a._cell, PackView) and a._cell.app_cell == b._cell.app_cell
    # the control: both answer, small allocations fit
    for folder in HOGS:
        run = _hog(app, folder, 64)
        assert run.success, run.errors
    b_pids, a_pids = _live(b), _live(a)
    (zygote,) = {parent_pid(p) for p in a_pids | b_pids}
    # A allocates without end: the cell's limit stops it, A's call fails naming the limit
    run = _hog(app, "NC-HogA", 1 << 20)
    assert not run.success
    err = str(run.errors)
    assert "memory limit" in err and "nc-hog-a" in err, err
    # B's worker and the zygote were not touched: same processes, B answers
    assert _live(b) == b_pids and os.path.exists(f"/proc/{zygote}")
    run = _hog(app, "NC-HogB", 64)
    assert run.success, run.errors
    assert _live(b) == b_pids
    # A answers again, from a fresh fork of the same zygote
    run = _hog(app, "NC-HogA", 64)
    assert run.success, run.errors
    assert _live(a).isdisjoint(a_pids) and {parent_pid(p) for p in _live(a)} == {zygote}
