"""``NODECELL_TENSOR_POOL`` (the most bytes of free pooled tensor arenas a process keeps)
is read with the project's one size parser; a value it cannot read is an error naming the
variable and the value, where the user sees it: the extension's start for the host's own
environment, the worker's start for the worker's (the host stays up). Never ignored."""
from __future__ import annotations

import pytest
from conftest import pack

VAR = "NODECELL_TENSOR_POOL"


def _load(aloop, manager, nc, support_dir, name, env=None):
    """Load and start the basic pack as ``name``; stopped (its name free again) when it fails."""
    async def go():
        ext = manager.load_extension(nc.ExtensionConfig(
            name=name, module_path=pack(support_dir, "basic"), env=env or {}, timeout=60))
        try:
            await ext
        except BaseException:
            await ext.stop()
            raise
        return ext

    return aloop.run(go())


def _stop(aloop, ext):
    async def go():
        await ext.stop()

    aloop.run(go())


def test_sizes_in_the_project_units_and_the_default(nc, monkeypatch):
    from nodecell import _nodecell

    monkeypatch.delenv(VAR, raising=False)
    assert _nodecell.tensor_pool_env_limit() == 512 << 20
    for text, limit in (("64MiB", 64 << 20), ("1048576", 1 << 20), ("1G", 1 << 30), ("0", 0)):
        monkeypatch.setenv(VAR, text)
        assert _nodecell.tensor_pool_env_limit() == limit, text


def test_a_worker_started_with_64mib_keeps_that_limit(aloop, manager, nc, support_dir):
    ext = _load(aloop, manager, nc, support_dir, "pool_64mib", {VAR: "64MiB"})
    try:
        assert aloop.run(ext.pool_stats())["limit"] == 64 << 20
    finally:
        _stop(aloop, ext)


def test_a_bad_worker_value_fails_that_workers_start_with_the_message(aloop, manager, nc, support_dir,
                                                                      basic_ext):
    with pytest.raises(ValueError) as e:
        _load(aloop, manager, nc, support_dir, "pool_bad", {VAR: "12 apples"})
    msg = str(e.value)
    assert VAR in msg and '"12 apples"' in msg and "unknown unit" in msg, msg
    assert isinstance(e.value, nc.RemoteError) and e.value.remote_type == "ValueError"
    # The host is unharmed: other extensions go on, and the name can be loaded again fixed.
    assert aloop.run(basic_ext.double(21)) == 42
    fixed = _load(aloop, manager, nc, support_dir, "pool_bad", {VAR: "1M"})
    try:
        assert aloop.run(fixed.pool_stats())["limit"] == 1 << 20
    finally:
        _stop(aloop, fixed)


def test_a_bad_host_value_fails_the_extensions_start_naming_the_variable(aloop, manager, nc, support_dir,
                                                                        monkeypatch):
    monkeypatch.setenv(VAR, "lots")
    with pytest.raises(ValueError, match=f'^{VAR}: "lots": expected a size'):
        _load(aloop, manager, nc, support_dir, "pool_host_bad")
    monkeypatch.setenv(VAR, "64MiB")
    ext = _load(aloop, manager, nc, support_dir, "pool_host_bad")
    try:
        assert aloop.run(ext.double(2)) == 4
    finally:
        _stop(aloop, ext)
