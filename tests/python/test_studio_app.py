"""Packs in a host app, isolated, with no glue of the user's: ``StudioHost().load_custom_node(PACK,
nodes.NODE_CLASS_MAPPINGS)`` in a process running the stand-in app (tests/fixtures/studio_app, laid out
like ComfyUI). Each pack is also loaded the app's own way (``nodes.load_custom_node``) and the two are
compared: /object_info of every node, outputs through the app's own executor, hidden values,
validation, UI outputs, node expansion, blocked outputs; the pack's routes are served by the app's
server, its web folder registered, its writes into its own folder kept in its state layer; the app's
services (folder_paths, progress, messages, the interrupt flag) answer from the host. Real sandboxes,
real venvs (the app's requirements shared from the host's environment), real torch."""
from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from studio_support import FIXTURES, PROMPT, TARGETS, _node_infos, _run_prompt, same_value, world_readable_copy

# The fixtures app (the stand-in app with its packs loaded both ways) and studio_venv_root.
pytest_plugins = ["studio_fixtures"]

def test_the_app_is_detected_and_every_node_loads_isolated(app):
    from nodecell import studio

    assert app.host.profile.name == "comfyui" and app.host.profile.root == os.path.realpath(app.root)
    assert set(app.isolated_nodes) == set(app.direct_nodes)
    for n, cls in app.isolated_nodes.items():
        assert studio.is_proxy(cls), n
    # v3 classes are proxied as v3 wherever they were listed (here in a classic NODE_CLASS_MAPPINGS)
    from comfy_api.latest import io

    for n in ("SCv3Brighten", "SCv3Expand", "SCv3Block", "NCTint", "NCLazy"):
        assert issubclass(app.isolated_nodes[n], io.ComfyNode), n
    walls = {w["name"]: w["state"] for w in app.host.packs["nc-showcase"].walls}
    assert walls.get("seccomp") == "active" and walls.get("net-namespace") == "active"


def test_object_info_of_every_proxy_equals_the_direct_class(app):
    iso = _node_infos(app.isolated_nodes)
    for n, info in app.direct_info.items():
        assert iso[n] == info, n
    assert iso["SC Invert"]["python_module"] == "custom_nodes.NC-Showcase"
    assert iso["NCTint"]["python_module"] == "custom_nodes.NC-Entry"
    assert iso["SCv3Brighten"]["output"] == ["IMAGE", "SC_STATS"]  # a Custom io type, by its io_type
    assert iso["SCv3Brighten"]["input"]["required"]["n"][1]["display"] == "slider"


def test_outputs_through_the_apps_executor_equal_the_direct_ones(app):
    run = _run_prompt(app.aloop.run, app.server, PROMPT, TARGETS, {"extra_pnginfo": {"workflow": "wf"}})
    assert run.success, run.errors
    d = app.direct_run
    for nid in ("2", "3", "6", "7", "11", "12"):
        assert same_value(run.outputs[nid], d.outputs[nid]), nid
    # hidden values (classic and v3) reached the pack
    assert run.outputs["5"] == d.outputs["5"] == ("t|5|" + str(sorted(PROMPT)) + "|wf",)
    stats = run.outputs["3"][1]
    assert stats == d.outputs["3"][1] and stats["node"] == "3" and stats["prompt_nodes"] == sorted(PROMPT)
    assert run.outputs["6"][1] == {"colors": [1, 2, 3], "by": "6"}
    # node expansion and a blocked output, as the app's own classes
    assert run.ui_outputs["__expand__"]["8"] == d.ui_outputs["__expand__"]["8"]
    assert "10" not in run.outputs or run.outputs["10"] is None
    assert d.outputs.get("10") is None
    # tensors crossed without copies
    import nodecell

    assert nodecell.is_shared(run.outputs["2"][0])


