"""App cells (nodecell.appcell): packs of a host app forked from one zygote that imported torch and the app.

The stand-in app (tests/fixtures/studio_app) with two compatible packs and one whose venv pins
numpy 1.26 (the app cell's zygote imported numpy 2): the two share the app cell (their workers are
children of the same zygote, which preloaded the app's ``nodes`` module) and work through the app's
own executor; the third starts a second app cell, of its kind (its zygote imported numpy 1.26); a
restart is a fork of the same zygote.
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

from studio_support import (FIXTURES, _run_prompt, forget_app, host_pid, parent_pid, world_readable_copy,
                             write_numpy1_pack)

pytest_plugins = ["studio_fixtures"]

PACKS = ("NC-Showcase", "NC-Entry")
# Two packs that try things on each other's files and processes (pack-separation).
PROBE_INIT = '''
import errno
import json
import os
import signal


def _try(fn):
    try:
        out = fn()
        return "ok" if out is None else out
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _write(path):
    with open(path, "w") as f:
        f.write("x")


def _read(path):
    with open(path, "rb") as f:
        f.read(1)


OPS = {
    "pid": lambda _: os.getpid(),
    "uid": lambda _: os.getuid(),
    "read": _read,
    "write": _write,
    "list": lambda p: os.listdir(p) and None,
    "signal": lambda pid: os.kill(int(pid), 0),
    "mem": lambda pid: _read(f"/proc/{int(pid)}/mem"),
    "tmp": lambda _: os.environ.get("TMPDIR", ""),
    "home": lambda _: os.path.expanduser("~"),
    "mkhome": lambda name: os.makedirs(os.path.join(os.path.expanduser("~"), name), exist_ok=True),
    # the pid of the process that imported the app's model_management (the zygote: preloaded)
    "app_pid": lambda _: __import__("sys").modules["comfy.model_management"].IMPORTED_IN,
}

# A model folder of the pack's own (as KJNodes' "kjnodes_fonts"), registered at import.
_FONTS = os.path.join(os.path.dirname(os.path.realpath(__file__)), "fonts")
if os.path.isdir(_FONTS):
    import folder_paths

    folder_paths.add_model_folder_path("probe_fonts", _FONTS)


class Probe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ops": ("STRING", {"default": "[]"})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "probe"

    def run(self, ops):
        return (json.dumps([_try(lambda: OPS[op](arg)) for op, arg in json.loads(ops)]),)


NODE_CLASS_MAPPINGS = {"%s Probe": Probe}
'''
PROBES = {"NC-ProbeA": "nc-probe-a", "NC-ProbeB": "nc-probe-b"}
# A pack whose nodes write at run time where WAS's do: folders made from the working directory,
# the app root (WAS: ``./ComfyUI/output`` for the portable layout, a new entry at the app root;
# ``models/midas`` before a download), and into one of the app's own folders.
RUN_WRITES_INIT = '''
import os


class PortableSave:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "x"}),
                             "folder": ("STRING", {"default": "NCPortable/output"})}}

    RETURN_TYPES = ("STRING", "STRING")
    FUNCTION = "run"
    CATEGORY = "runwrites"

    def run(self, name, folder):
        out = os.path.join(".", folder)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, name + ".txt"), "w") as f:
            f.write(name)
        return (" ".join(sorted(os.listdir(out))), os.getcwd())


class AppFolderWrite:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "runwrites"

    def run(self):
        with open(os.path.join(".", "comfy", "ncrunwrites.txt"), "w") as f:
            f.write("x")
        return ("written",)


NODE_CLASS_MAPPINGS = {"NCPortableSave": PortableSave, "NCAppFolderWrite": AppFolderWrite}
'''
STATE_IN = "/run/nodecell/pack-state"
# As ComfyUI's model_management: the device is chosen at import, from the command line (without
# --cpu on a machine with no GPU it fails); and who imported it (the app cell's zygote, or not).
MM_NEEDS_ARGS = '''

import os as _os

if not args.cpu:
    raise RuntimeError("Found no NVIDIA driver on your system (the stand-in app needs --cpu)")
IMPORTED_IN = _os.getpid()
'''


def _parents(ext):
    """Host pids of the parents (zygotes) of the extension's live workers."""
    return {parent_pid(host_pid(w.pidfd)) for w in ext._workers if w.alive}


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


