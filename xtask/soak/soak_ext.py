"""The soak extension (imported by the host and, in the sandbox, by the worker).

Self-contained on purpose: nodecell mounts only this file into the sandbox.
"""
import asyncio
import os
import signal

import nodecell


class SoakExt(nodecell.ExtensionBase):
    def echo(self, x):
        return x

    async def aecho(self, x):
        await asyncio.sleep(0)
        return x

    def whoami(self):
        return os.getpid()

    def exit_now(self, code):
        os._exit(code)

    def kill_self(self, sig):
        os.kill(os.getpid(), sig)

    def segfault(self):
        import ctypes

        ctypes.string_at(0)

    def hog(self, megabytes):
        blocks = []
        for _ in range(megabytes):
            blocks.append(bytearray(1 << 20))
        return len(blocks)


_ = signal