def test_ui_files_are_where_the_host_looks(app):
    run = _run_prompt(app.aloop.run, app.server, PROMPT, ["4", "3"])
    ui = run.ui_outputs["4"]["images"]
    assert ui[0]["type"] == "output" and ui[0]["subfolder"] == "sc", ui
    out = app.root / "output" / ui[0]["subfolder"] / ui[0]["filename"]
    assert out.is_file(), "the host sees the pack's output where the UI entry says"
    assert ui[0]["filename"].startswith("run_")
    prev = run.ui_outputs["3"]["images"][0]
    assert prev["type"] == "temp" and (app.root / "temp" / prev["subfolder"] / prev["filename"]).is_file()


def test_validation_gets_the_arguments_it_names(app):
    bad = {"1": {"class_type": "SC Checked", "inputs": {"threshold": 2.0, "label": "x"}}}
    iso = _run_prompt(app.aloop.run, app.server, bad, ["1"])
    assert not iso.success
    # the executor passed only the arguments the pack's function names, input_types included
    assert "threshold must be <= 1 (got 2.0; input_types=[])" in iso.errors["message"]
    import inspect

    v = app.isolated_nodes["SC Checked"].VALIDATE_INPUTS
    assert inspect.getfullargspec(v).args == ["cls", "input_types", "threshold"]


def test_progress_messages_and_interrupts_reach_the_host(app):
    app.progress.clear()
    app.server.messages.clear()
    run = _run_prompt(app.aloop.run, app.server, {"1": PROMPT["1"], "2": PROMPT["2"]}, ["2"])
    assert run.success
    assert [(v, t) for v, t, _ in app.progress] == [(1, 3), (2, 3), (3, 3)]
    assert {n for _, _, n in app.progress} == {"2"}, "the executing node's id came along"
    app.aloop.run(asyncio.sleep(0.05))
    assert ("showcase.done", {"steps": 3}, None) in app.server.messages
    # The Cancel button: the host's interrupt flag stops an isolated node with the app's own exception.
    import comfy.model_management as mm

    slow = {"1": PROMPT["1"], "2": {"class_type": "SC Invert", "inputs": {"image": ["1", 0], "steps": 50,
                                                                        "delay": 0.05}}}
    threading.Timer(0.5, mm.interrupt_current_processing).start()
    run = _run_prompt(app.aloop.run, app.server, slow, ["2"])
    assert not run.success and isinstance(run.exception, mm.InterruptProcessingException), run.errors
    assert not mm.processing_interrupted(), "the flag was consumed, as the app does"


def test_routes_are_served_by_the_hosts_server_and_handled_in_the_worker(app):
    import aiohttp

    async def go():
        base = f"http://127.0.0.1:{app.server.port}"
        out = {}
        async with aiohttp.ClientSession() as s:
            for path in ("/showcase/hello?a=1", "/api/showcase/hello", "/showcase/file", "/showcase/missing",
                         "/showcase_static/hello.txt", "/extensions/NC-Showcase/showcase.js"):
                async with s.get(base + path) as r:
                    out[path] = (r.status, await r.read(), r.headers.get("Content-Type"))
            async with s.post(base + "/showcase/echo/bob", json={"x": [1, 2]}, headers={"X-Showcase": "hi"}) as r:
                out["echo"] = (r.status, await r.json())
        return out

    out = app.aloop.run(go())
    status, body, ctype = out["/showcase/hello?a=1"]
    hello = json.loads(body)
    assert status == 200 and ctype.startswith("application/json")
    assert hello["app_utils"] == "the app's utils package" and hello["helper"] == "pack helper saw 1"
    assert hello["query"] == {"a": "1"} and hello["checkpoints"] == ["extra.ckpt", "tiny.safetensors"]
    assert out["/api/showcase/hello"][0] == 200, "the app's /api twin of the route"
    assert out["/showcase/file"][:2] == (200, b"static file of the showcase pack\n")
    assert out["/showcase/missing"][0] == 404 and b"no such thing" in out["/showcase/missing"][1]
    assert out["/showcase_static/hello.txt"][:2] == (200, b"static file of the showcase pack\n")
    assert out["/extensions/NC-Showcase/showcase.js"][0] == 200
    assert out["echo"] == (201, {"name": "bob", "body": {"x": [1, 2]}, "header": "hi"})


