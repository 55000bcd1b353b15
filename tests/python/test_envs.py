"""Each pack imports its own dependencies; the host's never shadow them."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from conftest import pack


def test_two_numpy_versions_side_by_side(aloop, manager, nc, support_dir):
    assert np.__version__.startswith("2."), "the host runs numpy 2.x"

    async def go():
        old = await manager.load_extension(nc.ExtensionConfig.from_manifest(pack(support_dir, "np126")))
        new = await manager.load_extension(nc.ExtensionConfig.from_manifest(pack(support_dir, "np2")))
        return (await old.pack_value(), await old.versions(), await new.pack_value(), await new.versions(),
                old.config, new.config)

    v_old, ver_old, v_new, ver_new, cfg_old, cfg_new = aloop.run(go())
    assert v_old == "1.26.4" and ver_old["numpy"] == "1.26.4"
    assert v_new.startswith("2.") and ver_new["numpy"].startswith("2.")
    # Each numpy comes from the pack's own venv, not the host's site-packages.
    assert "/.venv/" not in ver_old["numpy_file"] and "/.venv/" not in ver_new["numpy_file"]
    assert cfg_new["max_memory"] == 10**9 and cfg_new["timeout"] == 30.0  # "1GB" (GiB would be 1 << 30)


def test_numpy_arrays_cross_between_numpy_versions(aloop, manager, nc):
    old = manager.extensions["np126"]
    a = np.linspace(0, 1, 1 << 16)
    b = aloop.run(old.echo(a))
    assert np.array_equal(a, b)


def test_shared_torch_is_the_hosts(aloop, basic_ext):
    torch = pytest.importorskip("torch")
    v = aloop.run(basic_ext.versions())
    assert v["torch"] == torch.__version__


def test_sizes_read_by_the_one_table(nc, tmp_path):
    from nodecell._find_launcher import find_launcher

    """Python configs, manifests and the launcher's flags read sizes by the same Rust table."""
    cases = {"8GB": 8_000_000_000, "512MiB": 512 << 20, "2G": 2 << 30, "1.5g": 3 << 29, "4096": 4096}
    for text, want in cases.items():
        assert nc.parse_size(text, "max_memory") == want
        cfg = nc.ExtensionConfig(name="x", module_path="/tmp", max_memory=text)
        assert cfg["max_memory"] == want
        (tmp_path / "manifest.yaml").write_text(f"name: p\nsandbox:\n  max_memory: {text}\n")
        assert nc.ExtensionConfig.from_manifest(str(tmp_path))["max_memory"] == want
    with pytest.raises(nc.ConfigError) as e:
        nc.ExtensionConfig(name="x", module_path="/tmp", sandbox={"tmp_size": "12 parsecs"})
    assert e.value.field == "sandbox.tmp_size" and "parsecs" in str(e.value)
    run = subprocess.run([find_launcher(), "run", "--mode", "best-effort", "--memory", "12 parsecs", "--", "/bin/true"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "parsecs" in run.stderr, run.stderr


def test_config_errors_name_the_field(nc, support_dir):
    with pytest.raises(nc.ConfigError) as e:
        nc.ExtensionConfig(name="x", module_path="/tmp", max_memory="lots")
    assert e.value.field == "max_memory"
    with pytest.raises(nc.ConfigError) as e:
        nc.ExtensionConfig(name="x", module_path="/tmp", sandbox={"writable_paths": ["rel/ok", 3]})
    assert e.value.field == "sandbox.writable_paths[1]"
    with pytest.raises(nc.ConfigError) as e:
        nc.ExtensionConfig(name="////", module_path="/tmp")  # nothing left once normalized
    assert e.value.field == "name"
    with pytest.raises(nc.ConfigError) as e:
        nc.ExtensionConfig(name="x", module_path="/tmp", unknown_key=1)
    assert e.value.field == "unknown_key"
    with pytest.raises(nc.ConfigError) as e:
        nc.ExtensionConfig(name="x", module_path="/tmp", sandbox_mode="sometimes")
    assert e.value.field == "sandbox_mode"


def test_manifest_errors_name_file_line_and_field(nc, tmp_path):
    (tmp_path / "manifest.yaml").write_text("name: p\ndependencies:\n  - numpy>=\n")
    with pytest.raises(nc.ConfigError) as e:
        nc.ExtensionConfig.from_manifest(str(tmp_path))
    msg = str(e.value)
    assert "manifest.yaml:3" in msg and "dependencies[0]" in msg, msg


def test_pyisolate_style_dict_access(nc):
    cfg = nc.ExtensionConfig(name="x", module_path="/tmp", dependencies=["numpy"], share_torch=True)
    assert cfg["name"] == "x" and cfg["dependencies"] == ["numpy"] and cfg["isolated"] is True
    assert cfg["sandbox"]["network"] is False and cfg["sandbox_mode"] is nc.SandboxMode.REQUIRED


def test_local_execution_same_api(aloop, nc, testext, support_dir, venv_root):
    async def go():
        m = nc.ExtensionManager(testext.TestExt, nc.ExtensionManagerConfig(venv_root_path=str(venv_root)))
        ext = await m.load_extension(nc.ExtensionConfig(name="local", module_path=pack(support_dir, "basic"),
                                                        isolated=False))
        try:
            import os

            return await ext.double(21), (await ext.whoami())["pid"] == os.getpid(), await ext.pack_value()
        finally:
            await m.stop_all_extensions()

    assert aloop.run(go()) == (42, True, 42)


def test_distribution_names_are_read_by_provisioning_s_own_rules():
    """The Studio host compares a pack's declared dependencies with what it imports by the names
    provisioning uses (one definition, in Rust): PEP 503 normalization, and a dependency string
    parsed as a requirement (markers, extras and pins left aside; options and URLs name none)."""
    from nodecell import _nodecell

    assert _nodecell.normalize_name("Foo_Bar..baz") == "foo-bar-baz"
    assert _nodecell.requirement_name("opencv-python-headless==4.7.0.72; platform_machine != 'aarch64'") == \
        "opencv-python-headless"
    assert _nodecell.requirement_name("Pillow[extra]>=9") == "pillow"
    assert _nodecell.requirement_name("git+https://host/org/repo.git") is None
    assert _nodecell.requirement_name("-r other.txt") is None
