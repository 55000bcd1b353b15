"""The Hanzo Studio integration (nodecell.studio): the loader and its proxy nodes (classic and
v3 packs), the workflow runner, the example workflow with its misbehaving pack, the demo
command, and hot reload. Real sandboxes, real venvs, real torch."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from studio_support import Loaded, same_value, tensors_equal, world_readable_copy

# The fixtures studio_files and studio_venv_root.
pytest_plugins = ["studio_fixtures"]

import nodecell
from nodecell import _reload, studio
from nodecell.studio import schema as _data

CLASSIC_NODES = ("MakeImage", "Invert", "Boom", "LatentScale", "EmptyLatent", "LoadModel", "ApplyModel", "Sleep")
V3_NODES = ("Brighten", "Describe", "SleepV3")

# A workflow over both fixture packs: images, masks, a LATENT dict, a model object (remote handle).
GRAPH = {
    "1": {"class_type": "MakeImage", "inputs": {"width": 256, "height": 192, "seed": 7}},
    "2": {"class_type": "Invert", "inputs": {"image": ["1", 0], "threshold": 0.4}},
    "3": {"class_type": "Brighten", "inputs": {"image": ["2", 0], "amount": 0.25}},
    "4": {"class_type": "LoadModel", "inputs": {"gain": 0.5}},
    "5": {"class_type": "ApplyModel", "inputs": {"model": ["4", 0], "image": ["3", 0]}},
    "6": {"class_type": "EmptyLatent", "inputs": {"batch": 2, "seed": 3}},
    "7": {"class_type": "LatentScale", "inputs": {"latent": ["6", 0], "factor": 2.0}},
    "8": {"class_type": "Describe", "inputs": {"mode": "shape"}},
}


@pytest.fixture(scope="module")
def loaded(aloop, studio_files, studio_venv_root):
    async def load():
        host = studio.StudioHost(str(studio_venv_root))
        plain = studio.StudioHost()  # what Studio does without nodecell: import the packs
        iso, disp, loc, ldisp = {}, {}, {}, {}
        for p in ("classic_pack", "v3_pack"):
            await host.load_custom_node(str(studio_files / "packs" / p), iso, disp)
            await plain.load_custom_node(str(studio_files / "packs" / p), loc, ldisp, isolated=False)
        return Loaded(host, iso, disp, loc, ldisp)

    ld = aloop.run(load())
    yield ld
    aloop.run(ld.host.stop())


def run(aloop, graph, mappings, **kw):
    return aloop.run(studio.run_workflow(graph, mappings, **kw))


# -- loader and proxies --------------------------------------------------------------------------

def test_loader_registers_proxies_for_isolated_packs_and_classes_for_local_ones(loaded):
    assert set(loaded.isolated) == set(CLASSIC_NODES + V3_NODES)
    assert set(loaded.local) == set(loaded.isolated)
    for name, cls in loaded.isolated.items():
        assert studio.is_proxy(cls), name
        assert not studio.is_proxy(loaded.local[name]), name
        assert cls._nodecell_pack == ("classic_pack" if name in CLASSIC_NODES else "v3_pack")
        assert loaded.host.node_pack[name] == cls._nodecell_pack
    assert set(loaded.host.packs) == {"classic_pack", "v3_pack"}
    # display names: classic from NODE_DISPLAY_NAME_MAPPINGS, v3 from the schema
    assert loaded.display == loaded.local_display == {"Invert": "Invert image", "Brighten": "Brighten image"}
    # the packs run behind the walls, as the unprivileged worker uid
    walls = {w["name"]: w["state"] for w in loaded.host.packs["classic_pack"].walls}
    assert walls.get("seccomp") == "active" and walls.get("net-namespace") == "active"


def test_classic_proxy_schema_equals_the_original(aloop, loaded):
    attrs = ("RETURN_TYPES", "RETURN_NAMES", "FUNCTION", "CATEGORY", "OUTPUT_NODE", "DESCRIPTION")
    for name in CLASSIC_NODES:
        proxy, orig = loaded.isolated[name], loaded.local[name]
        assert proxy.INPUT_TYPES() == orig.INPUT_TYPES(), name
        assert proxy.__name__ == orig.__name__
        for a in attrs:
            assert hasattr(proxy, a) == hasattr(orig, a), (name, a)
            if hasattr(orig, a):
                assert getattr(proxy, a) == getattr(orig, a), (name, a)
        for a in ("IS_CHANGED", "VALIDATE_INPUTS"):
            assert hasattr(proxy, a) == hasattr(orig, a), (name, a)
        assert callable(getattr(proxy(), proxy.FUNCTION))
    inv, orig = loaded.isolated["Invert"], loaded.local["Invert"]
    img = torch.rand(1, 4, 4, 3)
    assert aloop.run(inv.IS_CHANGED(image=img, threshold=0.3)) == orig.IS_CHANGED(image=img, threshold=0.3)
    assert aloop.run(inv.VALIDATE_INPUTS(threshold=0.5)) is True
    assert aloop.run(inv.VALIDATE_INPUTS(threshold=2.0)) == orig.VALIDATE_INPUTS(threshold=2.0)


def test_v3_proxy_schema_equals_the_original(aloop, loaded):
    from comfy_api.latest import io

    for name in V3_NODES:
        proxy, orig = loaded.isolated[name], loaded.local[name]
        assert issubclass(proxy, io.ComfyNode)
        assert proxy.define_schema() == orig.define_schema(), name
        assert proxy.DEFINE_SCHEMA() == orig.define_schema(), name
        s = proxy.define_schema()
        assert type(s) is io.Schema and all(type(a) is type(b) for a, b in zip(s.inputs, orig.define_schema().inputs))
    b = loaded.isolated["Brighten"]
    assert "validate_inputs" in vars(b)  # the pack overrides it: forwarded to the worker
    assert aloop.run(b.validate_inputs(amount=-1.0)) == "amount must be >= 0"
    assert aloop.run(b.validate_inputs(amount=0.5)) is True
    assert "validate_inputs" not in vars(loaded.isolated["Describe"])  # the base class's own answer
    out = aloop.run(loaded.isolated["Describe"].execute(mode="dtype"))
    assert isinstance(out, io.NodeOutput) and out.args == ("mode=dtype",)


def test_workflow_outputs_equal_running_the_packs_unisolated(aloop, loaded):
    iso = run(aloop, GRAPH, loaded.isolated)
    loc = run(aloop, GRAPH, loaded.local)
    assert iso.ok, iso.errors
    assert loc.ok, loc.errors
    for nid in GRAPH:
        a, b = iso.nodes[nid].outputs, loc.nodes[nid].outputs
        assert len(a) == len(b), nid
        if nid == "4":  # a model object: the host holds a handle; the pack got its own object back in node 5
            assert isinstance(a[0], nodecell.RemoteObject) and not isinstance(b[0], nodecell.RemoteObject)
            continue
        assert same_value(a, b), nid
    # v3 ui output rebuilt from data as the host's own class
    from comfy_api.latest import ui

    assert iso.nodes["3"].ui == ui.PreviewText("brightened") == loc.nodes["3"].ui
    # images, masks and LATENT dicts (above nodecell's 64 KiB inline limit) arrive in shared
    # arenas (zero-copy), not as copies
    assert nodecell.is_shared(iso.output("2", 0)) and nodecell.is_shared(iso.output("2", 1))
    assert nodecell.is_shared(iso.output("7")["samples"])
    assert iso.output("7")["batch_index"] == [0, 1]


def test_node_error_is_a_node_error_with_the_remote_traceback(aloop, loaded):
    graph = {"1": {"class_type": "Boom", "inputs": {"how": "raise"}},
             "2": {"class_type": "Invert", "inputs": {"image": ["1", 0], "threshold": 0.5}},
             "3": {"class_type": "MakeImage", "inputs": {"width": 8, "height": 8, "seed": 1}}}
    res = run(aloop, graph, loaded.isolated)
    err = res.nodes["1"].error
    assert isinstance(err, studio.NodeExecutionError)
    assert err.exception_type == "ValueError" and "boom from inside the pack" in str(err)
    assert 'classic_pack/__init__.py", line' in err.traceback and "raise ValueError" in err.traceback
    d = err.as_dict()
    assert d["node_id"] == "1" and d["node_type"] == "Boom" and d["exception_type"] == "ValueError"
    assert isinstance(err.cause, nodecell.RemoteError)
    assert res.nodes["2"].error.not_run and res.nodes["2"].error.exception_type == "UpstreamFailed"
    assert res.nodes["3"].error is None  # the pack's worker is fine: a raised error is not a crash
    assert not res.crashed


def test_crashed_pack_fails_its_nodes_for_the_run_and_restarts_for_the_next(aloop, loaded):
    graph = {"1": {"class_type": "Boom", "inputs": {"how": "exit"}},
             "2": {"class_type": "Sleep", "inputs": {"seconds": 0.0}},
             "3": {"class_type": "Describe", "inputs": {"mode": "shape"}}}
    before = run(aloop, {"x": graph["2"]}, loaded.isolated).output("x", 2)
    res = run(aloop, graph, loaded.isolated)
    assert isinstance(res.nodes["1"].error.cause, nodecell.WorkerCrashed)
    assert res.nodes["1"].error.cause.exit_code == 3
    assert "classic_pack" in res.crashed
    assert res.nodes["2"].error.not_run and res.nodes["2"].error.exception_type == "PackCrashed"
    assert res.nodes["3"].error is None, "another pack's nodes are not affected"
    again = run(aloop, {"2": graph["2"]}, loaded.isolated)
    assert again.ok, again.errors
    assert again.output("2", 2) != before, "the next run gets a fresh worker"


def test_timeout_fails_the_node_and_the_pack_restarts_for_the_next_run(aloop, reload_pack, studio_venv_root):
    graph = {"1": {"class_type": "WhichVersion", "inputs": {"delay": 30.0}},
             "2": {"class_type": "WhichVersion", "inputs": {"delay": 0.0}}}

    async def go():
        host = studio.StudioHost(str(studio_venv_root))
        try:
            m = {}
            await host.load_custom_node(str(reload_pack), m, timeout=1.0)  # overrides the manifest's 30 s
            first = await studio.run_workflow(graph, m)
            second = await studio.run_workflow({"2": graph["2"]}, m)
            return first, second
        finally:
            await host.stop()

    first, second = aloop.run(go())
    err = first.nodes["1"].error
    assert err.exception_type == "CallTimeout" and "did not return within 1 s" in err.message
    assert first.nodes["2"].error.exception_type == "PackCrashed"
    assert second.ok and second.output("2") == "v1"


def test_independent_packs_run_in_parallel_and_one_pack_runs_one_node_at_a_time(aloop, loaded):
    s = 1.0
    graph = {"a": {"class_type": "Sleep", "inputs": {"seconds": s}},
             "b": {"class_type": "SleepV3", "inputs": {"seconds": s}}}
    res = run(aloop, graph, loaded.isolated)
    assert res.ok, res.errors
    (a0, a1, _), (b0, b1, _) = res.nodes["a"].outputs, res.nodes["b"].outputs
    assert max(a0, b0) < min(a1, b1), "the two packs' nodes overlapped in time"
    assert res.seconds < 2 * s, "two sleeps in different packs took less than their sum"
    # two nodes of the same pack: one at a time (a pack need not be thread-safe)
    same = run(aloop, {"a": graph["a"], "c": dict(graph["a"])}, loaded.isolated)
    (a0, a1, _), (c0, c1, _) = same.nodes["a"].outputs, same.nodes["c"].outputs
    assert a1 <= c0 or c1 <= a0


def test_workflow_validation_rejects_bad_graphs(aloop, loaded):
    m = loaded.local
    with pytest.raises(ValueError, match="unknown class_type 'Nope'"):
        run(aloop, {"1": {"class_type": "Nope", "inputs": {}}}, m)
    with pytest.raises(ValueError, match="links to missing node '9'"):
        run(aloop, {"1": {"class_type": "Invert", "inputs": {"image": ["9", 0], "threshold": 0.5}}}, m)
    with pytest.raises(ValueError, match="cycle"):
        run(aloop, {"1": {"class_type": "Invert", "inputs": {"image": ["2", 0], "threshold": 0.5}},
                    "2": {"class_type": "Invert", "inputs": {"image": ["1", 0], "threshold": 0.5}}}, m)
    # a partial re-run takes missing inputs from a previous result
    first = run(aloop, {"1": GRAPH["1"]}, m)
    part = run(aloop, {"2": GRAPH["2"]}, m, cached=first)
    assert part.ok and tensors_equal(part.output("2"), 1.0 - first.output("1"))


def test_schema_data_rebuilds_only_allow_listed_imported_classes(studio_files):
    from comfy_api.latest import io

    schema = io.Schema(node_id="X", inputs=[io.Int.Input("n", min=1)])
    data = _data.to_data(schema)
    assert data["__obj__"] == {"t": "comfy_api.latest.io:Schema"}
    assert _data.from_data(data) == schema
    with pytest.raises(ValueError, match="outside the allowed"):
        _data.from_data({"__obj__": "os:Popen", "state": {}})
    with pytest.raises(ValueError, match="not imported"):
        _data.from_data({"__obj__": "comfy_api.never_imported:Thing", "state": {}})
    with pytest.raises(ValueError, match="not a class"):
        _data.from_data({"__obj__": "comfy_api.latest:io", "state": {}})


# -- the example workflow and the demo ------------------------------------------------------------

def test_example_workflow_contains_the_misbehaving_pack_while_the_rest_completes(aloop, studio_files,
                                                                                 studio_venv_root):
    import json

    ex = studio_files / "examples"
    graph = json.loads((ex / "workflow.json").read_text())
    secret_file = studio_files / "host-notes.txt"
    secret_file.write_text("host only\n")
    os.chmod(secret_file, 0o644)
    graph["6"]["inputs"]["host_file"] = str(secret_file)
    os.environ["NODECELL_DEMO_SECRET"] = "hunter2"
    srv = socket.socket()  # a service on the host's loopback, which the host itself can reach
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    graph["7"]["inputs"]["host_port"] = srv.getsockname()[1]
    socket.create_connection(srv.getsockname(), timeout=2).close()

    async def go():
        host = studio.StudioHost(str(studio_venv_root))
        try:
            m = {}
            for p in sorted(os.listdir(ex / "packs")):
                await host.load_custom_node(str(ex / "packs" / p), m)
            first = await studio.run_workflow(graph, m)
            second = await studio.run_workflow({"9": graph["9"]}, m)
            seen = await host.packs["misbehaving"].versions_seen()
            return first, second, seen
        finally:
            await host.stop()

    try:
        res, res2, seen = aloop.run(go())
    finally:
        del os.environ["NODECELL_DEMO_SECRET"]
        srv.close()
    for nid in "12345":
        assert res.nodes[nid].error is None, res.nodes[nid].error
    assert res.output("4", 0) == "1.26.4" and res.output("5", 0).startswith("2.")
    mean = float(res.output("2").double().mean())
    assert abs(res.output("4", 1) - mean) < 1e-5 and abs(res.output("5", 1) - mean) < 1e-5
    secrets = res.output("6")
    assert secrets.count("blocked (") == 4 and "ALLOWED" not in secrets and "hunter2" not in secrets
    net = res.output("7")
    assert "ENETUNREACH" in net and "ECONNREFUSED" in net and "ALLOWED" not in net
    leak = res.nodes["8"].error
    assert leak is not None and leak.cause.reason == "memory"
    assert res.nodes["9"].error.exception_type == "PackCrashed"  # its pack died earlier in this run
    crash = res2.nodes["9"].error  # the next run: a fresh worker, which then segfaults
    assert crash is not None and crash.cause.reason == "signal" and crash.cause.signal == signal.SIGSEGV
    assert seen["python"], "the pack answers again after both deaths"


def test_demo_command_exits_0_with_a_table(studio_files, studio_venv_root):
    ex = studio_files / "examples"
    env = dict(os.environ, NODECELL_VENV_ROOT=str(studio_venv_root))
    p = subprocess.run([sys.executable, "-m", "nodecell.studio.demo", "--packs", str(ex / "packs"),
                        "--workflow", str(ex / "workflow.json")], env=env, capture_output=True, text=True,
                       timeout=300)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "PASS: demo finished" in out and "FAIL" not in out
    for col in ("id", "node", "pack", "run", "sees", "time", "walls", "outcome"):
        assert col in out
    for text in ("numpy 1.26.4", "torch 2.", "ENETUNREACH", "memory limit", "SIGSEGV", "host alive"):
        assert text in out, text


# -- hot reload -----------------------------------------------------------------------------------

@pytest.fixture()
def reload_pack(studio_files, monkeypatch):
    """A fresh copy of the reload fixture pack (edited by the test), checked on every call."""
    monkeypatch.setattr(_reload, "CHECK_INTERVAL", 0.0)
    d = studio_files / f"reload_{time.monotonic_ns()}"
    os.makedirs(d, mode=0o755)
    world_readable_copy(studio_files / "packs" / "reload_pack", d / "reload_pack")
    return d / "reload_pack"


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_reload_picks_up_changed_code(aloop, reload_pack, studio_venv_root):
    async def go():
        host = studio.StudioHost(str(studio_venv_root), reload=True)
        try:
            m = {}
            await host.load_custom_node(str(reload_pack), m)
            ext = host.packs["reload_pack"]
            proxy = m["WhichVersion"]
            v1, pid1, _ = await proxy().run(delay=0.0)
            cell1, venv1 = ext._cell, ext.venv["path"]
            _edit(reload_pack / "__init__.py", 'VERSION = "v1"', 'VERSION = "v2 (edited)"')
            _edit(reload_pack / "__init__.py", '"delay": ("FLOAT", {"default": 0.0})',
                  '"delay": ("FLOAT", {"default": 0.0}), "extra": ("INT", {"default": 1})')
            v2, pid2, _ = await proxy().run(delay=0.0)
            after = (ext._cell is cell1, ext.venv["path"] == venv1, _reload.generation(ext), proxy.INPUT_TYPES())
            v2b, pid2b, _ = await m["WhichVersion"]().run(delay=0.0)  # no further change: same worker
            return v1, pid1, v2, pid2, after, pid2b
        finally:
            await host.stop()

    v1, pid1, v2, pid2, (same_cell, same_venv, gen, schema), pid2b = aloop.run(go())
    assert (v1, v2) == ("v1", "v2 (edited)")
    assert pid2 != pid1 and pid2b == pid2
    assert same_cell and same_venv, "a code change forks a fresh worker in the same sandbox; no re-provisioning"
    assert gen == 1
    assert "extra" in schema["required"], "the proxy's schema was fetched again"


def test_broken_pack_fails_to_load_cleanly_and_broken_reloads_heal(aloop, reload_pack, studio_venv_root):
    init = reload_pack / "__init__.py"
    good = init.read_text()

    async def go():
        host = studio.StudioHost(str(studio_venv_root), reload=True)
        try:
            init.write_text(good + '\nraise RuntimeError("broken on purpose")\n')
            with pytest.raises(nodecell.RemoteError, match="broken on purpose"):
                await host.load_custom_node(str(reload_pack), {})
            left = dict(host.manager.extensions)
            init.write_text(good)
            m = {}
            await host.load_custom_node(str(reload_pack), m)
            init.write_text(good.replace('VERSION = "v1"', 'VERSION = "v1" +'))  # a syntax error
            with pytest.raises(nodecell.RemoteError, match="SyntaxError"):
                await m["WhichVersion"]().run(delay=0.0)
            init.write_text(good.replace('VERSION = "v1"', 'VERSION = "fixed"'))
            return left, await m["WhichVersion"]().run(delay=0.0)
        finally:
            await host.stop()

    left, fixed = aloop.run(go())
    assert left == {}, "a pack that cannot load leaves nothing running"
    assert fixed[0] == "fixed"


def test_reload_through_the_plain_extension_api(aloop, reload_pack, studio_venv_root):
    """ExtensionConfig(reload=True) without the Studio layer (config built in code, not from the manifest)."""
    async def go():
        m = nodecell.ExtensionManager(studio.StudioExtension,
                                      nodecell.ExtensionManagerConfig(venv_root_path=str(studio_venv_root)))
        try:
            ext = await m.load_extension(nodecell.ExtensionConfig(
                name="reload_plain", module_path=str(reload_pack), reload=True, timeout=30))
            a = await ext.execute("WhichVersion", {"delay": 0.0})
            _edit(reload_pack / "__init__.py", 'VERSION = "v1"', 'VERSION = "v1.1"')
            b = await ext.execute("WhichVersion", {"delay": 0.0})
            return a, b, _reload.generation(ext)
        finally:
            await m.stop_all_extensions()

    a, b, gen = aloop.run(go())
    assert (a[0], b[0], gen) == ("v1", "v1.1", 1) and a[1] != b[1]


def test_reload_lets_inflight_calls_finish_on_the_old_worker(aloop, reload_pack, studio_venv_root):
    async def go():
        m = {}
        host = studio.StudioHost(str(studio_venv_root), reload=True)
        try:
            await host.load_custom_node(str(reload_pack), m)
            ext = host.packs["reload_pack"]
            slow = asyncio.ensure_future(m["WhichVersion"]().run(delay=1.5))
            await asyncio.sleep(0.3)  # the slow call is running in the v1 worker
            _edit(reload_pack / "__init__.py", 'VERSION = "v1"', 'VERSION = "v2"')
            fast = await m["WhichVersion"]().run(delay=0.0)
            slow_done_first = slow.done()
            old = await slow
            for _ in range(100):  # the old worker is stopped once its call is done
                if len(ext._cell.workers) == 1:
                    break
                await asyncio.sleep(0.05)
            return fast, old, slow_done_first, len(ext._cell.workers), ext.restarts
        finally:
            await host.stop()

    fast, old, slow_done_first, n_workers, restarts = aloop.run(go())
    assert fast[0] == "v2" and old[0] == "v1"
    assert fast[1] != old[1]
    assert not slow_done_first, "the new call did not wait for the in-flight one"
    assert n_workers == 1
    assert restarts == 0, "a retired worker's end is not counted as a crash"


def test_reload_reprovisions_only_when_dependencies_change(aloop, reload_pack, studio_venv_root):
    async def go():
        m = {}
        host = studio.StudioHost(str(studio_venv_root), reload=True)
        try:
            await host.load_custom_node(str(reload_pack), m)
            ext = host.packs["reload_pack"]
            first = await m["WhichVersion"]().run(delay=0.0)
            cell1, venv1 = ext._cell, ext.venv["path"]
            # a setting that needs a new sandbox but not a new venv
            _edit(reload_pack / "manifest.yaml", "timeout: 30", "timeout: 30\n  max_pids: 64")
            second = await m["WhichVersion"]().run(delay=0.0)
            cell2, venv2 = ext._cell, ext.venv["path"]
            pids_wall = {w["name"]: w["state"] for w in ext.walls}.get("pids-limit")
            _edit(reload_pack / "manifest.yaml", "dependencies: []", "dependencies:\n  - numpy>=2,<3")
            third = await m["WhichVersion"]().run(delay=0.0)
            cell3, venv3 = ext._cell, ext.venv["path"]
            for _ in range(100):  # replaced sandboxes are stopped once their calls are done
                if cell1.dead and cell2.dead:
                    break
                await asyncio.sleep(0.05)
            old_cells_dead = cell1.dead and cell2.dead and not cell3.dead
            return first, second, third, (cell1, cell2, cell3), (venv1, venv2, venv3), pids_wall, old_cells_dead
        finally:
            await host.stop()

    first, second, third, cells, venvs, pids_wall, old_dead = aloop.run(go())
    assert first[2] == second[2] == "none" and third[2].startswith("2.")
    assert cells[0] is not cells[1] and pids_wall == "active", "a new sandbox with the manifest's new limit"
    assert venvs[0] == venvs[1], "same dependencies: the venv was not provisioned again"
    assert venvs[2] != venvs[1] and cells[2] is not cells[1], "new dependencies: a new venv and sandbox"
    assert old_dead, "the replaced sandboxes were stopped"