@pytest.fixture(scope="module")
def app(aloop, studio_venv_root):
    d = Path(tempfile.mkdtemp(prefix="nodecell-appcell-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    root = world_readable_copy(FIXTURES / "studio_app", d / "ComfyUI")
    with open(root / "comfy" / "model_management.py", "a") as f:
        f.write(MM_NEEDS_ARGS)
    with open(root / "nodes.py", "a") as f:  # as ComfyUI's nodes.py (through comfy.sd and others)
        f.write("\nimport comfy.model_management  # noqa: E402,F401\n")
    for p in PACKS + ("NC-WebExt",):
        world_readable_copy(FIXTURES / "packs" / p, root / "custom_nodes" / p)
    np1 = write_numpy1_pack(root / "custom_nodes", "NP1 Version")
    for folder, name in PROBES.items():
        probe = root / "custom_nodes" / folder
        probe.mkdir(mode=0o755)
        os.chmod(probe, 0o755)
        (probe / "__init__.py").write_text(PROBE_INIT % folder)
        (probe / "manifest.yaml").write_text(f"name: {name}\nversion: 0.1.0\nisolated: true\nshare_torch: true\n"
                                             "dependencies: []\n")
        for f in probe.iterdir():
            os.chmod(f, 0o644)
        if folder == "NC-ProbeA":  # a model folder in its own folder, registered when it loads
            (probe / "fonts").mkdir(mode=0o755)
            os.chmod(probe / "fonts", 0o755)
            (probe / "fonts" / "font.ttf").write_text("font")
            os.chmod(probe / "fonts" / "font.ttf", 0o644)
    runw = root / "custom_nodes" / "NC-RunWrites"
    runw.mkdir(mode=0o755)
    os.chmod(runw, 0o755)
    (runw / "__init__.py").write_text(RUN_WRITES_INIT)
    (runw / "manifest.yaml").write_text("name: nc-runwrites\nversion: 0.1.0\nisolated: true\nshare_torch: true\n"
                                        "dependencies: []\n")
    for f in runw.iterdir():
        os.chmod(f, 0o644)
    for sub in ("output", "temp", "input", "user", "models", "models/checkpoints"):
        (root / sub).mkdir(mode=0o755)
        os.chmod(root / sub, 0o755)
    sys.path.insert(0, str(root))
    import utils  # noqa: F401 - first, as the app's main.py (its nodes.py puts comfy/ first on sys.path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # the host's command line (before nodes, as the app's main.py)
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
                                 app_preload=["nodes", "server", "numpy"])
        names = {}
        for p in PACKS + tuple(PROBES) + ("NC-WebExt", "NC-RunWrites"):
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
    forget_app(root)
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
    sep = walls["pack-separation"]
    assert sep["state"] == "active" and "nc-entry" in sep["detail"] and "Landlock" in sep["detail"], sep


def test_packs_in_the_app_cell_work_through_the_apps_executor(app):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "seed": 3}},
        "2": {"class_type": "SC Invert", "inputs": {"image": ["1", 0], "steps": 1, "delay": 0.0}},
        "3": {"class_type": "NCTint", "inputs": {"image": ["2", 0], "amount": 0.3, "mode": "soft"}},
        "4": {"class_type": "NP1 Version", "inputs": {}},
    }
    run = _run_prompt(app.aloop.run, app.server, prompt, ["3", "4"])
    assert run.success, run.errors
    img = run.outputs["2"][0]
    assert tuple(img.shape) == (1, 16, 32, 3)
    assert run.outputs["3"][1] == {"colors": [1, 2, 3], "by": "3"}
    assert run.outputs["4"] == ("1.26.4",)


def test_a_pack_whose_venv_changes_an_imported_distribution_gets_an_app_cell_of_its_kind(app):
    """NC-Numpy1 pins numpy 1.26.4 while the first app cell's zygote imported numpy 2: it fits
    no running app cell only because of its venv, so it starts a second app cell shaped for it
    (AppCells.max_cells is 2), whose zygote imported torch and the app with numpy 1.26.4; a later
    pack of its kind would fork from it too."""
    from nodecell.appcell import PackView

    np1 = app.host.packs["nc-numpy1"]
    cells = app.host.manager._app_cells
    assert isinstance(np1._cell, PackView), "an app cell of its kind, not a cell of its own"
    assert "nc-numpy1" not in cells.own_cell, cells.own_cell
    show = app.host.packs["nc-showcase"]
    assert np1._cell.app_cell != show._cell.app_cell
    assert len({ac.cell.name for ac in cells.cells}) == 2
    shared = _parents(show)
    assert _parents(np1).isdisjoint(shared)
    walls = {w["name"]: w for w in np1.walls}
    assert walls["pack-separation"]["state"] == "active", walls["pack-separation"]
    assert np1.worker_versions["numpy"] == "1.26.4"
    # its zygote imported the app too, with its own numpy: loads and restarts are forks
    info = np1._cell.zygote_info
    assert {"torch", "nodes", "server", "numpy"} <= set(info["preloaded"]) and not info["errors"], info
    assert np1._cell._app.venv["path"] != show._cell._app.venv["path"]


