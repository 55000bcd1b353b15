"""Helpers for the Studio tests (their fixtures are in studio_fixtures.py; conftest.py holds the shared ones).

Sandboxed workers run as host uid 65534 when the tests run as root, so the packs,
the stand-in host API package (``comfy_api``) and the venv root must be readable
by that uid: the fixtures are copied into a world-readable folder under /var/tmp
(pytest's own tmp dirs are mode 0700), and venvs go to the shared, persistent
test venv cache (``$NODECELL_TEST_VENV_ROOT``, default /var/tmp/nodecell-tests/venvs)
so repeated runs, and the numpy 1.26.4 / 2.x venvs of the examples, are built once.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
import asyncio
import json
import threading
import time
from typing import Any, Dict


REPO = Path(__file__).resolve().parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures"
EXAMPLES = REPO / "examples"
TEST_VENV_ROOT = Path(os.environ.get("NODECELL_TEST_VENV_ROOT", "/var/tmp/nodecell-tests/venvs"))


def world_readable_copy(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` (no __pycache__), directories 0755 and files 0644."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    for root, dirs, files in os.walk(dst):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return dst


class Loaded:
    """A StudioHost with the classic and v3 fixture packs loaded isolated, and the same
    packs imported un-isolated into separate mappings."""

    def __init__(self, host: Any, isolated: Dict[str, Any], display: Dict[str, str], local: Dict[str, Any],
                 local_display: Dict[str, str]) -> None:
        self.host = host
        self.isolated = isolated
        self.display = display
        self.local = local
        self.local_display = local_display


def tensors_equal(a: Any, b: Any) -> bool:
    import torch

    return torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def same_value(a: Any, b: Any) -> bool:
    """Deep equality with tensors compared by value."""
    if hasattr(a, "shape") and hasattr(b, "shape"):
        return tensors_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


# -- the stand-in app (tests/fixtures/studio_app) ------------------------------------------------

PACKS = ("NC-Showcase", "NC-Entry")


class App:
    """The stand-in app with both packs loaded both ways."""


def _run_prompt(loop_thread_run, srv, prompt, outputs, extra=None):
    """Run a prompt through the app's executor on a thread of its own (as the app's prompt worker)."""
    import execution

    ex = execution.PromptExecutor(srv)
    t = threading.Thread(target=ex.execute, args=(prompt, f"p{time.monotonic_ns()}", extra or {}, outputs))
    t.start()

    async def wait():
        while t.is_alive():
            await asyncio.sleep(0.01)

    loop_thread_run(wait())
    return ex


#: The stand-in app's top-level modules (tests/fixtures/studio_app) that app fixtures import.
APP_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
               "execution", "node_helpers", "utils", "app")


def forget_app(root, also_prefix=None):
    """Undo an app fixture's imports: the app's folder off ``sys.path``, its modules (and those
    whose name starts with ``also_prefix``) out of ``sys.modules``."""
    sys.path.remove(str(root))
    for m in [m for m in sys.modules if m.split(".")[0] in APP_MODULES or m.startswith(f"{root}/")
              or (also_prefix is not None and m.startswith(also_prefix))]:
        del sys.modules[m]


def host_pid(pidfd: int) -> int:
    """The host pid of the process a pidfd refers to."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise AssertionError("no Pid in the pidfd's fdinfo")


def parent_pid(pid: int) -> int:
    """The parent's pid of host process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise AssertionError("no PPid")


def _node_infos(names):
    import server

    return {n: json.loads(json.dumps(server.node_info(n))) for n in names}


PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 96, "seed": 5}},
    "2": {"class_type": "SC Invert", "inputs": {"image": ["1", 0], "steps": 3, "delay": 0.0}},
    "3": {"class_type": "SCv3Brighten", "inputs": {"image": ["2", 0], "amount": 0.2, "mode": "add", "n": 2}},
    "4": {"class_type": "SC Save", "inputs": {"image": ["3", 0], "filename_prefix": "sc/run"}},
    "5": {"class_type": "SC Hidden", "inputs": {"tag": "t"}},
    "6": {"class_type": "NCTint", "inputs": {"image": ["1", 0], "amount": 0.3, "mode": "soft"}},
    "7": {"class_type": "SC ModelInfo", "inputs": {"ckpt_name": "tiny.safetensors"}},
    "8": {"class_type": "SCv3Expand", "inputs": {"count": 2}},
    "9": {"class_type": "SCv3Block", "inputs": {"block": True}},
    "10": {"class_type": "SC Invert", "inputs": {"image": ["9", 0], "steps": 1, "delay": 0.0}},
    "11": {"class_type": "SC Checked", "inputs": {"threshold": 0.25, "label": "x"}},
    "12": {"class_type": "SC Conditioned", "inputs": {"strength": 0.7}},
}
TARGETS = ["4", "5", "6", "7", "8", "10", "11", "12"]


_NP1_INIT = '''
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


NODE_CLASS_MAPPINGS = {%r: NumpyVersion}
'''
_NP1_MANIFEST = "name: nc-numpy1\nversion: 0.1.0\nisolated: true\nshare_torch: true\ndependencies:\n  - numpy==1.26.4\n"


def write_numpy1_pack(custom_nodes: Path, node_name: str) -> Path:
    """Write the pack `NC-Numpy1` (a venv pinning numpy 1.26.4, one node `node_name` answering
    numpy's version) into `custom_nodes`, readable by a sandboxed worker; returns its folder."""
    np1 = custom_nodes / "NC-Numpy1"
    np1.mkdir(mode=0o755)
    os.chmod(np1, 0o755)
    (np1 / "__init__.py").write_text(_NP1_INIT % node_name)
    (np1 / "manifest.yaml").write_text(_NP1_MANIFEST)
    for f in np1.iterdir():
        os.chmod(f, 0o644)
    return np1
