"""A host process for the developer-tools tests, run as a subprocess (under a pty for pdb).

    python tools_host.py VENV_ROOT PACK_DIR [--timeout S] [--calls SPEC...] [--serve SECONDS]

Loads PACK_DIR as pack "dbgpack" with ToolsExt, prints "READY <pid>", then for
each call spec ``fn:arg`` (or ``afn:arg`` for the async path) prints
"RESULT <fn> <value>" or "ERROR <fn> <type> <message>"; with --serve it then
keeps running (stats, debugger attach) until stdin closes or SECONDS pass.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nodecell  # noqa: E402
from nc_toolsext import ToolsExt  # noqa: E402


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("venv_root")
    p.add_argument("pack")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--calls", nargs="*", default=[])
    p.add_argument("--serve", type=float, default=0)
    p.add_argument("--wait-line", action="store_true", help="wait for a line on stdin before the calls")
    a = p.parse_args()
    m = nodecell.ExtensionManager(ToolsExt, nodecell.ExtensionManagerConfig(venv_root_path=a.venv_root))
    ext = await m.load_extension(nodecell.ExtensionConfig(
        name="dbgpack", module_path=a.pack, timeout=a.timeout, max_memory="1GB"))
    print("READY", os.getpid(), flush=True)
    loop = asyncio.get_running_loop()
    if a.wait_line:
        await loop.run_in_executor(None, sys.stdin.readline)
    for spec in a.calls:
        fn, _, arg = spec.partition(":")
        try:
            if fn.startswith("async."):
                fn = fn[len("async."):]
                r = await ext.arun(fn, *(int(x) for x in arg.split(",") if x))
            else:
                r = await ext.run(fn, *(int(x) for x in arg.split(",") if x))
            print("RESULT", fn, r, flush=True)
        except Exception as e:  # noqa: BLE001
            print("ERROR", fn, type(e).__name__, str(e).replace("\n", " ")[:300], flush=True)
    if a.serve:
        try:
            await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), a.serve)
        except asyncio.TimeoutError:
            pass
    await m.stop_all_extensions()
    print("DONE", flush=True)


asyncio.run(main())
