"""The benchmark extension for nodecell (imported by the host and, in the sandbox, by the worker).

Self-contained on purpose: nodecell mounts only this file into the sandbox.
"""
import os

import nodecell


def _proc_kb(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class BenchExt(nodecell.ExtensionBase):
    """Methods the scenarios call. ``async def`` in both extensions: pyisolate's proxy only
    forwards coroutine functions, so the same code runs on both sides."""

    async def noop(self):
        return None

    async def echo(self, x):
        return x

    async def mem(self):
        """This worker's memory: VmRSS and Pss in KiB (Pss = -1 where smaps_rollup is unreadable)."""
        return {"rss_kb": _proc_kb("/proc/self/status", "VmRSS:"),
                "pss_kb": _proc_kb("/proc/self/smaps_rollup", "Pss:"),
                "pid": os.getpid()}

    async def crash(self):
        os._exit(3)

    def noop_sync(self):
        """A plain (non-async) method: nodecell allows these; pyisolate does not."""
        return None

    def echo_sync(self, x):
        """A plain (non-async) echo, for the nodecell-only `*_sync_*` rows."""
        return x
