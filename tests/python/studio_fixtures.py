"""Fixtures of the Studio tests (``pytest_plugins = ["studio_fixtures"]`` in the test modules):
a world-readable copy of the fixtures with the old stand-in API package importable, and the
persistent, world-readable venv cache."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from studio_support import EXAMPLES, FIXTURES, TEST_VENV_ROOT, world_readable_copy


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
