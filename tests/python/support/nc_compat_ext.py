"""Extension classes for tests/python/test_compat_core.py: methods whose names the
host handle uses itself (``call``, ``start``, ``stop`` ...), and a stop hook that
leaves a mark the host can see.

Imported in the host by the tests and in every worker from a read-only mount.
"""
from __future__ import annotations

import os
import uuid

import nodecell


class ShadowExt(nodecell.ExtensionBase):
    """Its method names collide with the host handle's own API."""

    def call(self, x):
        return ("call", x)

    def start(self):
        return "start"

    def config(self):
        return "config"

    def env(self, name):
        return os.environ.get(name)

    def pid(self):
        return os.getpid()

    async def stop(self):
        """Leaves a file in the folder named by NC_STOP_MARK (writable for this test)."""
        d = os.environ.get("NC_STOP_MARK")
        if d:
            with open(os.path.join(d, f"stopped-{uuid.uuid4().hex}"), "w") as f:
                f.write("stopped")
