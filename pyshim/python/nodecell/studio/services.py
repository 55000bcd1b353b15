"""The host app's services, served from the host to every pack's worker.

:class:`AppServices` is a :class:`nodecell.ProxiedSingleton`: in the host it
answers from the app's one live state (``folder_paths``, the interrupt flag of
``model_management``, the progress hook, the ``PromptServer``); in a worker the
same class is a proxy whose calls run here. The worker side that plugs these
calls into the app's own module functions is :mod:`nodecell.studio.apps.worker`.

Nothing here trusts a worker: calls name functions from fixed allow-lists,
arguments are plain values, and nothing a worker sends is imported or
evaluated.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from typing import Any, Dict, List, Optional, Tuple

from ..shared import ProxiedSingleton

__all__ = ["AppServices", "PATHS_FORWARDED"]

log = logging.getLogger("nodecell.studio")

#: ``folder_paths`` functions a worker's calls are answered by the host for
#: (they read or change the app's state); the rest run in the worker.
PATHS_FORWARDED = ("get_folder_paths", "get_filename_list", "get_full_path", "get_full_path_or_raise",
                   "add_model_folder_path", "get_annotated_filepath", "exists_annotated_filepath",
                   "get_input_subfolders", "get_filename_list_", "cached_filename_list_")


def _module(name: str) -> Any:
    mod = sys.modules.get(name)
    if mod is None:
        mod = importlib.import_module(name)
    return mod


class AppServices(ProxiedSingleton):
    """The host app's services for isolated packs (see the module docs).

    The host sets :attr:`profile` (a :class:`nodecell.studio.apps.AppProfile`)
    before any worker calls in.
    """

    #: The app these services answer for (host side).
    profile: Any = None

    def _app(self, attr: str) -> Any:
        p = type(self).profile
        if p is None:
            raise RuntimeError("no host app: nodecell.studio.services.AppServices.profile is not set")
        return _module(getattr(p, attr))

    # -- model objects ------------------------------------------------------------------------

    def types_of(self, objs: List[Any]) -> List[Tuple[str, str]]:
        """The module and qualified name of each host object's class (a worker names its handles
        after them: ``type(model.model).__name__`` reads as in the host)."""
        if not isinstance(objs, list):
            raise TypeError("types_of takes a list of the host's objects")
        return [(str(type(o).__module__), str(type(o).__qualname__)) for o in objs]

    # -- folder_paths -------------------------------------------------------------------------

    def paths_call(self, fn: str, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        """Call ``folder_paths.<fn>(*args, **kwargs)`` in the host (``fn`` from :data:`PATHS_FORWARDED`)."""
        if fn not in PATHS_FORWARDED:
            raise AttributeError(f"folder_paths.{fn} is not served to workers")
        out = getattr(self._app("paths_module"), fn)(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(sorted(x) if isinstance(x, set) else x for x in out)
        return out

    def paths_table(self) -> Dict[str, Tuple[List[str], List[str]]]:
        """``folder_paths.folder_names_and_paths`` as data: name -> (paths, extensions)."""
        fp = self._app("paths_module")
        return {k: (list(v[0]), sorted(v[1])) for k, v in fp.folder_names_and_paths.items()}

    def paths_entry(self, name: str) -> Optional[Tuple[List[str], List[str]]]:
        """One entry of ``folder_names_and_paths`` (None when absent)."""
        v = self._app("paths_module").folder_names_and_paths.get(name)
        return None if v is None else (list(v[0]), sorted(v[1]))

    def paths_set(self, name: str, paths: List[str], extensions: List[str]) -> None:
        """``folder_names_and_paths[name] = (paths, set(extensions))`` in the host."""
        if not isinstance(name, str) or not all(isinstance(p, str) for p in paths):
            raise TypeError("folder_names_and_paths: expected a name and a list of path strings")
        fp = self._app("paths_module")
        fp.folder_names_and_paths[name] = (list(paths), set(extensions))
        cache = getattr(fp, "filename_list_cache", None)
        if isinstance(cache, dict):
            cache.pop(name, None)

    def paths_delete(self, name: str) -> None:
        """``del folder_names_and_paths[name]`` in the host."""
        self._app("paths_module").folder_names_and_paths.pop(name, None)

    # -- model_management ---------------------------------------------------------------------

    def interrupted(self, clear: bool = False) -> bool:
        """Whether the user interrupted processing; ``clear``: reset the flag when set (as
        ``throw_exception_if_processing_interrupted`` does before it raises)."""
        mm = self._app("model_management_module")
        with mm.interrupt_processing_mutex:
            was = bool(mm.interrupt_processing)
            if was and clear:
                mm.interrupt_processing = False
            return was

    def interrupt(self, value: bool = True) -> None:
        """``interrupt_current_processing(value)`` in the host."""
        self._app("model_management_module").interrupt_current_processing(bool(value))

    # -- progress -----------------------------------------------------------------------------

    def progress(self, value: float, total: float, preview: Any = None, prompt_id: Optional[str] = None,
                 node_id: Optional[str] = None) -> None:
        """A progress bar update from a worker, passed to the app's progress hook (its UI).

        ``preview`` is ``None`` or ``(format, HxWx3 uint8 array, max_size)``.
        """
        hook = getattr(self._app("utils_module"), "PROGRESS_BAR_HOOK", None)
        if hook is None:
            return
        if preview is not None:
            preview = _preview_image(preview)
        hook(value, total, preview, prompt_id=prompt_id, node_id=node_id)

    # -- the server -----------------------------------------------------------------------------

    def _server(self) -> Any:
        srv = getattr(self._app("server_module"), "PromptServer", None)
        inst = getattr(srv, "instance", None)
        if inst is None:
            raise RuntimeError("the host app has no PromptServer.instance")
        return inst

    def server_state(self) -> Dict[str, Any]:
        """What workers may read of ``PromptServer.instance``."""
        s = self._server()
        return {"client_id": getattr(s, "client_id", None), "last_node_id": getattr(s, "last_node_id", None),
                "last_prompt_id": getattr(s, "last_prompt_id", None),
                "supports": list(getattr(s, "supports", []) or []), "number": getattr(s, "number", 0)}

    def app_modules(self) -> List[str]:
        """The modules of the app's mirrored packages this host has imported, in the order
        their imports completed (``AppProfile.host_modules``): a worker imports them before its
        pack. Asked when the pack is imported, so a cell started before the app imported them
        (at its prestart) gets the list of the booted app."""
        p = type(self).profile
        return list(p.host_modules()) if p is not None else []

    def running_prompts(self) -> Dict[Any, List[Any]]:
        """What workers may read of ``PromptServer.instance.prompt_queue.currently_running``: each
        running prompt's entry (number, prompt id, prompt, extra data, outputs to execute) as data.
        The entry's sensitive part (where the app keeps the user's API keys) stays here: ``{}``."""
        queue = getattr(self._server(), "prompt_queue", None)
        with getattr(queue, "mutex", None) or contextlib.nullcontext():
            running = dict(getattr(queue, "currently_running", None) or {})
        out = {}
        for number, entry in running.items():
            entry = list(entry)
            if len(entry) > 5:
                entry[5] = {}
            out[number] = entry
        return out

    def tasks_remaining(self) -> int:
        """``PromptServer.instance.prompt_queue.get_tasks_remaining()`` in the host."""
        queue = getattr(self._server(), "prompt_queue", None)
        get = getattr(queue, "get_tasks_remaining", None)
        return int(get()) if get is not None else 0

    def send_sync(self, event: Any, data: Any, sid: Optional[str] = None) -> None:
        """``PromptServer.instance.send_sync(event, data, sid)`` in the host."""
        self._server().send_sync(event, data, sid)

    async def send(self, event: Any, data: Any, sid: Optional[str] = None) -> None:
        """``await PromptServer.instance.send(event, data, sid)`` in the host."""
        await self._server().send(event, data, sid)

    def send_progress_text(self, text: str, node_id: Any, sid: Optional[str] = None) -> None:
        """``PromptServer.instance.send_progress_text(text, node_id, sid)`` in the host."""
        self._server().send_progress_text(text, node_id, sid)


def _preview_image(preview: Any) -> Any:
    """``(format, array, max_size)`` from a worker -> ``(format, PIL.Image, max_size)``."""
    try:
        fmt, arr, max_size = preview
        from PIL import Image

        import numpy as np

        a = np.asarray(arr)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4) or a.size > (1 << 26):
            return None
        return (str(fmt), Image.fromarray(a), max_size)
    except Exception:  # noqa: BLE001 - a bad preview is dropped, the progress still counts
        log.debug("dropped a malformed preview image from a worker", exc_info=True)
        return None
