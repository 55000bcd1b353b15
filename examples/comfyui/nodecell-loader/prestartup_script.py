"""Runs where ComfyUI runs custom nodes' prestartup scripts: after its command line and folders,
before it imports torch and its own modules. Starts nodecell's app cells now, so their zygotes
import torch and ComfyUI while ComfyUI itself does; the loader's entry point (``__init__.py``)
later loads the packs into them. A failure is logged with its reason and the first pack then
starts the app cell itself."""
import importlib.util
import logging
import os

log = logging.getLogger("nodecell-loader")


def _settings():
    spec = importlib.util.spec_from_file_location(
        "nodecell_loader_settings", os.path.join(os.path.dirname(os.path.abspath(__file__)), "settings.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


try:
    from nodecell import studio

    _s = _settings()
    if os.path.isdir(_s.packs_root()):
        studio.prestart(_s.packs_root(), app_preload=_s.APP_PRELOAD)
except Exception:  # never stops ComfyUI's start: the packs then load as without it
    log.exception("nodecell: could not start the app cells early (the first pack starts them)")
