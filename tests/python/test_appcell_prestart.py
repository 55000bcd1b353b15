"""App cells started early (nodecell.studio.prestart), as from a ComfyUI prestartup script.

``studio.prestart`` runs with no event loop in the calling thread (as in ComfyUI's prestartup
step); it sorts the packs into kinds by the versions their venvs give the app's shared
distributions and launches one app cell per kind on threads. The packs' loads, later, on the
host's loop, adopt those cells: the first pack forks from the early cell (no other cell is
started), a pack pinning numpy 1.26 forks from the early cell of its kind, and an early start
that died is reported with its reason while the first pack starts the app cell itself.
Real sandboxes, real venvs, real torch (the stand-in app, tests/fixtures/studio_app)."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from studio_support import FIXTURES, forget_app, world_readable_copy, write_numpy1_pack

pytest_plugins = ["studio_fixtures"]

PACKS = ("NC-Showcase", "NC-Entry")
PRELOAD = ["nodes", "server", "numpy"]


@pytest.fixture(scope="module")
def app(aloop, studio_venv_root):
    d = Path(tempfile.mkdtemp(prefix="nodecell-prestart-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    root = world_readable_copy(FIXTURES / "studio_app", d / "ComfyUI")
    for p in PACKS + ("NC-WebExt", "NC-Undeclared"):
        world_readable_copy(FIXTURES / "packs" / p, root / "custom_nodes" / p)
    write_numpy1_pack(root / "custom_nodes", "NP1 Early Version")
    for sub in ("output", "temp", "input", "user"):
        (root / sub).mkdir(mode=0o755)
        os.chmod(root / sub, 0o755)
    sys.path.insert(0, str(root))
    import utils  # noqa: F401 - first, as the app's main.py
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    # The app is imported before the prestart here: the shared requirements are then final at
    # once, whatever this test process imported before (a real app's later imports are the
    # realpacks run's and the loader example's case: remembered in <state>/app-requirements.json).
    import nodes  # noqa: F401
    import server  # noqa: F401

    class App:
        pass

    a = App()
    a.root, a.aloop, a.dir, a.venvs = root, aloop, d, studio_venv_root
    yield a
    forget_app(root)
    shutil.rmtree(d, ignore_errors=True)


def _prestart(app, state: str, packs=None):
    from nodecell import studio
    from nodecell.studio import early as ps

    ps._forget()
    return studio.prestart(str(app.root / "custom_nodes"), packs=packs, app_root=str(app.root),
                           venv_root_path=str(app.venvs), state=state, app_preload=PRELOAD)


def test_the_first_pack_forks_from_the_app_cell_started_at_prestart(app):
    """Two kinds of packs, two early cells, every load adopts one. NC-Undeclared (of the first
    kind) gets a host package the others do not (its undeclared ``elftools``): the early cell,
    shaped for another pack, mounts what its siblings' venvs share too, so it joins."""
    import asyncio

    import nodes
    from nodecell import studio
    from nodecell._early import AdoptedCell
    from nodecell.appcell import PackView
    from nodecell.studio import early as ps

    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # as in the app's prestartup step: no event loop here
    state = str(app.dir / "state-1")
    packs = PACKS + ("NC-Numpy1", "NC-Undeclared")
    host = _prestart(app, state, packs=[str(app.root / "custom_nodes" / p) for p in packs])
    cells = host.manager._app_cells
    early = list(cells.early)
    assert len(early) == 2  # one per kind, at most AppCells.max_cells
    assert all(e.join(600) for e in early)
    assert [e.failure for e in early] == [None, None], [e.failure for e in early]
    assert host.kinds == {"nc-entry": {}, "nc-showcase": {}, "nc-undeclared": {},
                          "nc-numpy1": {"numpy": "1.26.4"}}, host.kinds
    # the second kind's launcher started only once the first kind's zygote was ready
    assert early[0].facts["pack"] == "nc-entry" and early[1].facts["pack"] == "nc-numpy1"

    async def load():
        again = studio.prestart(str(app.root / "custom_nodes"), app_root=str(app.root), venv_root_path=str(app.venvs),
                                state=state, app_preload=PRELOAD,
                                packs=[str(app.root / "custom_nodes" / p) for p in packs])
        assert again is host
        names = {}
        for p in packs:
            names[p] = await host.load_custom_node(str(app.root / "custom_nodes" / p), nodes.NODE_CLASS_MAPPINGS,
                                                   nodes.NODE_DISPLAY_NAME_MAPPINGS)
        node = nodes.NODE_CLASS_MAPPINGS["NP1 Early Version"]
        return names, await getattr(node(), node.FUNCTION)()

    names = {}
    try:
        names, np_version = app.aloop.run(load())
        assert "NP1 Early Version" in names["NC-Numpy1"]
        # No cell was started by the loads: the two early cells, adopted, are all there is.
        assert [type(ac.cell) for ac in cells.cells] == [AdoptedCell, AdoptedCell]
        assert all(ac.early for ac in cells.cells) and cells.own_cell == {}, cells.own_cell
        assert sorted(r["state"] for r in cells.early_report.values()) == ["adopted", "adopted"], cells.early_report
        first, second = cells.cells
        show, entry, np1 = (host.packs[n] for n in ("nc-showcase", "nc-entry", "nc-numpy1"))
        assert all(isinstance(x._cell, PackView) for x in (show, entry, np1))
        assert show._cell._app is first and entry._cell._app is first and np1._cell._app is second
        assert set(first.views) == {"nc-showcase", "nc-entry", "nc-undeclared"}, first.views
        assert set(second.views) == {"nc-numpy1"}
        assert "pyelftools" in host.packs["nc-undeclared"].config["share"]
        assert show.worker_versions["numpy"].startswith("2.") and np_version == ("1.26.4",)
        assert second.cell.zygote_info["preloaded"] and not second.cell.zygote_info["errors"]
        # the app's shared requirements, remembered for the next start's prestart
        assert Path(state, "app-requirements.json").is_file()
    finally:
        app.aloop.run(host.stop())
        ps._forget()
        for ns in names.values():
            for n in ns:
                nodes.NODE_CLASS_MAPPINGS.pop(n, None)


