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
from pathlib import Path
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
