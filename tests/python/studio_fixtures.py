"""Fixtures of the Studio tests (``pytest_plugins = ["studio_fixtures"]`` in the test modules):
a world-readable copy of the fixtures with the old stand-in API package importable, and the
persistent, world-readable venv cache."""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from studio_support import (EXAMPLES, FIXTURES, PACKS, PROMPT, TARGETS, TEST_VENV_ROOT, App, _node_infos,
                            _run_prompt, forget_app, world_readable_copy)


@pytest.fixture(scope="module")
def studio_files():
    """A world-readable copy of tests/fixtures and examples/; the stand-in comfy_api importable here."""
    d = Path(tempfile.mkdtemp(prefix="nodecell-studio-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    world_readable_copy(FIXTURES / "packs", d / "packs")
    world_readable_copy(FIXTURES / "studio_host", d / "studio_host")
    world_readable_copy(EXAMPLES, d / "examples")
    host_path = str(d / "studio_host")
    sys.path.insert(0, host_path)
    import comfy_api.latest  # noqa: F401 - the host app has its API package imported

    yield d
    sys.path.remove(host_path)
    for name in [m for m in sys.modules if m == "comfy_api" or m.startswith("comfy_api.")]:
        del sys.modules[name]
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def studio_venv_root():
    """The persistent, world-readable venv cache shared with the other Python tests."""
    TEST_VENV_ROOT.mkdir(parents=True, exist_ok=True)
    for p in [TEST_VENV_ROOT, *TEST_VENV_ROOT.parents]:
        if str(p) in ("/", "/var", "/var/tmp", "/tmp"):
            break
        os.chmod(p, 0o755)
    return TEST_VENV_ROOT


@pytest.fixture(scope="module")
def app(aloop, studio_venv_root):
    d = Path(tempfile.mkdtemp(prefix="nodecell-app-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    root = world_readable_copy(FIXTURES / "studio_app", d / "ComfyUI")
    # The app runs from the folder above its own (the portable layout: `python ComfyUI/main.py`):
    # packs building paths from the working directory see the same one isolated.
    cwd = os.getcwd()
    os.chdir(d)
    direct = d / "direct"
    for p in PACKS:
        world_readable_copy(FIXTURES / "packs" / p, root / "custom_nodes" / p)
        world_readable_copy(FIXTURES / "packs" / p, direct / p)
    os.chmod(direct, 0o755)
    for sub in ("output", "temp", "input", "user"):
        (root / sub).mkdir(mode=0o755)
        os.chmod(root / sub, 0o755)
    model = root / "models" / "checkpoints" / "tiny.safetensors"
    model.parent.mkdir(parents=True, exist_ok=True)
    for p in (root / "models", model.parent):
        os.chmod(p, 0o755)
    model.write_bytes(os.urandom(4096))
    os.chmod(model, 0o644)
    state = d / "state"
    sys.path.insert(0, str(root))
    import utils  # noqa: F401 - first, as the app's main.py (its nodes.py puts comfy/ first on sys.path)
    import comfy.cli_args
    import comfy.model_management
    import comfy.utils
    import nodes
    import server

    comfy.cli_args.args.cpu = True
    # A model folder outside the app (what extra_model_paths.yaml adds).
    extra = d / "extra_models" / "checkpoints"
    extra.mkdir(parents=True)
    (extra / "extra.ckpt").write_bytes(b"extra model")
    for p in (d / "extra_models", extra):
        os.chmod(p, 0o755)
    os.chmod(extra / "extra.ckpt", 0o644)
    import folder_paths

    folder_paths.add_model_folder_path("checkpoints", str(extra))
    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, prompt_id=None, node_id=None:
                                             progress.append((v, t, node_id)))
    a = App()
    a.aloop = aloop
    a.root, a.direct, a.state, a.progress, a.model = root, direct, state, progress, model
    aloop.run(nodes.init_builtin_extra_nodes())  # before the packs, as the app's start-up
    base = set(nodes.NODE_CLASS_MAPPINGS)

    # The app's own way: the packs imported into this process.
    async def load_direct():
        srv = server.PromptServer(asyncio.get_running_loop())
        for p in PACKS:
            assert await nodes.load_custom_node(str(direct / p), base)
        return srv

    a.direct_server = aloop.run(load_direct())
    a.direct_nodes = {n: c for n, c in nodes.NODE_CLASS_MAPPINGS.items() if n not in base}
    a.direct_info = _node_infos(a.direct_nodes)
    a.direct_run = _run_prompt(aloop.run, a.direct_server, PROMPT, TARGETS, {"extra_pnginfo": {"workflow": "wf"}})
    assert a.direct_run.success, a.direct_run.errors
    for n in a.direct_nodes:
        del nodes.NODE_CLASS_MAPPINGS[n]
        nodes.NODE_DISPLAY_NAME_MAPPINGS.pop(n, None)
    nodes.EXTENSION_WEB_DIRS.clear()
    nodes.LOADED_MODULE_DIRS.clear()

    # Isolated: StudioHost into the app's own mappings, a fresh server.
    from nodecell import studio

    async def load_isolated():
        srv = server.PromptServer(asyncio.get_running_loop())
        host = studio.StudioHost(str(studio_venv_root), state=str(state))
        t0 = time.perf_counter()
        names = {}
        for p in PACKS:
            names[p] = await host.load_custom_node(str(root / "custom_nodes" / p), nodes.NODE_CLASS_MAPPINGS,
                                                   nodes.NODE_DISPLAY_NAME_MAPPINGS)
        a.load_s = time.perf_counter() - t0
        srv.add_routes()
        await srv.start()
        return srv, host, names

    a.server, a.host, a.names = aloop.run(load_isolated())
    a.isolated_nodes = {n: nodes.NODE_CLASS_MAPPINGS[n] for names in a.names.values() for n in names}
    yield a

    async def stop():
        await a.host.stop()
        await a.server.stop()

    aloop.run(stop())
    os.chdir(cwd)
    for n in a.isolated_nodes:
        nodes.NODE_CLASS_MAPPINGS.pop(n, None)
    forget_app(root, also_prefix=str(direct))
    shutil.rmtree(d, ignore_errors=True)