def test_folder_paths_in_the_worker_answer_from_the_host(app):
    import aiohttp

    async def hello():
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{app.server.port}/showcase/hello") as r:
                return await r.json()

    (app.root / "models" / "checkpoints" / "second.ckpt").write_bytes(b"x")
    assert app.aloop.run(hello())["checkpoints"] == ["extra.ckpt", "second.ckpt", "tiny.safetensors"], \
        "a file the host sees now is listed in the worker (no second copy of the app's state)"
    (app.root / "models" / "checkpoints" / "second.ckpt").unlink()
    run = _run_prompt(app.aloop.run, app.server, {"7": PROMPT["7"]}, ["7"])
    import hashlib

    assert run.outputs["7"] == (hashlib.sha256(app.model.read_bytes()).hexdigest(), 4096)
    # a model in a folder outside the app (extra_model_paths), read inside the worker
    extra = {"7": {"class_type": "SC ModelInfo", "inputs": {"ckpt_name": "extra.ckpt"}}}
    run = _run_prompt(app.aloop.run, app.server, extra, ["7"])
    assert run.outputs["7"] == (hashlib.sha256(b"extra model").hexdigest(), 11)


def test_import_fidelity_neutral_cwd_and_app_modules_first(app):
    run = _run_prompt(app.aloop.run, app.server, {"1": {"class_type": "SC Where", "inputs": {"probe": "p"}}}, ["1"])
    w = json.loads(run.outputs["1"][0])
    root = os.path.realpath(app.root)
    # The host runs from the folder above the app (the portable layout): the worker works there too,
    # so a default built from the working directory (WAS) is the same both ways and names a folder
    # the worker sees.
    here = os.path.realpath(app.root.parent)
    assert os.getcwd() == here and w["cwd"] == here
    default = os.path.join(here, "ComfyUI", "custom_nodes")
    iso = app.isolated_nodes["SC Where"].INPUT_TYPES()["required"]["probe"][1]["default"]
    assert iso == app.direct_info["SC Where"]["input"]["required"]["probe"][1]["default"] == default
    assert w["default_is_dir"], "the folder the default names is there in the worker"
    assert not w["cwd_on_path"], "the working directory is not on sys.path"
    assert w["app_nodes"] == os.path.join(root, "nodes.py"), "the pack's own nodes.py does not shadow the app's"
    assert w["app_utils"] == os.path.join(root, "utils", "__init__.py")
    assert w["module"] == str(app.root / "custom_nodes" / "NC-Showcase").replace(".", "_x_") + ".nodes"
    assert w["output"] == os.path.join(root, "output") and w["temp"] == os.path.join(root, "temp"), \
        "the app's own folders, at the same paths"


def test_worker_cwd_is_the_hosts_where_the_worker_sees_it_else_the_app_root(tmp_path):
    from nodecell.studio.loader import worker_cwd

    root = tmp_path / "apps" / "ComfyUI"
    out, models, layer = tmp_path / "out", tmp_path / "models", tmp_path / "layer"
    for p in (root / "comfy", out / "sub", models, layer / "x"):
        p.mkdir(parents=True)
    binds = [str(root / "comfy"), str(out), f"{models}:/run/models", f"{layer}:{root / 'custom_nodes' / 'P'}"]
    r = str(root)
    assert worker_cwd(r, binds, host_cwd=r) == r
    assert worker_cwd(r, binds, host_cwd=str(tmp_path / "apps")) == str(tmp_path / "apps"), "the portable layout"
    assert worker_cwd(r, binds, host_cwd="/") == "/"
    assert worker_cwd(r, binds, host_cwd=str(root / "comfy")) == str(root / "comfy"), "inside the app's code"
    assert worker_cwd(r, binds, host_cwd=str(out / "sub")) == str(out / "sub"), "inside a bind at its own path"
    # Folders the worker does not see at the same path: the app root.
    assert worker_cwd(r, binds, host_cwd=str(models)) == r, "bound elsewhere"
    assert worker_cwd(r, binds, host_cwd=str(layer / "x")) == r
    assert worker_cwd(r, binds, host_cwd=str(tmp_path)) == str(tmp_path), "above the app"
    assert worker_cwd(r, binds, host_cwd=str(tmp_path / "elsewhere")) == r
    link = tmp_path / "link"
    link.symlink_to(root)
    assert worker_cwd(r, binds, host_cwd=str(link)) == r, "by its real path"


