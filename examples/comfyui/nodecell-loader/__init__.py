"""nodecell-loader: load isolated packs into ComfyUI at start, with no change to ComfyUI itself.

Put this folder into ``ComfyUI/custom_nodes/`` and the packs to isolate into
``ComfyUI/isolated_nodes/`` (or the folder named by ``$NODECELL_PACKS``), each
with a manifest (``nodecell migrate ComfyUI/isolated_nodes/<pack>``). ComfyUI
imports this pack while it loads its own custom nodes, before its server
starts; its ``comfy_entrypoint`` loads every isolated pack with
``nodecell.studio.StudioHost`` into ComfyUI's own ``NODE_CLASS_MAPPINGS``, so
their nodes, HTTP routes and web folders join ComfyUI's as if the packs were
installed directly. (Packs in ``isolated_nodes/`` are not in ``custom_nodes/``,
so ComfyUI never imports them itself.)
"""
import logging
import os

from comfy_api.latest import ComfyExtension

log = logging.getLogger("nodecell-loader")


class _Loaded(ComfyExtension):
    async def get_node_list(self):
        return []  # the isolated packs' proxies are registered by StudioHost itself


async def comfy_entrypoint():
    import folder_paths
    import nodes
    from nodecell import studio

    root = os.environ.get("NODECELL_PACKS") or os.path.join(folder_paths.base_path, "isolated_nodes")
    # App cells: compatible packs are forks of one sandbox whose zygote imported torch and
    # ComfyUI's `nodes`/`server` with ComfyUI's own command line (the first pack waits for that
    # start, later ones load in about a second); a pack that cannot share it (other pins, writes
    # next to the app's code) gets a cell of its own and the log says why. As measured by
    # `cargo xtask realpacks --app-cell`, which loads packs the way this loader does.
    host = studio.StudioHost(app_cell=True, app_preload=["nodes", "server"])
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        pack = os.path.join(root, name)
        if not os.path.isfile(os.path.join(pack, "__init__.py")):
            continue
        try:
            loaded = await host.load_custom_node(pack, nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
            log.info("nodecell: %s isolated, %d node(s)", name, len(loaded))
        except Exception:  # one broken pack never stops ComfyUI's start
            log.exception("nodecell: %s could not be loaded isolated", name)
    return _Loaded()
