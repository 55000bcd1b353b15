"""A worker that attacks the host from inside: rewrites ring counters, stops reading,
floods logs. Imported in the host (by the tests) and in the workers.

Every attack starts on a thread and returns at once, so the host sees it while its
own calls are in flight, as it would from a compromised pack.
"""
from __future__ import annotations

import logging
import mmap
import os
import signal
import struct
import threading
import time

import nc_testext

# Byte layout of the channel memfd (ipc/src/layout.rs): ring i's control block at
# 512 + 512 * i, its head at +0 and its tail at +128; slot_count at byte 16.
_CTL = 512
_HEAD, _TAIL = 0, 128
_U64 = 1 << 64


def _channel_map() -> mmap.mmap:
    for fd in range(3, 1024):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "nodecell-channel" in target:
            return mmap.mmap(fd, os.fstat(fd).st_size)
    raise RuntimeError("no channel memfd found")


class HostileExt(nc_testext.TestExt):
    """TestExt plus attacks on the host."""

    def __init__(self):
        super().__init__()
        self.flooded = None

    def rewrite_tail(self, mode: str, seconds: float) -> str:
        """Keep rewriting the tail of the host->worker ring (which this side owns) for
        ``seconds``: ``full`` (the ring looks full: tail = head - capacity), ``ahead``
        (tail past the head), ``behind`` (tail moved backwards), ``wrapped`` (tail half
        the counter space away)."""
        m = _channel_map()
        cap = struct.unpack_from("<I", m, 16)[0]
        head_at, tail_at = _CTL + _HEAD, _CTL + _TAIL

        def run() -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                head = struct.unpack_from("<Q", m, head_at)[0]
                tail = struct.unpack_from("<Q", m, tail_at)[0]
                new = {"full": head - cap, "ahead": head + 7, "behind": tail - 64,
                       "wrapped": head + (1 << 63)}[mode]
                struct.pack_into("<Q", m, tail_at, new % _U64)

        threading.Thread(target=run, daemon=True).start()
        return mode

    def stop_reading_later(self, delay: float) -> bool:
        """Freeze this process (SIGSTOP) after ``delay`` seconds: it stays alive but
        reads nothing any more, like a worker wedged in native code."""

        def run() -> None:
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGSTOP)

        threading.Thread(target=run, daemon=True).start()
        return True

    def log_flood(self, seconds: float) -> bool:
        """Log as fast as possible for ``seconds`` on a thread; ``flooded_count`` says how many."""
        self.flooded = None

        def run() -> None:
            lg = logging.getLogger("flood")
            n = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                lg.warning("flood record %d", n)
                n += 1
            self.flooded = n

        threading.Thread(target=run, daemon=True).start()
        return True

    def flooded_count(self):
        return self.flooded
