"""Host app integration (ComfyUI, Hanzo Studio): load custom-node packs into cells.

    import nodes
    from nodecell import studio
    host = studio.StudioHost()    # the app running this process is detected
    names = await host.load_custom_node("custom_nodes/my_pack",
                                        nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)

A pack whose manifest says ``isolated: true`` (``nodecell migrate PACK``
writes one) runs in its own sandbox, and one **proxy class** per node is
registered in the app's ``NODE_CLASS_MAPPINGS``. Proxies look like the pack's
nodes to the app (classic ``INPUT_TYPES``/``RETURN_TYPES``/``FUNCTION``/...,
or v3 ``io.ComfyNode`` subclasses with the pack's schema rebuilt from the
app's own classes); calls are forwarded; tensors cross zero-copy; other
objects as remote handles. Inside the worker the app's modules are there, their
state served by the host: ``folder_paths``, ``model_management``'s interrupt
flag, progress bars, ``PromptServer.instance`` (messages, and the pack's HTTP
routes, served by the host's own server). A pack without ``isolated: true``
(or without a manifest) is imported into the host, as the app does today.

Layout: :mod:`.apps` (one profile per app, and the worker-side hook),
:mod:`.loader` (:class:`StudioHost`), :mod:`.proxies`, :mod:`.schema` (API
objects as data), :mod:`.services` (the app's services), :mod:`.routes`
(HTTP routes), :mod:`.workflow` (a runner for API-format workflows), and
``_ext`` (what runs in the worker).

With ``StudioHost(reload=True)`` a pack whose files change is served by a fresh
worker running the new code from the next call on, and its proxies' schemas
are fetched again.
"""

from __future__ import annotations

from . import apps
from ._ext import StudioContext, StudioExtension
from .apps import AppProfile
from .loader import StudioHost, default_host, load_custom_node
from .early import prestart, prestarted
from .proxies import is_proxy, make_proxy
from .workflow import NodeExecutionError, NodeRecord, WorkflowResult, run_workflow

__all__ = ["StudioHost", "load_custom_node", "run_workflow", "NodeExecutionError", "NodeRecord", "WorkflowResult",
           "StudioExtension", "StudioContext", "AppProfile", "apps", "default_host", "make_proxy", "is_proxy",
           "prestart", "prestarted"]