def test_a_pack_that_writes_under_the_apps_tree_at_import_gets_its_own_cell_with_an_app_layer(app):
    """NC-WebExt makes ``<dir of server.py>/web/extensions/ncwebext`` at import (as
    ComfyUI-Custom-Scripts does). The packs of an app cell share its mounts, where the app's tree
    is read-only: its import fails there, and it is loaded again in a cell of its own whose app
    layer takes the folder; the other packs stay in the app cell; the app's tree never gets it."""
    from nodecell.appcell import PackView

    ext = app.host.packs["nc-webext"]
    assert not isinstance(ext._cell, PackView)
    why = app.host.manager._app_cells.own_cell["nc-webext"]
    assert "wrote under the app's tree" in why and str(app.root / "web") in why, why
    assert app.host.own_app_layer["nc-webext"] == why
    assert "pack-separation" not in {w["name"] for w in ext.walls}
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["NCWebExtDir"]
    assert app.aloop.run(getattr(node(), node.FUNCTION)(name="run1"))[0] == "installed.txt run1"
    layer = Path(app.host.app_layers["nc-webext"])
    assert sorted(os.listdir(layer / "web" / "extensions" / "ncwebext")) == ["installed.txt", "run1"]
    assert not (app.root / "web").exists(), "the host's app tree was never written"
    # the other packs stay in the app cell, without an app layer
    show, entry = app.host.packs["nc-showcase"], app.host.packs["nc-entry"]
    assert isinstance(show._cell, PackView) and isinstance(entry._cell, PackView)
    assert show._cell.app_cell == entry._cell.app_cell
    assert set(app.host.app_layers) == {"nc-webext"}, app.host.app_layers


def test_the_next_host_remembers_that_the_pack_needs_its_own_cell(app, studio_venv_root, caplog):
    """The fallback is remembered outside the pack's state folder (which its cells may write): a
    new host process with the same state loads NC-WebExt straight into a cell of its own, without
    the failed try in the app cell."""
    import json
    import logging

    from nodecell import studio
    from nodecell.appcell import PackView

    record = Path(app.host.state) / "own-cell" / "nc-webext.json"
    assert json.loads(record.read_text()) == {"why": app.host.own_app_layer["nc-webext"]}
    assert record.parent.stat().st_mode & 0o777 == 0o700

    async def load():
        host = studio.StudioHost(str(studio_venv_root), state=app.host.state, app_cell=True,
                                 app_preload=["nodes", "server", "numpy"])
        try:
            mappings = {}
            names = await host.load_custom_node(str(app.root / "custom_nodes" / "NC-WebExt"), mappings, {})
            node = mappings["NCWebExtDir"]
            out = await getattr(node(), node.FUNCTION)(name="run2")
            return host, names, out, isinstance(host.packs["nc-webext"]._cell, PackView)
        finally:
            await host.stop()

    with caplog.at_level(logging.INFO, logger="nodecell"):
        host, names, out, in_app_cell = app.aloop.run(load())
    assert sorted(names) == ["NCWebExtAppView", "NCWebExtDir"] and {"installed.txt", "run2"} <= set(out[0].split()), out
    assert not in_app_cell and host.own_app_layer["nc-webext"] == app.host.own_app_layer["nc-webext"]
    text = caplog.text
    assert "remembered in" in text, text
    assert not any("wrote under the app's tree" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records), text
    assert not (app.root / "web").exists()


def test_a_restart_is_a_fork_of_the_same_zygote(app):
    entry = app.host.packs["nc-entry"]
    before_zygote = _parents(entry)
    before_pids = {w.pidfd and host_pid(w.pidfd) for w in entry._workers}

    async def restart():
        t0 = time.perf_counter()
        await entry.restart()
        return time.perf_counter() - t0

    app.aloop.run(restart())
    assert _parents(entry) == before_zygote
    assert {host_pid(w.pidfd) for w in entry._workers}.isdisjoint(before_pids)
    # and it still works
    run = _run_prompt(app.aloop.run, app.server, {
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
    run = _run_prompt(app.aloop.run, app.server, {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "seed": 1}},
        "2": {"class_type": "SC Invert", "inputs": {"image": ["1", 0], "steps": 1, "delay": 0.0}},
        "3": {"class_type": "NCTint", "inputs": {"image": ["2", 0], "amount": 0.1, "mode": "hard"}}}, ["3"])
    assert run.success, run.errors
    assert isinstance(show._cell, PackView) and show._cell.app_cell == entry._cell.app_cell != old_cell
    assert len(_parents(show) | _parents(entry)) == 1 and zygote not in _parents(show)


