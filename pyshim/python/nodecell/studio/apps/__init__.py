"""Host apps as data: one :class:`AppProfile` per app nodecell integrates with.

A profile says which modules make up the app, where the app keeps its code,
how it names the packages of custom-node packs, which of its folders hold data
rather than code, which API packages' objects cross by value, and which
worker-side hooks set the app's services up inside a pack's worker. Everything
app-specific in :mod:`nodecell.studio` reads it from here: a new app is a new
profile, not edits across the loader.

    from nodecell.studio import apps
    profile = apps.detect()                      # from the running process, or None
    profile = apps.COMFYUI.at("/opt/ComfyUI")    # explicitly
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = ["AppProfile", "COMFYUI", "HANZO", "PROFILES", "detect", "by_name"]


@dataclass(frozen=True)
class AppProfile:
    """Everything nodecell needs to know about one host app.

    * ``name``: ``"comfyui"``, ``"hanzo"``...
    * ``root``: the folder holding the app's top-level modules (``None`` until
      detected or set with :meth:`at`).
    * ``paths_module``, ``nodes_module``, ``server_module``: the app's
      ``folder_paths``, ``nodes`` and ``server`` modules.
    * ``core_package``: the package with ``utils`` (progress bars),
      ``model_management`` and ``cli_args`` (``comfy``).
    * ``api_packages``: packages whose objects (v3 schemas, node outputs, UI
      outputs) cross by value and are rebuilt from the host's own classes.
    * ``execution_package``: the package with ``utils.CurrentNodeContext`` and
      ``graph_utils.ExecutionBlocker`` (``comfy_execution``).
    * ``markers``: modules whose presence in ``sys.modules`` identifies the app.
    * ``custom_nodes_parent``: the prefix of ``RELATIVE_PYTHON_MODULE``.
    * ``data_dirs``: folders of the app root that hold data, not code: never
      bound into workers (other packs, user settings, outputs, models are
      reached only through the app's services and their own binds).
    * ``requirements_file``: the app's requirements, shared into pack venvs.
    * ``preload``: top-level packages of the app that its own entry point
      imports before ``nodes`` (ComfyUI's ``main.py`` imports ``utils``; its
      ``nodes.py`` then puts ``comfy/`` first on ``sys.path``, where
      ``comfy/utils.py`` would shadow the ``utils`` package): the worker
      imports them first, from the app root, as the app does.
    * ``worker_hooks``: ``"module:function"`` names run in each worker before
      the pack is imported (they install the app's services); the function
      receives the worker's :class:`nodecell.studio._ext.StudioContext`.
    * ``mirrored_packages``: packages of the app whose modules the host had
      imported before it loads packs (ComfyUI's built-in extra nodes,
      ``comfy_extras``): the worker imports those, in the host's order, before
      it imports a pack, so a pack importing one finds the state the app's own
      loader left (``comfy_extras.nodes_latent`` and ``nodes_post_processing``
      import each other: imported first, ``nodes_latent`` fails on the cycle; the
      app's loader took the order that resolves it; rgthree-comfy imports it).
    * ``zygote_hooks``: ``"module:function"`` names an app cell's zygote calls
      (no arguments) before it imports the app's modules: they set up what the
      app's own start-up sets before its imports (the host's command line), from
      the app-wide context in ``NODECELL_STUDIO_APP``.
    """

    name: str
    root: Optional[str] = None
    paths_module: str = "folder_paths"
    nodes_module: str = "nodes"
    server_module: str = "server"
    core_package: str = "comfy"
    api_packages: Tuple[str, ...] = ("comfy_api",)
    execution_package: str = "comfy_execution"
    markers: Tuple[str, ...] = ()
    custom_nodes_parent: str = "custom_nodes"
    data_dirs: Tuple[str, ...] = ("custom_nodes", "user", "output", "input", "temp", "models", ".git", ".github",
                                  ".venv", "venv", "tests", "tests-unit", "script_examples")
    requirements_file: str = "requirements.txt"
    preload: Tuple[str, ...] = ("utils",)
    worker_hooks: Tuple[str, ...] = ("nodecell.studio.apps.worker:install",)
    zygote_hooks: Tuple[str, ...] = ("nodecell.studio.apps.worker:prepare_zygote",)
    mirrored_packages: Tuple[str, ...] = ("comfy_extras",)
    extra: Dict[str, str] = field(default_factory=dict)

    # -- derived names ----------------------------------------------------------------------

    @property
    def utils_module(self) -> str:
        """The module with ``ProgressBar`` and ``set_progress_bar_global_hook``."""
        return f"{self.core_package}.utils"

    @property
    def model_management_module(self) -> str:
        """The module with ``processing_interrupted`` and the device queries."""
        return f"{self.core_package}.model_management"

    @property
    def cli_args_module(self) -> str:
        """The module holding the app's parsed command line (``args``)."""
        return f"{self.core_package}.cli_args"

    @property
    def io_module(self) -> str:
        """The module defining the v3 io types, ``comfytype`` and ``Custom``."""
        return f"{self.api_packages[0]}.latest._io"

    @property
    def internal_module(self) -> str:
        """The module defining ``_ComfyNodeInternal`` (what makes a class a v3 node)."""
        return f"{self.api_packages[0]}.internal"

    @property
    def rebuild_packages(self) -> Tuple[str, ...]:
        """Packages whose classes may be rebuilt from data in the host."""
        return tuple(self.api_packages) + (self.execution_package,)

    # -- naming -----------------------------------------------------------------------------

    def module_name(self, pack_dir: str) -> str:
        """The ``sys.modules`` name the app imports a pack folder under.

        ComfyUI (``nodes.load_custom_node``) uses the folder's path with ``.``
        replaced by ``_x_``, so packs' relative imports resolve as they do there.
        """
        return os.path.abspath(pack_dir).rstrip("/").replace(".", "_x_")

    def relative_module(self, pack_dir: str) -> str:
        """``RELATIVE_PYTHON_MODULE`` of a pack's nodes (``custom_nodes.<folder>``)."""
        return f"{self.custom_nodes_parent}.{os.path.basename(os.path.abspath(pack_dir).rstrip('/'))}"

    # -- construction -----------------------------------------------------------------------

    def at(self, root: str) -> "AppProfile":
        """This profile with the app's code at ``root``."""
        return dataclasses.replace(self, root=os.path.realpath(root))

    def host_modules(self) -> List[str]:
        """The modules of :attr:`mirrored_packages` this (host) process has imported, in the
        order their imports completed (``sys.modules`` keeps it)."""
        prefixes = tuple(f"{p}." for p in self.mirrored_packages)
        return [name for name in list(sys.modules) if name.startswith(prefixes)]

    def code_entries(self) -> List[str]:
        """The entries of the app root that workers see (read-only): its code, not its data."""
        if self.root is None:
            return []
        out = []
        for name in sorted(os.listdir(self.root)):
            if name in self.data_dirs or name == "__pycache__" or name.startswith("."):
                continue
            out.append(os.path.join(self.root, name))
        return out

    def as_data(self) -> Dict[str, object]:
        """The profile as plain data (what a worker receives)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_data(cls, data: Dict[str, object]) -> "AppProfile":
        """Rebuild a profile from :meth:`as_data` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - names
        if extra:
            raise ValueError(f"app profile: unknown keys {sorted(extra)}")
        kw = dict(data)
        for k in ("api_packages", "markers", "data_dirs", "worker_hooks", "zygote_hooks", "mirrored_packages"):
            if k in kw:
                kw[k] = tuple(kw[k])  # type: ignore[arg-type]
        return cls(**kw)  # type: ignore[arg-type]


#: ComfyUI (upstream layout: ``folder_paths``, ``comfy``, ``comfy_api``, ``nodes``, ``server``).
COMFYUI = AppProfile(
    name="comfyui",
    markers=("folder_paths", "comfy", "comfy_api", "nodes", "server"),
)

#: Hanzo Studio: ComfyUI's shape with ``studio``/``studio_api``/``studio_execution`` names.
HANZO = AppProfile(
    name="hanzo",
    core_package="studio",
    api_packages=("studio_api",),
    execution_package="studio_execution",
    markers=("folder_paths", "studio", "studio_api", "nodes", "server"),
)

#: Known profiles, most specific first.
PROFILES: Tuple[AppProfile, ...] = (HANZO, COMFYUI)


def by_name(name: str) -> AppProfile:
    """A known profile by name (``"comfyui"``, ``"hanzo"``)."""
    for p in PROFILES:
        if p.name == name:
            return p
    raise ValueError(f"unknown app {name!r}; known: {', '.join(p.name for p in PROFILES)}")


def detect() -> Optional[AppProfile]:
    """The app running this process, from the modules it imported; ``None`` when none is.

    The root is the folder of the app's ``folder_paths`` module.
    """
    for p in PROFILES:
        if all(m in sys.modules for m in p.markers):
            mod = sys.modules[p.paths_module]
            f = getattr(mod, "__file__", None)
            if f:
                return p.at(os.path.dirname(f))
    return None