def test_a_node_ending_in_system_exit_fails_its_call_and_the_pack_goes_on(app):
    """rembg calls sys.exit(1) at import when onnxruntime is missing: directly that SystemExit
    leaves the app's executor (it catches Exception); isolated the node's call fails at once
    with a RemoteError naming it (never a SystemExit in the host), and the same worker serves
    the next node."""
    import time

    import execution

    ext = app.host.packs["nc-showcase"]
    restarts = ext.restarts
    ex = execution.PromptExecutor(app.server)
    t = threading.Thread(target=ex.execute, daemon=True,
                         args=({"1": {"class_type": "SC Exits", "inputs": {"code": 3}}}, "exits", {}, ["1"]))
    t0 = time.monotonic()
    t.start()

    async def wait():
        while t.is_alive() and time.monotonic() - t0 < 30:
            await asyncio.sleep(0.01)

    app.aloop.run(wait())
    assert not t.is_alive(), "the call was answered (the node thread's loop did not die with the SystemExit)"
    from nodecell import RemoteError

    assert not ex.success and type(ex.exception) is RemoteError, ex.errors
    assert ex.exception.remote_type == "SystemExit" and ex.errors["message"].startswith("SystemExit: 3"), ex.errors
    run = _run_prompt(app.aloop.run, app.server, {"1": {"class_type": "SC Where", "inputs": {"probe": "p"}}}, ["1"])
    assert run.success and ext.restarts == restarts, "the same worker goes on"


def test_input_types_are_asked_of_the_pack_each_time_as_the_app_does(app):
    """A list in INPUT_TYPES (files of the input folder) that changes after the pack loaded is the
    same isolated as directly, in /object_info and in validation (WAS's Text File History Loader)."""
    import folder_paths

    iso, direct = app.isolated_nodes["SC Listing"], app.direct_nodes["SC Listing"]
    assert iso.INPUT_TYPES() == direct.INPUT_TYPES()
    new = Path(folder_paths.get_input_directory()) / f"listing-{os.getpid()}.png"
    new.write_bytes(b"x")
    try:
        assert iso.INPUT_TYPES() == direct.INPUT_TYPES()
        assert new.name in iso.INPUT_TYPES()["required"]["file"][0]

        async def on_the_loop():  # where the app's server computes /object_info
            return _node_infos(["SC Listing"])["SC Listing"]

        info = app.aloop.run(on_the_loop())
        assert info["input"] == json.loads(json.dumps(direct.INPUT_TYPES())), info
    finally:
        new.unlink()


def test_pack_writes_land_in_its_state_layer(app):
    cfg = app.root / "custom_nodes" / "NC-Showcase" / "showcase.json"
    assert not cfg.exists(), "the host's pack folder was never written"
    layer = app.state / "packs" / "nc-showcase" / "layer" / "showcase.json"
    assert json.loads(layer.read_text())["starts"] >= 1
    direct_cfg = app.direct / "NC-Showcase" / "showcase.json"
    assert json.loads(direct_cfg.read_text())["starts"] == 1


def test_app_requirements_are_shared_not_installed(app):
    ext = app.host.packs["nc-showcase"]
    venv = json.loads((Path(ext.venv["path"]) / "nodecell-venv.json").read_text())
    roots = venv["shared_torch"]["roots"]
    assert {"aiohttp", "numpy", "torch"} <= set(roots), roots
    pk = {p["name"]: p for p in venv["packages"]}
    assert pk["aiohttp"]["shared"] and pk["torch"]["shared"], "from the host, not installed"


