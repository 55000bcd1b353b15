"""Cells on a Ray cluster: a real multi-node cluster on this machine (``ray.cluster_utils``).

One cluster for the module: a head (the driver's node) and worker raylets with
custom resources. Packs are placed on different raylets; calls, services,
callbacks, handles and tensors cross between them; a raylet is killed mid-call
and the cell comes back on another node.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

import ray  # the dev environment has it (scripts/setup.sh): a missing Ray fails, never skips
from ray.cluster_utils import Cluster

# The fixtures studio_files and studio_venv_root (shared with test_studio.py).
pytest_plugins = ["studio_fixtures"]

STORE = 200 << 20  # object store per raylet: small, the machine is shared


@pytest.fixture(scope="module")
def cluster(support_dir):
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head": 1}, "object_store_memory": STORE})
    nodes = {  # each cell placed by resource takes one unit: room for several per raylet
        "w1": c.add_node(num_cpus=1, resources={"w1": 10}, object_store_memory=STORE),
        "w2": c.add_node(num_cpus=1, resources={"w2": 10}, object_store_memory=STORE),
    }
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    c.wait_for_nodes()
    c.nodes_by_name = nodes
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def rmanager(aloop, cluster, nc, testext, venv_root):
    async def make():
        return nc.ExtensionManager(testext.TestExt, nc.ExtensionManagerConfig(
            venv_root_path=str(venv_root), backend="ray", ray={"placement_timeout": 300}))

    m = aloop.run(make())
    yield m
    aloop.run(m.stop_all_extensions())


def _pack(support_dir, name):
    return str(support_dir / "packs" / name)


@pytest.fixture(scope="module")
def on_w1(aloop, rmanager, nc, testext, support_dir):
    """The basic pack (shared torch, the Registry service) on raylet w1."""
    async def load():
        ext = await rmanager.load_extension(nc.ExtensionConfig(
            name="ray_a", module_path=_pack(support_dir, "basic"), share_torch=True,
            apis=[testext.Registry], timeout=120, placement={"resources": {"w1": 1}}))
        testext.HOST_EXTENSIONS["ray_a"] = ext
        return ext

    return aloop.run(load())


@pytest.fixture(scope="module")
def on_w2(aloop, rmanager, nc, testext, support_dir, cluster):
    """The numpy 2 pack (its own venv, no torch) pinned to raylet w2 by node id."""
    async def load():
        return await rmanager.load_extension(nc.ExtensionConfig.from_manifest(
            _pack(support_dir, "np2"), name="ray_b", apis=[testext.Registry], timeout=120,
            placement={"node_id": cluster.nodes_by_name["w2"].node_id}))

    return aloop.run(load())


def _mapping_of(ptr: int) -> str:
    """The /proc/self/maps line of the mapping holding address ``ptr``."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return line.strip()
    return ""


# -- configuration (no cluster needed) ---------------------------------------------------------

def test_placement_is_validated_naming_the_field(nc):
    with pytest.raises(nc.ConfigError, match=r"placement\.resources\.w1"):
        nc.ExtensionConfig(name="p", module_path="/tmp", placement={"resources": {"w1": -1}})
    with pytest.raises(nc.ConfigError, match=r"placement\.node_id"):
        nc.ExtensionConfig(name="p", module_path="/tmp", placement={"node_id": "not-hex"})
    with pytest.raises(nc.ConfigError, match=r"placement\.gpus"):
        nc.ExtensionConfig(name="p", module_path="/tmp", placement={"gpus": 1})
    with pytest.raises(nc.ConfigError, match=r"placement\.resources\.GPU"):
        nc.ExtensionConfig(name="p", module_path="/tmp", placement={"resources": {"GPU": 1}})
    with pytest.raises(nc.ConfigError, match="backend"):
        nc.ExtensionManagerConfig(backend="slurm")
    with pytest.raises(nc.ConfigError, match=r"ray\.placement_timeout"):
        nc.ExtensionManagerConfig(backend="ray", ray={"placement_timeout": 0})
    cfg = nc.ExtensionConfig(name="p", module_path="/tmp", placement={"num_gpus": 1, "resources": {"big": 2}})
    assert cfg["placement"] == {"num_gpus": 1, "resources": {"big": 2}}