def _probe(app, folder, ops):
    import json

    run = _run_prompt(app.aloop.run, app.server, {"1": {"class_type": f"{folder} Probe",
                                                    "inputs": {"ops": json.dumps(ops)}}}, ["1"])
    assert run.success, run.errors
    return json.loads(run.outputs["1"][0])


def test_packs_in_one_app_cell_are_walled_apart(app):
    """Each probe pack reads and writes its own folder, state and TMPDIR and signals itself
    (the control), and cannot read, list or write the other's folder or state, signal it or
    read its memory, although those files are readable and writable by any uid (the walls,
    not permissions, stop it), from the same zygote."""
    a, b = app.host.packs["nc-probe-a"], app.host.packs["nc-probe-b"]
    assert a._cell.app_cell == b._cell.app_cell and _parents(a) == _parents(b)
    dirs = {f: str(app.root / "custom_nodes" / f) for f in PROBES}
    (pid_a, uid_a, tmp_a), (pid_b, uid_b, tmp_b) = (
        _probe(app, f, [["pid", 0], ["uid", 0], ["tmp", 0]]) for f in PROBES)
    if os.geteuid() == 0:  # each pack its own uid of the cell's leased range
        assert uid_a != uid_b and 0 not in (uid_a, uid_b), (uid_a, uid_b)
    assert tmp_a != tmp_b and tmp_a.startswith("/tmp/"), (tmp_a, tmp_b)
    for me, other, pid_me, pid_other, tmp_other in (("NC-ProbeA", "NC-ProbeB", pid_a, pid_b, tmp_b),
                                                      ("NC-ProbeB", "NC-ProbeA", pid_b, pid_a, tmp_a)):
        mine, theirs = f"{STATE_IN}/{PROBES[me]}", f"{STATE_IN}/{PROBES[other]}"
        got = _probe(app, me, [
            ["read", f"{dirs[me]}/__init__.py"], ["write", f"{dirs[me]}/made-here"], ["write", f"{mine}/x"],
            ["list", mine], ["write", f"{tmp_a if me == 'NC-ProbeA' else tmp_b}/t"], ["signal", pid_me],
            ["read", f"{dirs[other]}/__init__.py"], ["list", dirs[other]], ["write", f"{dirs[other]}/planted"],
            ["list", theirs], ["write", f"{theirs}/planted"], ["write", f"{tmp_other}/planted"],
            ["signal", pid_other], ["mem", pid_other]])
        control, attempts = got[:6], got[6:]
        assert control == ["ok"] * 6, (me, got)
        assert attempts[:6] == ["EACCES"] * 6, (me, got)
        assert attempts[6] == "EPERM" and attempts[7] in ("EACCES", "EPERM"), (me, got)
    # The other pack's folder and state are open to any uid: only the walls kept them out.
    for f, name in PROBES.items():
        assert os.stat(app.root / "custom_nodes" / f / "__init__.py").st_mode & 0o004
        state = Path(app.host.state) / "packs" / name
        if os.geteuid() == 0:
            assert os.stat(state).st_mode & 0o777 == 0o777
        assert not (state / "planted").exists() and not (state / "layer" / "planted").exists()


def test_a_pack_in_an_app_cell_has_a_writable_home_of_its_own(app):
    """A sandbox's HOME is its /tmp, writable in a cell of the pack's own; in an app cell only the
    pack's own folder under /tmp is: that is its HOME (packs keep config in ~, as
    transparent-background's ~/.transparent-background)."""
    homes = {}
    for folder in PROBES:
        home, tmp, made = _probe(app, folder, [["home", 0], ["tmp", 0], ["mkhome", ".probe-config"]])
        assert home == tmp and made == "ok", (folder, home, tmp, made)
        homes[folder] = home
    assert len(set(homes.values())) == len(PROBES), homes


