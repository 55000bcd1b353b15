"""A host process for the developer-tools tests, run as a subprocess (under a pty for pdb).

    python tools_host.py VENV_ROOT PACK_DIR [--timeout S] [--max-memory SIZE]
                         [--calls FN:ARGS ...] [--commands]

Loads PACK_DIR as pack "dbgpack" with ToolsExt and prints "READY <pid>". Then
runs each ``--calls`` spec (``fn:1,2``; ``async.fn:1`` takes the async path),
printing "RESULT <fn> <value>" or "ERROR <fn> <type> <message>". With
``--commands`` it then reads commands from stdin, one per line:

    call FN [ARG...]     run one call and print its result
    spawn FN [ARG...]    start a call in the background (its result is printed when it ends)
    loop FN [ARG...]     call FN again and again (5 ms apart: a steady load whose profile
                         stays small enough to validate) in the background until "stop"
    stop                 end the loops
    profile PATH         start a profile (nodecell.tools.start_profile)
    endprofile           stop it and print "PROFILE <path>"
    bye                  stop everything and exit ("DONE")

Without --commands it exits after the calls.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nodecell  # noqa: E402
from nc_toolsext import ToolsExt  # noqa: E402


def _num(s: str):
    try:
        return int(s)
    except ValueError:
        return float(s)


async def _call(ext, fn: str, args) -> None:
    try:
        if fn.startswith("async."):
            fn = fn[len("async."):]
            r = await ext.arun(fn, *args)
        else:
            r = await ext.run(fn, *args)
        print("RESULT", fn, r, flush=True)
    except Exception as e:  # noqa: BLE001 - reported to the test
        print("ERROR", fn, type(e).__name__, str(e).replace("\n", " ")[:300], flush=True)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("venv_root")
    p.add_argument("pack")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--max-memory", default="1GB")
    p.add_argument("--calls", nargs="*", default=[])
    p.add_argument("--commands", action="store_true")
    a = p.parse_args()
    m = nodecell.ExtensionManager(ToolsExt, nodecell.ExtensionManagerConfig(venv_root_path=a.venv_root))
    ext = await m.load_extension(nodecell.ExtensionConfig(
        name="dbgpack", module_path=a.pack, timeout=a.timeout, max_memory=a.max_memory))
    print("READY", os.getpid(), flush=True)
    for spec in a.calls:
        fn, _, arg = spec.partition(":")
        await _call(ext, fn, [_num(x) for x in arg.split(",") if x])
    loop = asyncio.get_running_loop()
    loops: list = []
    tasks: set = set()
    while a.commands:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "bye":
            break
        cmd, rest = words[0], words[1:]
        if cmd == "call":
            await _call(ext, rest[0], [_num(x) for x in rest[1:]])
        elif cmd == "spawn":
            t = asyncio.ensure_future(_call(ext, rest[0], [_num(x) for x in rest[1:]]))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        elif cmd == "loop":
            async def forever(fn=rest[0], args=[_num(x) for x in rest[1:]]):
                while True:
                    try:
                        await ext.run(fn, *args)
                        await asyncio.sleep(0.005)
                    except Exception:  # noqa: BLE001 - a crash test may kill the worker meanwhile
                        await asyncio.sleep(0.01)
            loops.append(asyncio.ensure_future(forever()))
            print("LOOPING", rest[0], flush=True)
        elif cmd == "stop":
            for t in loops:
                t.cancel()
            loops.clear()
            print("STOPPED", flush=True)
        elif cmd == "profile":
            await nodecell.tools.start_profile_async(rest[0])
            print("PROFILING", flush=True)
        elif cmd == "endprofile":
            print("PROFILE", await nodecell.tools.stop_profile_async(), flush=True)
    for t in loops:
        t.cancel()
    await m.stop_all_extensions()
    print("DONE", flush=True)


asyncio.run(main())
