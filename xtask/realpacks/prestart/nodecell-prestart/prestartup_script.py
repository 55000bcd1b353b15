"""The realpacks driver's prestartup script: ComfyUI runs it where it runs every custom node's
(inside ``import main``, after its command line and folders, before torch and its modules), and
it starts the app cells there, as ``examples/comfyui/nodecell-loader`` does for a real ComfyUI.
Its arguments come from ``$NODECELL_REALPACKS_PRESTART`` (JSON, the driver's)."""
import json
import os
import time

from nodecell import studio

_args = json.loads(os.environ["NODECELL_REALPACKS_PRESTART"])
_t0 = time.perf_counter()
studio.prestart(**_args)
os.environ["NODECELL_REALPACKS_PRESTART_AT"] = repr(time.time())
os.environ["NODECELL_REALPACKS_PRESTART_S"] = repr(time.perf_counter() - _t0)