def test_hidden_and_check_lazy_status_of_v3_entrypoint_packs(app):
    lazy = {"1": PROMPT["1"], "2": {"class_type": "NCLazy", "inputs": {"use_a": True, "a": ["1", 0], "b": ["1", 0]}}}
    cls = app.isolated_nodes["NCLazy"]
    assert "check_lazy_status" in vars(cls)
    got = app.aloop.run(cls.check_lazy_status(use_a=False, a=None, b=None))
    assert got == ["b"]
    run = _run_prompt(app.aloop.run, app.server, lazy, ["2"])
    assert run.success and same_value(run.outputs["2"][0], run.outputs["1"][0])
    _ = torch


HANZO_SCRIPT = r'''
import asyncio, json, os, sys
root, pack, direct, venvs, state = sys.argv[1:6]
sys.path.insert(0, root)
import utils  # first, as the app's main.py
import folder_paths, nodes, server, studio.cli_args
import studio_api.latest
from nodecell import studio as nstudio

async def main():
    srv = server.PromptServer(asyncio.get_running_loop())
    base = set(nodes.NODE_CLASS_MAPPINGS)
    assert await nodes.load_custom_node(direct, base)
    d = {n: json.loads(json.dumps(server.node_info(n))) for n in nodes.NODE_CLASS_MAPPINGS if n not in base}
    for n in d:
        del nodes.NODE_CLASS_MAPPINGS[n]
    host = nstudio.StudioHost(venvs, state=state)
    names = await host.load_custom_node(pack, nodes.NODE_CLASS_MAPPINGS)
    i = {n: json.loads(json.dumps(server.node_info(n))) for n in names}
    import threading, execution
    ex = execution.PromptExecutor(srv)
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "seed": 1}},
              "2": {"class_type": "NCTint", "inputs": {"image": ["1", 0], "amount": 0.5, "mode": "soft"}}}
    t = threading.Thread(target=ex.execute, args=(prompt, "p", {}, ["2"])); t.start()
    while t.is_alive():
        await asyncio.sleep(0.01)
    out = {"profile": host.profile.name, "direct": d, "isolated": i, "ok": ex.success,
           "mean": float(ex.outputs["2"][0].mean()) if ex.success else repr(ex.errors),
           "expected": float((ex.outputs["1"][0] * 0.5).clamp(0, 1).mean()) if ex.success else None}
    await host.stop()
    print("RESULT " + json.dumps(out))

asyncio.run(main())
'''


def _hanzo_names(text: str) -> str:
    import re

    text = text.replace("comfy_api", "studio_api").replace("comfy_execution", "studio_execution")
    return re.sub(r"\bcomfy\b", "studio", text)