def test_the_app_cells_zygote_imported_the_app_with_the_hosts_command_line(app):
    """The stand-in app's model_management fails to import without the host's --cpu (as
    ComfyUI's does on a machine with no GPU): the zygote applied the host's command line before
    its preload, imported ``nodes`` and its packs' workers use the zygote's modules (the app is
    not imported again after the fork)."""
    show = app.host.packs["nc-showcase"]
    info = show._cell.zygote_info
    assert "nodes" in info["preloaded"] and "server" in info["preloaded"] and not info["errors"], info
    assert any(h.endswith(":prepare_zygote") for h in info["preloaded"]), info
    for folder in PROBES:
        pid, app_pid = _probe(app, folder, [["pid", 0], ["app_pid", 0]])
        assert app_pid == info["pid"] != pid, (folder, pid, app_pid, info["pid"])
    # the worker's own account of its load says the same: the app was there before the pack's import
    times = app.host.load_times["nc-showcase"]
    phases = times["worker"]
    assert phases["preimported"] == ["nodes", "server", "torch"], phases
    for k in ("start_s", "hooks_s", "import_s", "collect_s", "describe_s"):
        assert isinstance(phases[k], float) and phases[k] >= 0, (k, phases)
    assert phases["modules_imported"] >= 1 and times["start_s"] > 0 and times["after_start_s"] > 0, times


def test_a_model_folder_inside_a_packs_folder_keeps_later_packs_in_the_app_cell(app):
    """NC-ProbeA registers a model folder inside its own folder when it loads (as KJNodes'
    fonts); NC-ProbeB, loaded after it, still joins the app cell (the folder is not one of its
    mounts), and the folder stays ProbeA's: ProbeA reads it, ProbeB cannot."""
    import folder_paths

    from nodecell.appcell import PackView

    fonts = app.root / "custom_nodes" / "NC-ProbeA" / "fonts"
    assert folder_paths.folder_names_and_paths["probe_fonts"][0] == [str(fonts)]
    a, b = app.host.packs["nc-probe-a"], app.host.packs["nc-probe-b"]
    assert "nc-probe-b" not in app.host.manager._app_cells.own_cell
    assert isinstance(b._cell, PackView) and b._cell.app_cell == a._cell.app_cell
    ro = b.config["sandbox"]["readonly_paths"]
    assert not any(str(fonts) in m for m in ro), ro
    assert _probe(app, "NC-ProbeA", [["read", f"{fonts}/font.ttf"]]) == ["ok"]
    assert _probe(app, "NC-ProbeB", [["read", f"{fonts}/font.ttf"]]) == ["EACCES"]


def test_validation_does_not_wait_behind_a_running_node_of_the_same_pack(app):
    """While NC-Showcase runs a slow node (3 steps of 1.5 s), the host validates another of its
    nodes (a new prompt's VALIDATE_INPUTS, IS_CHANGED, as the app does on its server thread):
    the answers come while the node still runs, not after it."""
    import comfy.utils
    import execution
    import nodes

    checked = nodes.NODE_CLASS_MAPPINGS["SC Checked"]
    steps = []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, prompt_id=None, node_id=None: steps.append(v))
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "seed": 1}},
              "2": {"class_type": "SC Invert", "inputs": {"image": ["1", 0], "steps": 3, "delay": 1.5}}}

    async def both():
        ex = execution.PromptExecutor(app.server)
        t = threading.Thread(target=ex.execute, args=(prompt, f"p{time.monotonic_ns()}", {}, ["2"]))
        t.start()
        try:
            for _ in range(3000):  # the node runs: its first step is done, 3 s of sleeps are left
                if steps or not t.is_alive():
                    break
                await asyncio.sleep(0.01)
            assert steps and t.is_alive(), "the slow node did not start"
            t0 = time.perf_counter()
            bad = await checked.VALIDATE_INPUTS(input_types={"threshold": "FLOAT"}, threshold=2.0)
            ok = await checked.VALIDATE_INPUTS(input_types={"threshold": "FLOAT"}, threshold=0.5)
            fp = await checked.IS_CHANGED(threshold=0.5, label="b")
            took, running = time.perf_counter() - t0, t.is_alive() and len(steps) < 3
        finally:
            while t.is_alive():
                await asyncio.sleep(0.01)
        return bad, ok, fp, took, running, ex

    try:
        bad, ok, fp, took, running, ex = app.aloop.run(both())
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert "threshold must be <= 1" in bad and ok is True and fp == "0.5:b", (bad, ok, fp)
    assert running and took < 1.5, (running, took)
    assert ex.success, ex.errors