def test_a_failed_early_start_is_reported_and_the_first_pack_starts_the_app_cell(app, caplog):
    import nodes
    from nodecell._early import AdoptedCell
    from nodecell.appcell import PackView
    from nodecell.studio import early as ps

    host = _prestart(app, str(app.dir / "state-2"), packs=[str(app.root / "custom_nodes" / "NC-Entry")])
    cells = host.manager._app_cells
    first, second = cells.early
    assert first.join(600) and first.failure is None, first.failure
    first.popen.kill()  # the early sandbox dies before the host adopts it
    first.popen.wait()
    assert second.join(60) and second.not_needed is not None  # one kind of pack: one early cell

    async def load():
        return await host.load_custom_node(str(app.root / "custom_nodes" / "NC-Entry"), nodes.NODE_CLASS_MAPPINGS,
                                           nodes.NODE_DISPLAY_NAME_MAPPINGS)

    names = []
    try:
        with caplog.at_level(logging.WARNING, logger="nodecell"):
            names = app.aloop.run(load())
        assert names
        report = cells.early_report[first.name]
        assert report["state"] == "failed" and "before it was ready" in report["why"], report
        assert any("early start of app cell 1" in r.getMessage() and "failed" in r.getMessage()
                   and r.levelno == logging.WARNING for r in caplog.records), caplog.text
        entry = host.packs["nc-entry"]
        assert isinstance(entry._cell, PackView)
        (ac,) = cells.cells
        assert entry._cell._app is ac and not ac.early and not isinstance(ac.cell, AdoptedCell)
        assert entry.worker_versions["numpy"].startswith("2.")
    finally:
        app.aloop.run(host.stop())
        ps._forget()
        for n in names:
            nodes.NODE_CLASS_MAPPINGS.pop(n, None)


def test_a_pack_known_to_need_its_own_cell_gets_it_started_at_prestart(app):
    """An earlier host recorded that NC-WebExt's import writes under the app's tree (it then
    needs a cell of its own, with an app layer): the prestart starts that cell too, and the
    pack's load adopts it instead of starting one, although the app imported its built-in
    extra nodes between the two (what the worker imports of them is asked at the pack's
    import, not part of the cell's launch)."""
    import json

    import nodes
    from nodecell._early import AdoptedCell
    from nodecell.appcell import PackView
    from nodecell.studio import early as ps

    state = app.dir / "state-3"
    (state / "own-cell").mkdir(parents=True, mode=0o700)
    why = "its import wrote under the app's tree (an earlier host)"
    (state / "own-cell" / "nc-webext.json").write_text(json.dumps({"why": why}))
    host = _prestart(app, str(state), packs=[str(app.root / "custom_nodes" / "NC-WebExt")])
    cells = host.manager._app_cells
    assert cells.early == [] and list(cells.early_own) == ["nc-webext"]  # no app cell: no pack for one
    assert cells.early_own["nc-webext"].join(600) and cells.early_own["nc-webext"].failure is None
    app.aloop.run(nodes.init_builtin_extra_nodes())  # the app's start-up goes on after its prestart

    async def load():
        mappings = {}
        names = await host.load_custom_node(str(app.root / "custom_nodes" / "NC-WebExt"), mappings, {})
        node = mappings["NCWebExtDir"]
        return names, await getattr(node(), node.FUNCTION)(name="early")

    try:
        names, out = app.aloop.run(load())
        assert sorted(names) == ["NCWebExtAppView", "NCWebExtDir"] and "early" in out[0].split(), out
        ext = host.packs["nc-webext"]
        assert isinstance(ext._cell, AdoptedCell) and not isinstance(ext._cell, PackView)
        assert cells.early_report["nc-webext"]["state"] == "adopted", cells.early_report
        assert host.own_app_layer["nc-webext"] == why and cells.cells == []
        layer = Path(host.app_layers["nc-webext"])
        assert "early" in os.listdir(layer / "web" / "extensions" / "ncwebext")
        assert not (app.root / "web").exists()
    finally:
        app.aloop.run(host.stop())
        ps._forget()
        for n in ("NCWebExtAppView", "NCWebExtDir", "LatentShape"):
            nodes.NODE_CLASS_MAPPINGS.pop(n, None)


