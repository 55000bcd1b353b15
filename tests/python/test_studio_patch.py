"""Model objects across the wall in the stand-in app (issue 10, "Model objects as handles"): a patcher
node of an isolated pack patches the host's ModelPatcher for the host's own sampler, which calls the
patches synchronously from the executor's thread inside its running event loop. Shares the app
fixture of test_studio_app.py."""
from __future__ import annotations

import gc
import time
import weakref

import pytest
import torch

from studio_support import FIXTURES, world_readable_copy
from studio_support import _run_prompt

pytest_plugins = ["studio_fixtures"]


PATCH_PROMPT = {
    "m": {"class_type": "TinyModelLoader", "inputs": {"seed": 3}},
    "p": {"class_type": "NCPatchModel", "inputs": {"model": ["m", 0], "scale": 0.5, "rescale": 0.7, "q_gain": 1.5}},
    "pos": {"class_type": "TinyConditioning", "inputs": {"seed": 1}},
    "neg": {"class_type": "TinyConditioning", "inputs": {"seed": 2}},
    "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32}},
    "k": {"class_type": "KSampler", "inputs": {"model": ["p", 0], "seed": 9, "steps": 4, "cfg": 3.0,
                                              "positive": ["pos", 0], "negative": ["neg", 0],
                                              "latent_image": ["lat", 0]}},
    "plain": {"class_type": "KSampler", "inputs": {"model": ["m", 0], "seed": 9, "steps": 4, "cfg": 3.0,
                                                  "positive": ["pos", 0], "negative": ["neg", 0],
                                                  "latent_image": ["lat", 0]}},
    "facts": {"class_type": "NCModelFacts", "inputs": {"model": ["m", 0]}},
}


@pytest.fixture(scope="module")
def patcher(app):
    """NC-Patcher loaded isolated into the app's own mappings (removed afterwards)."""
    import nodes

    dst = app.root / "custom_nodes" / "NC-Patcher"
    if not dst.exists():
        world_readable_copy(FIXTURES / "packs" / "NC-Patcher", dst)

    async def load():
        return await app.host.load_custom_node(str(dst), nodes.NODE_CLASS_MAPPINGS)

    names = app.aloop.run(load())
    yield names
    for n in names:
        nodes.NODE_CLASS_MAPPINGS.pop(n, None)


def _node(app, name, **inputs):
    """Run one isolated node's function directly (what the executor does), on the app's loop."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[name]
    return app.aloop.run(getattr(cls(), cls.FUNCTION)(**inputs))


def _eventually(pred, what, timeout=10.0):
    """Poll ``pred`` (collecting garbage here) until it holds; releases cross asynchronously."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        gc.collect()
        time.sleep(0.02)


