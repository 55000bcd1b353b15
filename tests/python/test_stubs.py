"""The compiled module's type stubs match it (mypy's stubtest), and every public name is documented."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest


def test_stubtest_on_the_extension_module():
    pytest.importorskip("mypy")
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "nodecell._nodecell"], capture_output=True,
                       text=True, cwd="/tmp")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_every_public_name_has_a_docstring(nc):
    missing = []
    for name in nc.__all__:
        obj = getattr(nc, name)
        if callable(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                if not (getattr(member, "__doc__", "") or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"undocumented public names: {missing}"
