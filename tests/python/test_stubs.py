"""The compiled module's type stubs match it (mypy's stubtest), and every public name is documented."""
from __future__ import annotations

import inspect

import pytest
from conftest import stubtest_result


def test_stubtest_on_the_extension_module(request):
    """mypy's stubtest; conftest.py starts it right after collection (it takes ~50 s of one CPU)."""
    pytest.importorskip("mypy")
    rc, out, early = stubtest_result(request.config)
    assert rc == 0, out[-6000:]
    assert early, "conftest.py did not start stubtest after collection (it then ran here, alone)"


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
