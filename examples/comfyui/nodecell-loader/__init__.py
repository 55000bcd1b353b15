"""nodecell-loader: load isolated packs into ComfyUI at start, with no change to ComfyUI itself.

Put this folder into ``ComfyUI/custom_nodes/`` and the packs to isolate into
``ComfyUI/isolated_nodes/`` (or the folder named by ``$NODECELL_PACKS``), each
with a manifest (``nodecell migrate ComfyUI/isolated_nodes/<pack>``). ComfyUI
runs this pack's ``prestartup_script.py`` before it imports torch (it starts
nodecell's app cells there, while ComfyUI boots), then imports the pack while it
loads its own custom nodes, before its server starts; its ``comfy_entrypoint``
loads every isolated pack with ``nodecell.studio.StudioHost`` (the one the
prestartup script made) into ComfyUI's own ``NODE_CLASS_MAPPINGS``, so
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
    import nodes
    from nodecell import studio

    from .settings import APP_PRELOAD, packs_root

    root = packs_root()
    # App cells: compatible packs are forks of one sandbox whose zygote imported torch and
    # ComfyUI's `nodes`/`server` with ComfyUI's own command line, one such cell per kind of pack
    # venv (a pack pinning numpy<2 shares one with the packs of its kind). This loader's
    # prestartup_script.py started them while ComfyUI booted; `prestart` returns that host (or
    # makes it now, when the prestartup step did not run), and the packs load into those cells.
    # A pack that cannot share one (other sandbox settings, writes next to the app's code) gets a
    # cell of its own and the log says why. As measured by `cargo xtask realpacks --app-cell`.
    host = studio.prestart(root, app_preload=APP_PRELOAD) if os.path.isdir(root) else None
    for name in sorted(os.listdir(root)) if host is not None else []:
        pack = os.path.join(root, name)
        if not os.path.isfile(os.path.join(pack, "__init__.py")):
            continue
        try:
            loaded = await host.load_custom_node(pack, nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
            log.info("nodecell: %s isolated, %d node(s)", name, len(loaded))
        except Exception:  # one broken pack never stops ComfyUI's start
            log.exception("nodecell: %s could not be loaded isolated", name)
    return _Loaded()