def test_hanzo_studio_names_are_the_same_shape(studio_venv_root):
    """Hanzo Studio is ComfyUI's shape with studio/studio_api/studio_execution names: the stand-in app and
    a v3 pack renamed that way load isolated with the hanzo profile detected, and match the direct load."""
    import subprocess

    d = Path(tempfile.mkdtemp(prefix="nodecell-hanzo-", dir="/var/tmp"))
    try:
        os.chmod(d, 0o755)
        root = d / "Hanzo"
        for src in sorted((FIXTURES / "studio_app").rglob("*")):
            rel = src.relative_to(FIXTURES / "studio_app")
            parts = [{"comfy": "studio", "comfy_api": "studio_api", "comfy_execution": "studio_execution"}.get(p, p)
                     for p in rel.parts]
            dst = root.joinpath(*parts)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(_hanzo_names(src.read_text()) if src.suffix == ".py" else src.read_text())
        for sub in ("output", "temp", "input", "user", "custom_nodes"):
            (root / sub).mkdir(exist_ok=True)
        for where in (root / "custom_nodes" / "NC-Entry", d / "direct" / "NC-Entry"):
            where.mkdir(parents=True)
            for f in (FIXTURES / "packs" / "NC-Entry").iterdir():
                (where / f.name).write_text(_hanzo_names(f.read_text()))
        for base, _dirs, files in os.walk(d):
            os.chmod(base, 0o755)
            for f in files:
                os.chmod(os.path.join(base, f), 0o644)
        p = subprocess.run([sys.executable, "-c", HANZO_SCRIPT, str(root), str(root / "custom_nodes" / "NC-Entry"),
                            str(d / "direct" / "NC-Entry"), str(studio_venv_root), str(d / "state")],
                           capture_output=True, text=True, timeout=600)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        assert line, p.stdout[-3000:] + p.stderr[-6000:]
        r = json.loads(line[0][len("RESULT "):])
        assert r["profile"] == "hanzo"
        assert r["isolated"] == r["direct"] and set(r["isolated"]) == {"NCTint", "NCLazy"}
        assert r["ok"] and abs(r["mean"] - r["expected"]) < 1e-6, r
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_schema_classes_cross_by_their_identity(app):
    """@comfytype gives each io type its own Input/Output classes (generic __qualname__): they cross by
    their io type; io.Custom types by io_type; nothing outside the allowed, imported packages is rebuilt."""
    from dataclasses import asdict

    from comfy_api.latest import io

    from nodecell.studio import schema

    allowed = ("comfy_api", "comfy_execution")
    mine = io.Custom("MINE")
    s = io.Schema(node_id="X", inputs=[io.Int.Input("n", min=1), mine.Input("m"), io.Float.Input("f", step=0.5)],
                  outputs=[mine.Output("o"), io.Image.Output()], hidden=[io.Hidden.unique_id])
    data = schema.to_data(s, allowed)
    ins = data["state"]["inputs"]
    assert ins[0]["__obj__"] == {"io": {"t": "comfy_api.latest._io:Int"}, "part": "Input"}
    assert ins[1]["__obj__"] == {"io": {"custom": "MINE"}, "part": "Input"}
    assert type(io.Int.Input).__qualname__ == type(io.Float.Input).__qualname__, "the same generic qualname"
    back = schema.from_data(data, allowed)
    assert type(back.inputs[0]) is io.Int.Input and type(back.inputs[2]) is io.Float.Input
    assert back.inputs[1].io_type == "MINE" and back.outputs[0].io_type == "MINE"
    assert back.hidden == [io.Hidden.unique_id]
    assert asdict(back.get_v1_info(object)) == asdict(s.get_v1_info(object))
    for bad, match in ((({"__obj__": {"t": "os:system"}, "state": {}}), "outside the allowed"),
                       (({"__obj__": {"t": "comfy_api.nowhere:X"}, "state": {}}), "not imported"),
                       (({"__obj__": {"io": {"t": "comfy_api.latest._io:Int"}, "part": "Nope"}, "state": {}}),
                        "malformed"),
                       (({"__obj__": {"io": {"custom": 7}, "part": "Input"}, "state": {}}), "malformed"),
                       (({"__obj__": {"t": "comfy_api.latest._io:Int"}, "state": []}), "state must be")):
        with pytest.raises(ValueError, match=match):
            schema.from_data(bad, allowed)



