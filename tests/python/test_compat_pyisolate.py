"""nodecell.compat.pyisolate: code written for pyisolate 0.10 runs on nodecell unchanged (issue 12).

Real sandboxes and workers. The application under test (tests/python/support/nc_pyi_app.py)
is written against ``import pyisolate``: the alias resolves it here and in the workers.
"""
from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from conftest import pack

PY = sys.executable


def _children() -> set:
    me = str(os.getpid())
    out = set()
    for d in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.add(int(d.split("/")[2]))
    return out


def _wait_gone(before: set, timeout: float = 10.0) -> set:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _children() - before:
        time.sleep(0.05)
    return _children() - before


def _world_dir(prefix: str) -> str:
    d = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="module")
def pyi(support_dir):
    import nodecell.compat

    nodecell.compat.install_pyisolate_alias()
    import pyisolate

    yield pyisolate


@pytest.fixture(scope="module")
def app(pyi):
    import nc_pyi_app

    pyi.register_adapter(nc_pyi_app.AppAdapter())
    yield nc_pyi_app
    from pyisolate._internal.adapter_registry import AdapterRegistry

    AdapterRegistry.unregister()


class _Greeter:
    async def greet(self, who):
        return f"hello {who} from {os.getpid()}"

    def sync_greet(self, who):
        return f"hi {who}"


@pytest.fixture(scope="module")
def loaded(pyi, app, support_dir, venv_root):
    """One extension of the app, loaded as pyisolate code does (no await, lazy start)."""
    manager = pyi.ExtensionManager(app.AppExt, pyi.ExtensionManagerConfig(venv_root_path=str(venv_root)))
    events = []
    handle = manager.load_extension(pyi.ExtensionConfig(
        name="app ext ü", module_path=pack(support_dir, "basic"), isolated=True, dependencies=[],
        share_torch=True, share_cuda_ipc=True))  # as ComfyUI's loader asks on Linux, also without a GPU
    handle.register_callee(_Greeter(), "greeter")
    handle.register_event_handler("progress", events.append)
    yield manager, handle, events
    manager.stop_all_extensions()


def run(coro):
    return asyncio.run(coro)


# -- the alias ---------------------------------------------------------------------------------