def test_a_patcher_node_patches_the_hosts_model_for_the_hosts_sampler(app, patcher):
    """MODEL stays in the host; the isolated pack clones it through a handle and installs a model
    wrapper, a CFG function and an attention patch (callbacks into its worker), which the app's
    sampler calls synchronously from the executor's thread, inside its running event loop. The
    attention patch gets the host's tensors as tensors; the facts node reads attributes of the
    model, of its ``torch.nn.Module`` (a callable object) and of that module's layers."""
    import nodes

    run = _run_prompt(app.aloop.run, app.server, PATCH_PROMPT, ["k", "plain", "facts"])
    assert run.success, run.errors
    # The same patch, applied in the host (what the pack does, run directly).
    import importlib.util

    spec = importlib.util.spec_from_file_location("nc_patcher_direct", FIXTURES / "packs" / "NC-Patcher" /
                                                  "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = nodes.TinyModelLoader().load(3)[0]
    pm = mod.PatchModel().patch(m, 0.5, 0.7, 1.5)[0]
    pos, neg = nodes.TinyConditioning().encode(1)[0], nodes.TinyConditioning().encode(2)[0]
    lat = nodes.EmptyLatentImage().generate(32, 32)[0]
    want = nodes.KSampler().sample(pm, 9, 4, 3.0, pos, neg, lat)[0]["samples"]
    plain = nodes.KSampler().sample(m, 9, 4, 3.0, pos, neg, lat)[0]["samples"]
    # Each patch alone changes the result: none of them is silently skipped.
    for only in ("wrapper", "cfg", "attn"):
        one = m.clone()
        if only == "wrapper":
            one.model_options["model_function_wrapper"] = pm.model_options["model_function_wrapper"]
        elif only == "cfg":
            one.model_options["sampler_cfg_function"] = pm.model_options["sampler_cfg_function"]
        else:
            one.model_options["transformer_options"] = pm.model_options["transformer_options"]
        alone = nodes.KSampler().sample(one, 9, 4, 3.0, pos, neg, lat)[0]["samples"]
        assert not torch.allclose(alone, plain), f"the {only} patch changes the result"
    got = run.outputs["k"][0]["samples"]
    assert torch.allclose(got, want, atol=1e-6), "the isolated patches ran in the host's sampler"
    assert not torch.allclose(got, plain), "the patches changed the result"
    assert torch.allclose(run.outputs["plain"][0]["samples"], plain, atol=1e-6)
    assert run.outputs["facts"][0] == "cpu|['transformer_options']|TinyUNet|(8, 8)", \
        "attributes of the host's model read through the handle"


def test_the_isolated_patch_objects_are_handles_and_tensors(app, patcher):
    """What the host's model holds after the isolated pack patched it: the pack's functions, as
    callables into its worker (the host calls them like local functions and gets tensors back)."""
    import nodes

    m = nodes.TinyModelLoader().load(3)[0]
    pm = _node(app, "NCPatchModel", model=m, scale=0.5, rescale=0.7, q_gain=2.0)[0]
    assert type(pm) is type(m) and pm is not m and pm.model is m.model, "a clone made in the host"
    assert m.model_options == {"transformer_options": {}}, "the original is untouched"
    (attn,) = pm.model_options["transformer_options"]["patches"]["attn1_patch"]
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    q2, k2, v2 = attn(q, k, v, {"block": ("input", 0)})
    assert isinstance(q2, torch.Tensor) and torch.equal(q2, q * 2.0) and torch.equal(k2, k)
    cfg = pm.model_options["sampler_cfg_function"]
    c, u = torch.ones(2, 2), torch.zeros(2, 2)
    assert torch.allclose(cfg({"cond": c, "uncond": u, "cond_scale": 3.0}), torch.full((2, 2), 2.1))


def test_model_handles_live_as_long_as_either_side_holds_them(app, patcher):
    """Lifetimes tied to both sides' references: a MODEL the pack keeps stays alive in the host after
    the host dropped it, and goes when the pack drops it; the patch functions the pack installed in
    the host's model stay alive in the worker while the host's model holds them (the pack keeps no
    reference), and go with it."""
    import nodes

    m = nodes.TinyModelLoader().load(4)[0]
    ref = weakref.ref(m)
    assert _node(app, "NCKeepModel", model=m)[0] >= 1
    del m
    gc.collect()
    time.sleep(0.2)
    gc.collect()
    assert ref() is not None, "the pack's reference keeps the host's model alive"
    assert _node(app, "NCDropModels")[0] >= 1
    _eventually(lambda: ref() is None, "the host's model is freed once the pack dropped it")

    # Nothing of the earlier tests' patches is left (after test_studio_app.py too): a worker
    # dispatcher that kept its last call's arguments once held one through a sampler closure.
    _eventually(lambda: _node(app, "NCLivePatches")[0] == 0, "earlier patches freed with their host models")
    before = _node(app, "NCLivePatches")[0]
    base = nodes.TinyModelLoader().load(5)[0]
    pm = _node(app, "NCPatchModel", model=base, scale=0.5, rescale=0.7, q_gain=1.5)[0]
    assert _node(app, "NCLivePatches")[0] == before + 3, "the host's model holds the pack's three patches"
    pref = weakref.ref(pm)
    del pm
    gc.collect()
    assert pref() is None
    _eventually(lambda: _node(app, "NCLivePatches")[0] == before,
                "the patches are freed in the worker once the host's model is gone")