def test_a_pack_that_writes_under_the_apps_tree_at_run_time_moves_to_its_own_cell(app, caplog):
    """NC-RunWrites loads in the app cell (its import writes nothing). At run time one node
    makes ``./models/ncdownloads`` from the working directory, the app root (WAS: ``models/midas``
    before a download; only ``models/``' existing subfolders are bound): the app cell's mounts are
    read-only there, so the pack moves to a cell of its own whose app layer takes the new folder
    (and a new entry at the app's root, WAS's ``./ComfyUI/output``), the call runs once more there
    and succeeds, the host remembers the move, and the pack's app-cell worker stops. The call runs as the
    app's executor runs nodes, on an event loop of its own that ends with the prompt: the new
    cell lives on the loop that loaded the pack, so the next prompt's call finds it running.
    Writes into the app's own ``comfy/`` folder and its ``models/checkpoints`` fail as before
    (bound read-only in any cell) and move nothing."""
    import json
    import logging

    import nodes
    from nodecell.appcell import PackView
    from nodecell.errors import RemoteError

    before = app.host.packs["nc-runwrites"]
    assert isinstance(before._cell, PackView), "loads in the app cell"
    assert before.config["cwd"] == str(app.root), before.config["cwd"]
    code_write = nodes.NODE_CLASS_MAPPINGS["NCAppFolderWrite"]
    with pytest.raises(RemoteError, match="Read-only file system") as e:
        app.aloop.run(getattr(code_write(), code_write.FUNCTION)())
    assert isinstance(e.value, OSError), type(e.value)
    save = nodes.NODE_CLASS_MAPPINGS["NCPortableSave"]
    with pytest.raises(RemoteError, match="Read-only file system"):
        app.aloop.run(getattr(save(), save.FUNCTION)(name="m", folder="models/checkpoints"))
    assert app.host.packs["nc-runwrites"] is before and "nc-runwrites" not in app.host.own_app_layer
    old_pids = {host_pid(w.pidfd) for w in before._workers if w.alive}
    assert old_pids and isinstance(before._cell, PackView)

    def in_a_prompt(name, folder):  # as the app's executor: asyncio.run per prompt, in its own thread
        out = {}

        def run():
            try:
                out["value"] = asyncio.run(getattr(save(), save.FUNCTION)(name=name, folder=folder))
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                out["error"] = e

        t = threading.Thread(target=run)
        t.start()
        t.join(600)
        assert "value" in out, out
        return out["value"]

    with caplog.at_level(logging.WARNING, logger="nodecell"):
        listing, cwd = in_a_prompt("m", "models/ncdownloads")
    assert (listing, cwd) == ("m.txt", str(app.root))
    moved = app.host.packs["nc-runwrites"]
    assert moved is not before and not isinstance(moved._cell, PackView)
    why = app.host.own_app_layer["nc-runwrites"]
    assert "at run time" in why and str(app.root / "models" / "ncdownloads") in why, why
    assert any(why in r.getMessage() for r in caplog.records), caplog.text
    record = Path(app.host.state) / "own-cell" / "nc-runwrites.json"
    assert json.loads(record.read_text()) == {"why": why}
    layer = Path(app.host.app_layers["nc-runwrites"])
    assert (layer / "models" / "ncdownloads" / "m.txt").read_text() == "m"
    # the same proxy classes now call the new cell, which lives on the loop that loaded the pack
    assert moved._cell.loop is app.aloop.loop
    pids = {host_pid(w.pidfd) for w in moved._workers if w.alive}
    assert in_a_prompt("first", "NCPortable/output")[0] == "first.txt"
    assert app.aloop.run(getattr(save(), save.FUNCTION)(name="second", folder="NCPortable/output"))[0] == \
        "first.txt second.txt"
    assert (layer / "NCPortable" / "output" / "second.txt").read_text() == "second"
    assert not (app.root / "NCPortable").exists(), "the host's app tree was never written"
    assert os.listdir(app.root / "models") == ["checkpoints"]
    assert {host_pid(w.pidfd) for w in moved._workers if w.alive} == pids, "no restart"
    # the app-cell worker is gone (its zygote reaps it)
    assert before._stopped
    deadline = time.monotonic() + 10
    while not all(_proc_state(p) in ("gone", "Z") for p in old_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    states = {p: _proc_state(p) for p in old_pids}
    assert all(v in ("gone", "Z") for v in states.values()), states
    # the other packs stay in the app cell
    assert isinstance(app.host.packs["nc-showcase"]._cell, PackView)


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"