def _py(code: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    full = dict(os.environ, **(env or {}))
    return subprocess.run([PY, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=120)


def test_alias_resolves_pyisolate_and_never_touches_a_real_install(tmp_path):
    fake = tmp_path / "site"
    (fake / "pyisolate").mkdir(parents=True)
    (fake / "pyisolate" / "__init__.py").write_text("REAL = True\n")
    env = {"PYTHONPATH": str(fake)}
    r = _py("import pyisolate; print(getattr(pyisolate, 'REAL', False))", env)
    assert r.stdout.strip() == "True", r.stderr  # not installed: the real package, untouched
    r = _py("""
        import nodecell.compat as c
        c.install_pyisolate_alias()
        import pyisolate, pyisolate.host, pyisolate._internal.rpc_protocol as rp
        import nodecell.compat.pyisolate as ncp
        print(pyisolate is ncp, pyisolate.host.Extension is ncp.host.Extension, hasattr(pyisolate, 'REAL'),
              rp.ProxiedSingleton is ncp.ProxiedSingleton, pyisolate.__version__)
        try:
            import pyisolate._internal.environment
        except ModuleNotFoundError as e:
            print('missing', e.name)
        """, env)
    assert r.stdout.split("\n")[0] == "True True False True 0.10.2", r.stderr
    assert "missing pyisolate._internal.environment" in r.stdout
    r = _py("""
        import pyisolate, nodecell.compat as c
        try:
            c.install_pyisolate_alias()
        except c.PyisolateAlreadyImported as e:
            print('refused:', e)
        """, env)
    assert "refused: pyisolate was already imported from" in r.stdout, r.stderr


def test_exec_and_pth_opt_in_whole_processes(tmp_path):
    code = "import pyisolate; print(pyisolate.__name__)"
    r = subprocess.run([PY, "-m", "nodecell.compat", "exec", "--", PY, "-c", code], capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.strip() == "nodecell.compat.pyisolate", r.stderr
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    r = subprocess.run([PY, "-m", "nodecell.compat", "install-pth", "--site", str(site_dir)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    probe = f"import site; site.addsitedir({str(site_dir)!r}); {code}"
    assert _py(probe).stdout.strip() == "nodecell.compat.pyisolate"
    off = _py(probe, {"NODECELL_PYISOLATE_ALIAS": "0"})
    assert "No module named 'pyisolate'" in off.stderr
    subprocess.run([PY, "-m", "nodecell.compat", "remove-pth", "--site", str(site_dir)], check=True,
                   capture_output=True, timeout=60)
    assert list(site_dir.iterdir()) == []


# -- a loaded extension ------------------------------------------------------------------------

def test_calls_names_and_child_environment(loaded, app):
    manager, h, _events = loaded
    assert manager.extensions["app ext ü"].normalized_name == "app_ext_ü"
    assert run(h.ping()) == "pong"
    assert run(h.call(5)) == ("call", 5), "the handle has no 'call' of its own: the extension's runs"
    assert run(h.proxy.call(6)) == ("call", 6)
    assert run(h.env("PYISOLATE_CHILD")) == "1"
    assert run(h.has_child_rpc()) is True
    assert run(h.env("NCAPP_CHILD_SETUP")) == "ncapp", "the adapter was rebuilt in the worker"
    assert run(h.env("NCAPP_API_Counter")) == "1", "handle_api_registration ran"
    assert run(h.env("NCAPP_EVENT_HOOKS")) == "AppExt", "setup_child_event_hooks got the extension"
    assert run(h.versions())["pyisolate"] == "0.10.2"
    assert run(h.pid()) != os.getpid()


def test_unknown_attributes_raise_instead_of_calling(loaded):
    _m, h, _e = loaded
    with pytest.raises(AttributeError):
        h.no_such_method  # noqa: B018
    with pytest.raises(AttributeError):
        h.proxy._private  # noqa: B018
    assert callable(h.register_event_handler) and h.proxy is h.proxy


def test_serializers_cross_as_closed_values_both_ways(loaded, app):
    _m, h, _e = loaded
    back, seen_there = run(h.money_roundtrip(app.Money(21, "EUR")))
    assert isinstance(back, app.Money) and back == app.Money(42, "EUR")
    assert back.where == f"deserialized in pid {os.getpid()}"
    assert seen_there.startswith("deserialized in pid ") and seen_there != back.where


def test_services_singletons_nested_and_local_methods(loaded, app):
    _m, h, _e = loaded
    before = app.Counter().value
    after, sync_value, where, given, given_deser, local, hits = run(h.use_counter(3))
    assert (after, sync_value) == (before + 3, before + 3)
    assert where == f"deserialized in pid {os.getpid()}", "the host deserialized the worker's Money"
    assert (given, given_deser, local) == (7, True, True)
    assert hits >= 1 and app.Child().hits == hits, "the nested singleton is the host's"
    assert isinstance(app.Counter().seen[-1], app.Money)
    assert run(h.caller_errors()) == ["no_such_method: AttributeError", "_private: AttributeError",
                                      "value: AttributeError"]
    assert run(h.from_a_thread_loop(2)) == before + 5, "a caller works from a new loop on another thread"
    assert app.Counter.get_remote_id() == "Counter"


def test_named_callees_both_ways(loaded, app):
    _m, h, _e = loaded
    assert run(h.register_echo()) == "echo"
    echo = h.create_caller(app.Echo, "echo")
    assert run(echo.shout("hi")) == "HI" and run(echo.ashout("hi")) == "HI!"
    with pytest.raises(AttributeError):
        echo.whisper  # noqa: B018
    assert run(h.greet_host("bob")) == f"hello bob from {os.getpid()} / hi bob"


def test_events_reach_host_handlers(loaded):
    import nodecell

    _m, h, events = loaded
    assert run(h.emit("progress", {"value": 5, "total": 10})) == "sent"
    assert run(h.aemit("progress", {"value": 6})) == "sent"
    assert events[-2:] == [{"value": 5, "total": 10}, {"value": 6}]
    with pytest.raises(nodecell.RemoteError, match="No handler registered for event 'nope'"):
        run(h.emit("nope", {}))
    with pytest.raises(nodecell.RemoteError, match="TypeError"):
        run(h.emit("progress", {"x": object.__new__(object)}))


def test_tensors_cross_natively(loaded, pyi):
    torch = pytest.importorskip("torch")
    _m, h, _e = loaded
    t = torch.arange(12, dtype=torch.float32)
    assert torch.equal(run(h.add_one(t)), t + 1)
    assert pyi.flush_tensor_keeper() == 0 and pyi.purge_orphan_sender_shm_files(force=True) == 0


def test_a_crashed_worker_is_restarted_on_the_next_call(loaded):
    import nodecell

    _m, h, _e = loaded
    assert run(h.ping()) == "pong"
    with pytest.raises(nodecell.WorkerCrashed):
        run(h.crash())
    assert run(h.ping()) == "pong"
    assert run(h.env("NCAPP_EVENT_HOOKS")) == "AppExt", "the new worker was set up again"


# -- event loops and stopping ------------------------------------------------------------------

def test_sync_start_inside_a_loop_then_other_loops_then_stop(pyi, app, support_dir, venv_root):
    from pyisolate.host import Extension

    kids0 = _children()
    ext = Extension(module_path=pack(support_dir, "basic"), extension_type=app.AppExt,
                    config=pyi.ExtensionConfig(name="loops", module_path=pack(support_dir, "basic"), isolated=True,
                                               dependencies=[], apis=[], share_torch=False, share_cuda_ipc=False),
                    venv_root_path=str(venv_root))

    async def first():
        ext.ensure_process_started()  # synchronous, inside a running loop (pyisolate's test host does it)
        return await ext.get_proxy().ping()

    assert run(first()) == "pong"
    for _ in range(2):
        assert run(ext.get_proxy().ping()) == "pong"  # a new loop each time

    async def stop():
        await ext.stop()  # a loop that never saw the extension

    run(stop())
    assert _wait_gone(kids0) == set()
    assert run(ext.get_proxy().ping()) == "pong", "started again, as pyisolate allows"
    ext.stop()
    assert _wait_gone(kids0) == set()


def test_stop_all_without_await_inside_a_running_loop(pyi, app, support_dir, venv_root):
    kids0 = _children()
    m = pyi.ExtensionManager(app.AppExt, {"venv_root_path": str(venv_root)})

    async def go():
        h = m.load_extension({"name": "stop-all", "module_path": pack(support_dir, "basic"), "isolated": True,
                              "dependencies": [], "apis": [], "share_torch": False, "share_cuda_ipc": False})
        await h  # start without blocking the loop
        assert await h.ping() == "pong"
        m.stop_all_extensions()
        return _children() - kids0

    assert run(go()) == set()
    assert m.extensions == {}


def test_isolated_false_runs_in_this_process(pyi, app, support_dir, venv_root):
    m = pyi.ExtensionManager(app.AppExt, {"venv_root_path": str(venv_root)})
    try:
        h = m.load_extension({"name": "local", "module_path": pack(support_dir, "basic"), "isolated": False,
                              "dependencies": [], "apis": [], "share_torch": False, "share_cuda_ipc": False})
        assert run(h.ping()) == "pong" and run(h.pid()) == os.getpid()
    finally:
        m.stop_all_extensions()


# -- sealed workers ----------------------------------------------------------------------------

def test_sealed_node_extension(pyi, app, support_dir, venv_root):
    from pyisolate._internal.remote_handle import RemoteObjectHandle

    m = pyi.ExtensionManager(pyi.SealedNodeExtension, {"venv_root_path": str(venv_root)})
    try:
        h = m.load_extension({"name": "sealed", "module_path": pack(support_dir, "pyi_sealed"), "isolated": True,
                              "dependencies": [], "apis": [], "share_torch": False, "share_cuda_ipc": False,
                              "execution_model": "sealed_worker"})

        async def go():
            nodes = await h.list_nodes()
            handle, n = await h.execute_node("MakeOpaque", n=4)
            (read,) = await h.execute_node("ReadOpaque", o=handle)
            details = await h.get_node_details("MakeOpaque")
            return nodes, handle, n, read, details

        nodes, handle, n, read, details = run(go())
        assert nodes == {"MakeOpaque": "Make Opaque", "ReadOpaque": "ReadOpaque"}
        assert isinstance(handle, RemoteObjectHandle) and handle.type_name == "Opaque" and n == 5
        assert read == 40, "the handle resolved to the worker's object"
        assert details["return_types"] == ("OPAQUE", "INT") and details["function"] == "run"
    finally:
        m.stop_all_extensions()


def test_sealed_host_ro_paths_are_mounted_and_importable(pyi, app, support_dir, venv_root):
    shared = _world_dir("nc-sealed-ro-")
    with open(os.path.join(shared, "nc_sealed_helper.py"), "w") as f:
        f.write("X = 1\n")
    os.chmod(os.path.join(shared, "nc_sealed_helper.py"), 0o644)
    m = pyi.ExtensionManager(app.AppExt, {"venv_root_path": str(venv_root)})
    try:
        h = m.load_extension({"name": "sealed-ro", "module_path": pack(support_dir, "basic"), "isolated": True,
                              "dependencies": [], "apis": [], "share_torch": False, "share_cuda_ipc": False,
                              "execution_model": "sealed_worker", "sealed_host_ro_paths": [shared]})
        assert run(h.imported_from("nc_sealed_helper")) == os.path.join(shared, "nc_sealed_helper.py")
    finally:
        m.stop_all_extensions()
        shutil.rmtree(shared, ignore_errors=True)


# -- configuration -----------------------------------------------------------------------------

def _convert(cfg, **kw):
    from nodecell.compat.pyisolate._internal._nc_bridge import PyisolateBridge
    from nodecell.compat.pyisolate._internal._nc_config import convert

    base = {"name": "c", "module_path": "/tmp", "isolated": True, "dependencies": [], "apis": [],
            "share_torch": False, "share_cuda_ipc": False}
    base.update(cfg)
    return convert(base, "/tmp", "tok", adapter=kw.get("adapter"), snapshot=kw.get("snapshot", {}),
                   bridge=PyisolateBridge)


def test_config_fields_are_honoured_or_refused_naming_the_field(pyi, tmp_path):
    import nodecell

    own = tmp_path / "pyisolate-src"
    own.mkdir()
    (own / "pyproject.toml").write_text('[project]\nname = "pyisolate"\nversion = "0.10.2"\n')
    nc, _w = _convert({"dependencies": [f"-e {own}", str(own), "pyisolate>=0.10", "flash-attn>=2", "numpy"],
                       "cuda_wheels": {"index_url": "https://wheels.example/simple/", "packages": ["flash-attn"],
                                       "package_map": {"flash_attn": "flash-attn-cu12"}},
                       "extra_index_urls": ["https://other.example/simple/"], "timeout": 30})
    assert nc["dependencies"] == ["flash-attn-cu12>=2", "numpy"], "pyisolate itself is the alias; map applied"
    assert nc["extra_index_urls"] == ["https://other.example/simple/", "https://wheels.example/simple/"]
    assert nc["timeout"] == 30.0 and nc["env"]["PYISOLATE_CHILD"] == "1"
    has_gpu = bool(glob.glob("/dev/nvidia[0-9]*"))
    assert nc["gpu"] is has_gpu, "GPU device nodes shown where there are any, as pyisolate does"
    assert _convert({"gpu": False})[0]["gpu"] is False
    refused = {
        "package_manager": {"package_manager": "conda"},
        "conda_channels": {"conda_channels": ["conda-forge"]},
        "conda_dependencies": {"conda_dependencies": ["eccodes"]},
        "cuda_wheels.packages": {"cuda_wheels": {"index_url": "https://x/"}},
        "cuda_wheels.index_url": {"cuda_wheels": {"packages": ["a"]}},
        "sealed_host_ro_paths": {"sealed_host_ro_paths": ["/opt"]},
        "execution_model": {"execution_model": "sealed_worker", "share_torch": True},
        "dependencies[0]": {"dependencies": ["-e ./somewhere"]},
        "frobnicate": {"frobnicate": 1},
        "apis[0]": {"apis": [object]},
    }
    for field, cfg in refused.items():
        with pytest.raises(nodecell.ConfigError) as e:
            _convert(cfg)
        assert e.value.field == field, (field, str(e.value))
    with pytest.raises(nodecell.ConfigError) as e:
        _convert({"execution_model": "sealed_worker", "sealed_host_ro_paths": ["/etc"]})
    assert e.value.field == "sealed_host_ro_paths[0]"


def test_interfaces_and_registry(pyi, app):
    from pyisolate._internal.serialization_registry import SerializerRegistry
    from pyisolate.interfaces import IsolationAdapter, SerializerRegistryProtocol

    assert isinstance(app.AppAdapter(), IsolationAdapter)
    assert isinstance(SerializerRegistry.get_instance(), SerializerRegistryProtocol)
    assert pyi.get_adapter() is not None and pyi.get_adapter().identifier == "ncapp"
    with pytest.raises(RuntimeError, match="already registered"):
        pyi.register_adapter(app.AppAdapter())


def test_singleton_semantics(pyi):
    from pyisolate._internal.rpc_protocol import SingletonMetaclass

    class Svc(pyi.ProxiedSingleton):
        pass

    with pyi.singleton_scope():
        a = Svc()
        assert Svc() is a and Svc.get_remote_id() == "Svc"
        with pytest.raises(AssertionError, match="singleton already exists"):
            SingletonMetaclass.inject_instance(Svc, object())
    assert Svc not in SingletonMetaclass._instances


# -- pyisolate's README example, unchanged ------------------------------------------------------

README_EXTENSION = '''\
# extensions/my_extension/__init__.py
from pyisolate import ExtensionBase

class MyExtension(ExtensionBase):
    def on_module_loaded(self, module):
        self.module = module

    async def process_data(self, data):
        # This runs in an isolated process with its own dependencies
        import numpy as np  # This could be numpy 2.x
        return np.array(data).mean()
'''

README_MAIN = '''\
# main.py
import pyisolate
import asyncio

async def main():
    config = pyisolate.ExtensionManagerConfig(
        venv_root_path="./venvs"
    )
    manager = pyisolate.ExtensionManager(pyisolate.ExtensionBase, config)

    extension = manager.load_extension(
        pyisolate.ExtensionConfig(
            name="data_processor",
            module_path="./extensions/my_extension",
            isolated=True,
            dependencies=["numpy>=2.0.0"]
        )
    )

    result = await extension.process_data([1, 2, 3, 4, 5])
    print(f"Mean: {result}")  # Mean: 3.0

    await extension.stop()

asyncio.run(main())
'''


def test_pyisolate_readme_example_runs_unchanged():
    d = _world_dir("nc-pyisolate-readme-")
    try:
        os.makedirs(os.path.join(d, "extensions", "my_extension"))
        for rel, text in (("extensions/my_extension/__init__.py", README_EXTENSION), ("main.py", README_MAIN)):
            p = os.path.join(d, rel)
            with open(p, "w") as f:
                f.write(text)
        for root, dirs, files in os.walk(d):
            for x in dirs:
                os.chmod(os.path.join(root, x), 0o755)
            for x in files:
                os.chmod(os.path.join(root, x), 0o644)
        env = dict(os.environ, PATH=f"{os.path.dirname(PY)}:{os.environ.get('PATH', '')}")
        r = subprocess.run([PY, "-m", "nodecell.compat", "exec", "--", PY, "main.py"], cwd=d, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip().splitlines()[-1] == "Mean: 3.0", r.stdout + r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)