def test_ray_backend_without_a_cluster_is_a_clear_error(support_dir):
    code = ("import nodecell, nodecell.ray\n"
            "try:\n"
            "    nodecell.ExtensionManager(nodecell.ExtensionBase, nodecell.ExtensionManagerConfig(backend='ray'))\n"
            "except nodecell.ray.RayUnavailable as e:\n"
            "    print('RAYUNAVAILABLE', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RAYUNAVAILABLE" in out.stdout and "ray.init" in out.stdout, out.stdout + out.stderr


def test_core_wheel_does_not_import_ray():
    code = "import sys, nodecell, nodecell.ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_wire_frames_carry_tensors_out_of_band_and_check_them(nc):
    """The driver's decoder is nodecell's: closed values only, and every tensor checked
    against the buffer it names before anything is built over it."""
    import numpy as np
    import torch

    from nodecell import _nodecell
    from nodecell._rpc import ERROR, REPLY
    from nodecell.ray._link import Link

    class End(Link):
        def send_frame(self, kind, call_id, payload):
            raise AssertionError("not used")

    sender, receiver = End("worker", "host"), End("host", "worker")
    a = np.arange(100_000, dtype=np.float32).reshape(100, 1000)
    t = torch.arange(60_000, dtype=torch.bfloat16).reshape(300, 200).t()
    blob, bufs = sender.frame(REPLY, 7, {"a": a, "t": t, "tiny": np.ones(3), "x": [1, "s", b"b"]})
    assert len(bufs) == 2 and len(blob) < 1024  # the arrays travel beside the bytes
    kind, cid, value = receiver.receive(blob, bufs)
    assert (kind, cid) == (REPLY, 7) and value["x"] == [1, "s", b"b"]
    assert np.array_equal(value["a"], a) and not value["a"].flags.writeable
    assert value["a"].__array_interface__["data"][0] == bufs[0].__array_interface__["data"][0]  # no copy
    assert torch.equal(value["t"], t) and value["t"].dtype == torch.bfloat16

    def refused(blob, bufs):
        """A reply whose value cannot be built fails that call: an ERROR carrying the reason."""
        kind, cid, err = receiver.receive(blob, bufs)
        assert kind == ERROR and isinstance(err, ValueError), (kind, err)
        return str(err)

    assert "outside" in refused(blob, [bufs[0][:100], bufs[1]])  # a buffer shorter than its tensor
    assert "buffer 1" in refused(blob, bufs[:1])  # a tensor naming a buffer that did not come
    assert "not registered" in refused(*sender.frame(REPLY, 1, _nodecell.Record("evil.Type", {"x": 1})))
    with pytest.raises(_nodecell.ProtocolViolation, match="malformed frame"):
        receiver.receive(blob[:-3], bufs)
    with pytest.raises(_nodecell.ProtocolViolation):
        receiver.receive(b"\x01" * 40, [])


# -- placement -----------------------------------------------------------------------------------

def test_two_packs_on_different_raylets_behind_the_same_walls(aloop, on_w1, on_w2, cluster, manager, basic_ext):
    w1, w2 = cluster.nodes_by_name["w1"], cluster.nodes_by_name["w2"]
    assert on_w1.placement["node_id"] == w1.node_id and on_w1.remote
    assert on_w2.placement["node_id"] == w2.node_id and on_w2.remote
    assert on_w1.placement["node_ip"] and set(on_w1.placement) == {"node_id", "node_ip"}
    # The same walls as a local cell of the same config, all of them reported.
    local = {w["name"]: w["state"] for w in basic_ext.walls}
    assert {w["name"]: w["state"] for w in on_w1.walls} == local
    limited = {w["name"]: w["state"] for w in on_w2.walls}  # its manifest sets max_memory
    assert set(limited) == set(local) and limited["memory-limit"] == "active"
    for ext in (on_w1, on_w2):
        assert all(w["state"] in ("active", "off") for w in ext.walls), ext.walls
    assert on_w1.worker_pids and on_w1.worker_versions.get("torch")
    assert on_w2.worker_versions.get("numpy", "").startswith("2.")
    who = aloop.run(on_w1.whoami())
    if os.geteuid() == 0:
        assert who["uid"] != 0 and who["euid"] != 0


def test_same_node_cell_keeps_the_zero_copy_arena_path(aloop, rmanager, nc, support_dir, cluster):
    async def go():
        ext = await rmanager.load_extension(nc.ExtensionConfig(
            name="ray_here", module_path=_pack(support_dir, "basic"), share_torch=True,
            placement={"resources": {"head": 1}}))
        try:

            t = await ext.make_tensor(1 << 18, 3.0)
            return ext.remote, ext.placement, nc.is_shared(t), float(t.sum())
        finally:
            await ext.stop()

    remote, where, shared, total = aloop.run(go())
    assert not remote
    assert where["node_id"] == ray.get_runtime_context().get_node_id()
    assert shared and total == 3.0 * (1 << 18)


def test_placement_nobody_can_satisfy_fails_at_once(aloop, rmanager, nc, support_dir):
    async def go(placement):
        ext = rmanager.load_extension(nc.ExtensionConfig(
            name="ray_nowhere", module_path=_pack(support_dir, "basic"), placement=placement))
        try:
            await ext.start()
        finally:
            await ext.stop()

    from nodecell.ray import PlacementError

    t = time.monotonic()
    with pytest.raises(PlacementError, match="gpu_box"):
        aloop.run(go({"resources": {"gpu_box": 1}}))
    with pytest.raises(PlacementError, match="placement.node_id"):
        aloop.run(go({"node_id": "ab" * 28}))
    assert time.monotonic() - t < 30


# -- calls across nodes ---------------------------------------------------------------------

def test_values_records_and_errors_cross_nodes(aloop, on_w1, nc, testext):
    value = {"none": None, "big": 10**40, "f": 2.5, "s": "héllo", "b": b"\x00\xff", "t": (1, (2, 3)),
             "set": {1, 2}, (1, 2): "tuple key", "point": testext.Point(1.0, 2.0, "p"),
             "color": testext.Color.GREEN}
    assert aloop.run(on_w1.echo(value)) == value
    assert aloop.run(on_w1.echo(1, 2, a=3)) == ((1, 2), {"a": 3})
    assert aloop.run(on_w1.aecho([1, "x"])) == [1, "x"]
    with pytest.raises(nc.RemoteError) as ei:
        aloop.run(on_w1.boom("bad input"))
    assert ei.value.remote_type == "ValueError" and ei.value.remote_message == "bad input"
    assert "boom" in ei.value.remote_traceback
    assert isinstance(aloop.run(on_w1.unsendable()), nc.RemoteObject)  # as locally: a handle


def test_services_callbacks_and_handles_across_nodes(aloop, on_w1, on_w2, testext):
    reg = testext.Registry()
    n, got, is_instance, local = aloop.run(on_w1.use_registry("ray_key", [1, 2]))
    assert (got, is_instance, local) == ([1, 2], True, True)  # the driver's one instance
    assert reg.data["ray_key"] == [1, 2]
    assert aloop.run(on_w2.use_registry_async("ray_key")) == [1, 2]  # the other node sees it too
    # worker (w1) -> driver service -> worker (w1) again: re-entrant across machines
    assert aloop.run(on_w1.reenter("ray_a", 21)) == 42
    seen = []
    assert aloop.run(on_w1.call_back(lambda *a: seen.append(a) or len(seen), "x", 2)) == 1
    assert seen == [("x", 2)]
    # A handle the worker owns, used by the driver; one the driver owns, used by the worker.
    counter = aloop.run(on_w1.make_counter(5))
    assert isinstance(counter, testext.nodecell.RemoteObject)
    assert aloop.run(counter.incr(2)) == 7 and aloop.run(counter.getattr("value")) == 7
    mine = testext.Counter(10)
    assert aloop.run(on_w2.use_handle(mine, 5)) == 15 and mine.value == 15
    adder = aloop.run(on_w2.make_adder(3))
    assert aloop.run(adder(4)) == 7


def test_logs_from_the_node_reach_the_drivers_loggers(aloop, on_w1, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="nodecell"):
        assert aloop.run(on_w1.log_something("from-w1"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "from-w1" not in caplog.text:
            time.sleep(0.2)
    assert "log: from-w1" in caplog.text


# -- tensors ------------------------------------------------------------------------------------

def test_tensors_cross_nodes_through_the_object_store(aloop, on_w1, on_w2):
    import numpy as np
    import torch

    a = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)
    back = aloop.run(on_w2.echo(a))
    assert isinstance(back, np.ndarray) and back.dtype == np.float32 and np.array_equal(back, a)
    assert not back.flags.writeable  # as from a local cell
    # Zero-copy on arrival: the array lies in the object store's shared mapping, not in a copy.
    assert "plasma" in _mapping_of(back.__array_interface__["data"][0])

    t = torch.arange(1 << 20, dtype=torch.bfloat16).reshape(512, 2048).t()  # non-contiguous, no numpy dtype
    tb = aloop.run(on_w1.echo(t))
    assert tb.dtype == torch.bfloat16 and tb.shape == t.shape and torch.equal(tb, t)

    made = aloop.run(on_w1.make_tensor(1 << 21, 2.5))
    assert isinstance(made, torch.Tensor) and float(made.sum()) == 2.5 * (1 << 21)
    assert "plasma" in _mapping_of(made.data_ptr())
    made.add_(1)  # writable, and the write stays here
    assert float(made[0]) == 3.5
    info = aloop.run(on_w1.tensor_info(made))
    assert info["shape"] == [1 << 21] and info["sum"] == 3.5 * (1 << 21)
    small = aloop.run(on_w2.echo(np.ones(3, dtype=np.int16)))
    assert small.tolist() == [1, 1, 1] and small.dtype == np.int16


def test_workflow_across_two_nodes_with_tensors_crossing(aloop, on_w1, on_w2):
    import numpy as np

    async def flow():
        img = await on_w1.make_tensor(1 << 20, 1.5)   # w1 (torch) makes an image
        doubled = await on_w2.double(img)              # w2 (numpy 2) computes on it
        info = await on_w1.tensor_info(doubled)        # and w1 reads the result
        return img, doubled, info

    img, doubled, info = aloop.run(flow())
    assert isinstance(doubled, np.ndarray) and doubled.shape == (1 << 20,)
    assert float(doubled.sum()) == 3.0 * (1 << 20) and info["sum"] == 3.0 * (1 << 20)
    assert float(img.sum()) == 1.5 * (1 << 20)  # the input is unchanged


def test_studio_workflow_with_packs_on_two_nodes(aloop, nc, cluster, studio_files, studio_venv_root):
    """nodecell.studio on Ray: the classic pack on w1, the v3 pack on w2 (a StudioHost option),
    images, masks, LATENT dicts and a model handle crossing between them; the outputs equal
    the same packs imported into the host."""
    from studio_support import same_value

    from nodecell import studio

    graph = {
        "1": {"class_type": "MakeImage", "inputs": {"width": 256, "height": 192, "seed": 7}},
        "2": {"class_type": "Invert", "inputs": {"image": ["1", 0], "threshold": 0.4}},
        "3": {"class_type": "Brighten", "inputs": {"image": ["2", 0], "amount": 0.25}},
        "4": {"class_type": "LoadModel", "inputs": {"gain": 0.5}},
        "5": {"class_type": "ApplyModel", "inputs": {"model": ["4", 0], "image": ["3", 0]}},
        "6": {"class_type": "EmptyLatent", "inputs": {"batch": 2, "seed": 3}},
        "7": {"class_type": "LatentScale", "inputs": {"latent": ["6", 0], "factor": 2.0}},
    }

    async def go():
        host = studio.StudioHost(str(studio_venv_root), backend="ray", placement={
            "classic_pack": {"resources": {"w1": 1}}, "v3_pack": {"resources": {"w2": 1}}})
        plain = studio.StudioHost()
        iso, loc = {}, {}
        try:
            for p in ("classic_pack", "v3_pack"):
                await host.load_custom_node(str(studio_files / "packs" / p), iso)
                await plain.load_custom_node(str(studio_files / "packs" / p), loc, isolated=False)
            where = {n: ext.placement["node_id"] for n, ext in host.packs.items()}
            return where, await studio.run_workflow(graph, iso), await studio.run_workflow(graph, loc)
        finally:
            await host.stop()

    where, iso, loc = aloop.run(go())
    nodes = cluster.nodes_by_name
    assert where == {"classic_pack": nodes["w1"].node_id, "v3_pack": nodes["w2"].node_id}
    assert iso.ok, iso.errors
    for nid in graph:
        a, b = iso.nodes[nid].outputs, loc.nodes[nid].outputs
        if nid == "4":  # the model stays in its pack on w1; the driver holds a handle
            assert isinstance(a[0], nc.RemoteObject)
            continue
        assert same_value(a, b), nid
    assert "plasma" in _mapping_of(iso.output("3", 0).data_ptr())  # the image crossed via the object store


# -- faults ----------------------------------------------------------------------------------

def test_worker_crash_timeout_and_memory_limit_as_locally(aloop, rmanager, nc, support_dir):
    async def go():
        ext = await rmanager.load_extension(nc.ExtensionConfig(
            name="ray_limits", module_path=_pack(support_dir, "basic"), timeout=3,
            max_memory="300MB", placement={"resources": {"w2": 1}}))
        out = {}
        try:
            pids = ext.worker_pids
            try:
                await ext.exit_now(3)
            except nc.WorkerCrashed as e:
                out["exit"] = (e.reason, e.exit_code)
            out["after_exit"] = await ext.double(4)
            for _ in range(100):  # the node's new worker shows up in worker_pids
                if ext.worker_pids and ext.worker_pids != pids:
                    break
                await asyncio.sleep(0.1)
            out["new_pids"] = bool(ext.worker_pids) and ext.worker_pids != pids
            try:
                await ext.sleep(30)
            except nc.CallTimeout as e:
                out["timeout"] = e.timeout
            out["after_timeout"] = await ext.double(5)
            try:
                await ext.hog(2000)
            except nc.WorkerCrashed as e:
                out["memory"] = e.reason
            out["after_memory"] = await ext.double(6)
            out["remote"] = ext.remote
            out["restarts"] = ext.restarts
        finally:
            await ext.stop()
        return out

    out = aloop.run(go())
    assert out["remote"]
    assert out["exit"] == ("exited", 3) and out["after_exit"] == 8 and out["new_pids"]
    assert out["timeout"] == 3 and out["after_timeout"] == 10
    assert out["memory"] == "memory" and out["after_memory"] == 12
    assert out["restarts"] == 3


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_killed_raylet_fails_the_call_in_flight_and_the_next_call_replaces_the_cell(
        aloop, rmanager, nc, support_dir, cluster):
    w3 = cluster.add_node(num_cpus=1, resources={"pool": 1}, object_store_memory=STORE)
    cluster.wait_for_nodes()

    async def load():
        return await rmanager.load_extension(nc.ExtensionConfig(
            name="ray_kill", module_path=_pack(support_dir, "basic"), placement={"resources": {"pool": 1}}))

    ext = aloop.run(load())
    assert ext.placement["node_id"] == w3.node_id
    launcher = ext._info["launcher_pid"]
    assert _alive(launcher)

    async def kill_mid_call():
        call = asyncio.ensure_future(ext.sleep(60))
        await asyncio.sleep(2)
        assert not call.done()
        await asyncio.get_running_loop().run_in_executor(None, lambda: cluster.remove_node(w3, allow_graceful=False))
        try:
            await asyncio.wait_for(call, 120)
        except nc.WorkerCrashed as e:
            return e
        return None

    err = aloop.run(kill_mid_call())
    assert err is not None and err.reason == "lost", err
    assert "lost" in str(err)
    # Nothing of the lost cell outlives its node (the sandbox follows its host side).
    deadline = time.monotonic() + 30
    while _alive(launcher) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(launcher)

    w4 = cluster.add_node(num_cpus=1, resources={"pool": 1}, object_store_memory=STORE)
    cluster.wait_for_nodes()
    assert aloop.run(ext.double(21)) == 42  # re-placed on the node that now offers the resource
    assert ext.placement["node_id"] == w4.node_id
    assert ext.restarts == 1 and isinstance(ext.last_crash, nc.WorkerCrashed)
    aloop.run(ext.stop())


def test_killed_actor_fails_the_call_in_flight_and_the_next_call_starts_a_new_one(aloop, rmanager, nc, support_dir):
    async def go():
        ext = await rmanager.load_extension(nc.ExtensionConfig(
            name="ray_actor_kill", module_path=_pack(support_dir, "basic"), placement={"resources": {"w2": 1}}))
        try:
            first = ext._actor
            call = asyncio.ensure_future(ext.sleep(60))
            await asyncio.sleep(1)
            ray.kill(first, no_restart=True)
            try:
                await asyncio.wait_for(call, 60)
                err = None
            except nc.WorkerCrashed as e:
                err = e
            again = await ext.double(2)
            return err, again, ext._actor is not first and ext._actor is not None, ext.restarts
        finally:
            await ext.stop()

    err, again, replaced, restarts = aloop.run(go())
    assert err is not None and err.reason == "lost"
    assert again == 4 and replaced and restarts == 1


def test_stop_ends_the_remote_cell(aloop, rmanager, nc, support_dir):
    async def go():
        ext = await rmanager.load_extension(nc.ExtensionConfig(
            name="ray_stop", module_path=_pack(support_dir, "basic"), placement={"resources": {"w2": 1}}))
        launcher = ext._info["launcher_pid"]
        actor = ext._actor
        await ext.stop()
        try:
            await actor.where.remote()
            gone = False
        except ray.exceptions.RayActorError:
            gone = True
        with pytest.raises(nc.ExtensionStopped):
            await ext.double(1)
        return launcher, gone

    launcher, gone = aloop.run(go())
    assert gone
    deadline = time.monotonic() + 10
    while _alive(launcher) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(launcher)
