"""nodecell-loader's settings, shared by its prestartup script and its entry point (one place)."""
import os

#: The app's modules an app cell's zygote imports besides torch (ComfyUI's start-up).
APP_PRELOAD = ["nodes", "server"]


def packs_root() -> str:
    """The folder of the packs to isolate: ``$NODECELL_PACKS``, else ``<ComfyUI>/isolated_nodes``."""
    import folder_paths

    return os.environ.get("NODECELL_PACKS") or os.path.join(folder_paths.base_path, "isolated_nodes")