def test_a_pack_that_writes_next_to_the_apps_code_at_import_loads_with_its_own_app_layer(app):
    """NC-WebExt makes ``<dir of server.py>/web/extensions/ncwebext`` at import, as
    ComfyUI-Custom-Scripts does (the app's checkout has no ``web/``). Isolated, the folder is made
    in the pack's app layer (its state), the pack loads and its node runs, a restart (a new uid as
    root) still writes there, and the host's app tree never gets a ``web/`` folder."""
    import nodes

    pack = world_readable_copy(FIXTURES / "packs" / "NC-WebExt", app.root / "custom_nodes" / "NC-WebExt")
    assert not (app.root / "web").exists()
    names = app.aloop.run(app.host.load_custom_node(str(pack), nodes.NODE_CLASS_MAPPINGS,
                                                    nodes.NODE_DISPLAY_NAME_MAPPINGS))
    try:
        assert sorted(names) == ["NCWebExtAppView", "NCWebExtDir"], names
        cls = nodes.NODE_CLASS_MAPPINGS["NCWebExtDir"]
        assert app.aloop.run(getattr(cls(), cls.FUNCTION)(name="run1"))[0] == "installed.txt run1"
        layer = app.state / "packs" / "nc-webext" / "app-layer"
        assert app.host.app_layers["nc-webext"] == str(layer)
        ext_dir = layer / "web" / "extensions" / "ncwebext"
        assert sorted(os.listdir(ext_dir)) == ["installed.txt", "run1"]
        assert not (app.root / "web").exists(), "the host's app tree was never written"
        # The app's data folders it is not given stay absent, its code read-only, other packs unseen.
        view_cls = nodes.NODE_CLASS_MAPPINGS["NCWebExtAppView"]
        view = json.loads(app.aloop.run(getattr(view_cls(), view_cls.FUNCTION)())[0])
        assert view["code_write"] in (errno.EROFS, errno.EACCES), view
        assert view["user"] is False and view["packs"] == ["NC-WebExt"], view
        ext = app.host.packs["nc-webext"]
        # a restart leases a new uid as root: the layer is opened to it again
        app.aloop.run(ext.restart())
        assert app.aloop.run(getattr(cls(), cls.FUNCTION)(name="run2"))[0] == "installed.txt run1 run2"
        assert not (app.root / "web").exists()
    finally:
        ext = app.host.packs.pop("nc-webext", None)
        if ext is not None:
            app.aloop.run(ext.stop())
        for n in ("NCWebExtDir", "NCWebExtAppView"):
            nodes.NODE_CLASS_MAPPINGS.pop(n, None)
            nodes.NODE_DISPLAY_NAME_MAPPINGS.pop(n, None)
        shutil.rmtree(pack, ignore_errors=True)


def test_packs_importing_the_apps_extra_nodes_and_prompt_queue_load_and_read_what_runs(app):
    """NC-AppImports imports, at load, ``comfy_extras.nodes_latent`` (as rgthree-comfy), half of
    an import cycle that only the app's own loading order resolves, and
    ``PromptServer.instance.prompt_queue`` (as ComfyUI-VideoHelperSuite). Isolated it loads (the
    worker imported the host's ``comfy_extras`` modules in the host's order first), its node
    reads the running prompt from the host's queue, whose sensitive part (the user's API keys)
    never reaches the worker, and queueing a prompt is refused with a clear error. What it
    changed in place in a ``folder_names_and_paths`` entry (as AnimateDiff-Evolved adds its
    extensions) is in the host's table."""
    import folder_paths
    import nodes

    # as the app's loader left them: completed in this order (imported in it, the first fails)
    assert [m for m in sys.modules if m.startswith("comfy_extras.")] == \
        ["comfy_extras.nodes_latent", "comfy_extras.nodes_post_processing"]
    pack = world_readable_copy(FIXTURES / "packs" / "NC-AppImports", app.root / "custom_nodes" / "NC-AppImports")
    queue = app.server.prompt_queue
    try:
        names = app.aloop.run(app.host.load_custom_node(str(pack), nodes.NODE_CLASS_MAPPINGS,
                                                        nodes.NODE_DISPLAY_NAME_MAPPINGS))
        assert names == ["NCRunningPrompt"], names
        paths, exts = folder_paths.folder_names_and_paths["ncappimports"]
        assert paths == [str(pack / "models"), str(pack / "more_models")] and ".ncx" in exts, (paths, exts)
        prompt = {"1": {"class_type": "NCRunningPrompt", "inputs": {}}}
        queue.currently_running[7] = (7, "prompt-7", prompt, {"extra_pnginfo": {"workflow": "wf"}}, ["1"],
                                      {"api_key_comfy_org": "secret"})
        cls = nodes.NODE_CLASS_MAPPINGS["NCRunningPrompt"]
        out = json.loads(app.aloop.run(getattr(cls(), cls.FUNCTION)())[0])
        assert (out["number"], out["prompt_id"], out["workflow"]) == (7, "prompt-7", {"workflow": "wf"}), out
        assert out["sensitive"] == {} and "secret" not in json.dumps(out), out
        assert out["remaining"] == 1 and out["latent"] == [4, 5], out
        assert out["put"].startswith("PermissionError: PromptServer.instance.prompt_queue.put is not available"), out
        assert queue.queue == [], "nothing queued in the host"
    finally:
        folder_paths.folder_names_and_paths.pop("ncappimports", None)
        queue.currently_running.clear()
        ext = app.host.packs.pop("nc-appimports", None)
        if ext is not None:
            app.aloop.run(ext.stop())
        nodes.NODE_CLASS_MAPPINGS.pop("NCRunningPrompt", None)
        shutil.rmtree(pack, ignore_errors=True)


