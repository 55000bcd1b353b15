"""The extension class the developer-tools tests load: it calls functions of the pack by name."""
from __future__ import annotations

import inspect

import nodecell


class ToolsExt(nodecell.ExtensionBase):
    """Runs ``module.<fn>(*args)`` in the worker (sync or async)."""

    def run(self, fn, *args, **kwargs):
        return getattr(self.module, fn)(*args, **kwargs)

    async def arun(self, fn, *args, **kwargs):
        r = getattr(self.module, fn)(*args, **kwargs)
        if inspect.isawaitable(r):
            r = await r
        return r