FRESH_START = r'''
import asyncio, json, logging, sys
logging.basicConfig(level=logging.INFO)  # as the app's own logging
root, state, venvs = sys.argv[1:4]
sys.path.insert(0, root)
import utils  # noqa: F401 - as the app's main.py: its command line and folders first
import comfy.cli_args  # noqa: F401
import folder_paths  # noqa: F401
from nodecell import studio

args = dict(app_root=root, venv_root_path=venvs, state=state, app_preload=["nodes", "server"],
            packs=[root + "/custom_nodes/NC-Entry"])
studio.prestart(root + "/custom_nodes", **args)  # the prestartup step: before the app imports torch
import nodes  # the app boots: torch and the rest
import server  # noqa: F401


async def main():
    host = studio.prestart(root + "/custom_nodes", **args)
    try:
        names = await host.load_custom_node(root + "/custom_nodes/NC-Entry", nodes.NODE_CLASS_MAPPINGS, {})
        cells = host.manager._app_cells
        return {"names": names, "early": {k: {"state": v["state"], "why": v.get("why", "")}
                                          for k, v in cells.early_report.items()},
                "cells": [{"early": ac.early, "packs": sorted(ac.views)} for ac in cells.cells]}
    finally:
        await host.stop()

print("RESULT " + json.dumps(asyncio.run(main())))
'''


def test_early_cells_start_from_the_second_start_and_are_dropped_when_the_app_imports_more(app, tmp_path):
    """Fresh app processes, as ComfyUI's: the prestart runs before the app imports torch, so the
    distributions the booted app shares into the packs' venvs are not known then. The first
    start (no record) starts nothing early and says so; its first pack starts the app cell, and
    the host remembers the booted app's list. The next start's early cell is the one its first
    pack forks from. When the booted app imports more than the remembered list (an app
    updated since), the early cell is dropped, saying why, and the first pack starts one."""
    import json
    import subprocess

    script = tmp_path / "start.py"
    script.write_text(FRESH_START)
    state = app.dir / "state-4"

    def start():
        out = subprocess.run([sys.executable, str(script), str(app.root), str(state), str(app.venvs)],
                             capture_output=True, text=True, timeout=600, cwd=str(app.root))
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        assert out.returncode == 0 and line, out.stdout[-3000:] + out.stderr[-3000:]
        return json.loads(line[-1][len("RESULT "):]), out.stderr

    first, log = start()
    assert first["early"] == {} and "the app's first start here" in log, log[-3000:]
    assert first["cells"] == [{"early": False, "packs": ["nc-entry"]}] and first["names"], first
    record = state / "app-requirements.json"
    names = json.loads(record.read_text())["names"]
    assert {"torch", "numpy"} <= set(names), names

    second, _ = start()
    (early,) = [v for v in second["early"].values() if v["state"] != "not needed"]
    assert early["state"] == "adopted", second
    assert second["cells"] == [{"early": True, "packs": ["nc-entry"]}] and second["names"], second

    # The app imports more than it did: what torch pulls in is missing from the record.
    rec = json.loads(record.read_text())
    rec["names"] = [n for n in names if n not in ("typing-extensions", "filelock", "sympy", "mpmath")]
    assert rec["names"] != names
    record.write_text(json.dumps(rec))
    third, log = start()
    assert third["early"] and all(v["state"] == "failed" and "after its prestart" in v["why"]
                                  for v in third["early"].values()), third
    assert "not used" in log and "after its prestart" in log, log[-3000:]
    assert third["cells"] == [{"early": False, "packs": ["nc-entry"]}] and third["names"], third