def test_a_pack_importing_what_the_apps_environment_has_without_declaring_it_gets_it_shared(app, caplog):
    """NC-Undeclared imports ``elftools`` (pyelftools, in the host's environment, never imported by
    the host process) and declares nothing, as ComfyUI_Comfyroll_CustomNodes imports matplotlib:
    directly it works because the app's environment has it. Isolated the host shares that
    distribution into the pack's venv, as it shares the app's requirements, and says so."""
    import importlib.metadata
    import logging

    import nodes

    assert "elftools" not in sys.modules, "the host process has not imported it"
    pack = world_readable_copy(FIXTURES / "packs" / "NC-Undeclared", app.root / "custom_nodes" / "NC-Undeclared")
    try:
        with caplog.at_level(logging.INFO, logger="nodecell"):
            names = app.aloop.run(app.host.load_custom_node(str(pack), nodes.NODE_CLASS_MAPPINGS,
                                                            nodes.NODE_DISPLAY_NAME_MAPPINGS))
        assert names == ["NCUndeclaredVersion"], names
        assert "pyelftools" in app.host.packs["nc-undeclared"].config["share"]
        assert any("imports pyelftools" in r.getMessage() and "without declaring it" in r.getMessage()
                   for r in caplog.records), caplog.text
        cls = nodes.NODE_CLASS_MAPPINGS["NCUndeclaredVersion"]
        assert app.aloop.run(getattr(cls(), cls.FUNCTION)()) == (importlib.metadata.version("pyelftools"),)
    finally:
        ext = app.host.packs.pop("nc-undeclared", None)
        if ext is not None:
            app.aloop.run(ext.stop())
        nodes.NODE_CLASS_MAPPINGS.pop("NCUndeclaredVersion", None)
        shutil.rmtree(pack, ignore_errors=True)


def test_a_restarted_pack_rewrites_its_state(app):
    """As root, every launch of a pack's cell leases a new uid: a restarted pack must still rewrite
    the state its last cell wrote (NC-Showcase rewrites showcase.json, which its first cell created,
    at every import). Last in this module: it restarts the pack's cell."""
    ext = app.host.packs["nc-showcase"]
    layer = app.state / "packs" / "nc-showcase" / "layer" / "showcase.json"
    starts = json.loads(layer.read_text())["starts"]
    first = ext._cell.status.get("uid")
    if os.geteuid() == 0:
        assert layer.stat().st_uid == first, "the file is the first cell's"
    app.aloop.run(ext.restart())  # the import at start rewrites the file
    assert json.loads(layer.read_text())["starts"] == starts + 1, "the restarted pack rewrote its state"
    if os.geteuid() == 0:
        assert ext._cell.status.get("uid") != first, "a new uid for the new launch"
    cls = app.isolated_nodes["SC Where"]
    where = json.loads(app.aloop.run(getattr(cls(), cls.FUNCTION)(probe="x"))[0])
    assert where["cwd"], "the restarted pack answers"
