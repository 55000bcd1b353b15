"""Model objects across the wall in the stand-in app (issue 10, "Model objects as handles"): a patcher
node of an isolated pack patches the host's ModelPatcher for the host's own sampler, which calls the
patches synchronously from the executor's thread inside its running event loop. Shares the app
fixture of test_studio_app.py."""
from __future__ import annotations

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


def test_a_patcher_node_patches_the_hosts_model_for_the_hosts_sampler(app, studio_venv_root):
    """MODEL stays in the host; the isolated pack clones it through a handle and installs a model
    wrapper, a CFG function and an attention patch (callbacks into its worker), which the app's
    sampler calls synchronously from the executor's thread, inside its running event loop."""
    import nodes

    async def load():
        return await app.host.load_custom_node(str(app.root / "custom_nodes" / "NC-Patcher"),
                                               nodes.NODE_CLASS_MAPPINGS)

    if not (app.root / "custom_nodes" / "NC-Patcher").exists():
        world_readable_copy(FIXTURES / "packs" / "NC-Patcher", app.root / "custom_nodes" / "NC-Patcher")
    names = app.aloop.run(load())
    try:
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
        got = run.outputs["k"][0]["samples"]
        assert torch.allclose(got, want, atol=1e-6), "the isolated patches ran in the host's sampler"
        assert not torch.allclose(got, plain), "the patches changed the result"
        assert torch.allclose(run.outputs["plain"][0]["samples"], plain, atol=1e-6)
        assert run.outputs["facts"][0] == "cpu|['transformer_options']|TinyUNet|(8, 8)", \
            "attributes of the host's model read through the handle"
    finally:
        for n in names:
            nodes.NODE_CLASS_MAPPINGS.pop(n, None)
