"""Fixtures and helpers for test_studio.py (imported there; conftest.py holds the shared ones).

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
import tempfile
from pathlib import Path
from typing import Any, Dict

import pytest

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
