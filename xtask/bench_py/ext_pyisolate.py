"""The benchmark extension for pyisolate (imported by the host and, in the sandbox, by the worker).

Self-contained on purpose: the worker imports it by module name from the host's sys.path.
"""
import os

import pyisolate


def _proc_kb(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def image_node(image, brightness=0.1, contrast=1.2):
    """A node-like IMAGE operation (brightness/contrast as image packs write it): a few
    elementwise ops over a [B, H, W, C] float tensor, returning a fresh tensor. The
    benchmark runs it in the host (direct) and through the extension (isolated)."""
    return ((image - 0.5) * contrast + 0.5 + brightness).clamp(0.0, 1.0)


def matmul_node(a):
    """A heavy CPU node (a matmul over a [1024, 1024] float32 tensor): what the worker's
    thread-pool size costs such nodes. Run in the host (direct) and through the extension."""
    return a @ a


def _quiet_pyisolate():
    import logging

    for name in ("pyisolate._internal.tensor_serializer", "pyisolate._internal.rpc_transports"):
        logging.getLogger(name).setLevel(logging.ERROR)


class BenchExt(pyisolate.ExtensionBase):
    """Methods the scenarios call. ``async def`` in both extensions: pyisolate's proxy only
    forwards coroutine functions, so the same code runs on both sides."""

    async def before_module_loaded(self):
        # pyisolate logs a WARNING per large tensor or message ("PERFORMANCE: Serializing
        # large CPU tensor", "Large RPC message"); keep the benchmark's output readable.
        _quiet_pyisolate()

    async def noop(self):
        return None

    async def echo(self, x):
        return x

    async def image_node(self, image):
        """A node call: a fresh IMAGE tensor out (see image_node)."""
        return (image_node(image),)

    async def fresh_64MiB_out(self, i):
        """A fresh private 64 MiB float32 tensor made in the worker every call (a node's
        output), filled with ``i``."""
        import torch

        return torch.empty(16 * 1024 * 1024, dtype=torch.float32).fill_(float(i))

    async def matmul_node(self, a):
        """A heavy CPU node: a fresh 4 MiB [1024, 1024] float32 product out (see matmul_node)."""
        return (matmul_node(a),)

    async def mem(self):
        """This worker's memory: VmRSS and Pss in KiB (Pss = -1 where smaps_rollup is unreadable)."""
        return {"rss_kb": _proc_kb("/proc/self/status", "VmRSS:"),
                "pss_kb": _proc_kb("/proc/self/smaps_rollup", "Pss:"),
                "pid": os.getpid()}

    async def crash(self):
        os._exit(3)
