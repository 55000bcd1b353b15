"""The profiler's worker half: one span record per call this worker served.

While on (the host turns it on through the worker's tools object), the
endpoint's ``call_hook`` stamps when a call starts running (its arguments
decoded) and ``reply_hook`` when its reply is being sent and when it has
been; the records wait in a bounded buffer until the host drains them
(``profile_drain``, about once a second and at the end of a profile). Times
are ``time.monotonic_ns()``: CLOCK_MONOTONIC, the host's clock too (cells get
no time namespace).

A record is a tuple ``(call_id, method, thread, run_ns, decode_ns, reply_ns,
sent_ns)``: ``run_ns`` the call starts running, ``decode_ns`` how long
decoding its frame took (``Channel.last_decode_ns``), ``reply_ns`` the
method returned and encoding the reply starts, ``sent_ns`` the reply is in
the ring.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

#: Longest a drain waits for the records of calls still open (see WorkerProfiler.drain).
DRAIN_SETTLE_S = 0.25

#: Records kept between drains (the oldest go first beyond this).
MAX_RECORDS = 200_000

#: Handle ids whose calls are nodecell's own (control, tools): never recorded.
_INTERNAL_TARGETS = (1, 2)


class WorkerProfiler:
    """Span records of the calls one worker serves."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep
        self.on = False
        self._open: Dict[int, Tuple[str, str, int, int]] = {}
        self._done: Deque[tuple] = collections.deque(maxlen=MAX_RECORDS)
        self._lock = threading.Lock()
        #: Notified when a call's record is done (``drain`` waits briefly for replies in flight).
        self._recorded = threading.Condition(self._lock)
        self.dropped = 0

    def begin(self, call_id: int, payload: Any) -> None:
        """``call_hook``: a call starts running (never raises)."""
        t = time.monotonic_ns()
        try:
            target, method = payload[0], payload[1]
        except Exception:  # noqa: BLE001 - malformed calls are answered elsewhere
            return
        if target in _INTERNAL_TARGETS:
            return
        decode = getattr(self.ep.channel, "last_decode_ns", 0) or 0
        self._open[call_id] = (str(method), threading.current_thread().name, t, int(decode))

    def replied(self, call_id: int, reply_ns: int, sent: int) -> None:
        """``reply_hook``: the reply of ``call_id`` was encoded from ``reply_ns`` to ``sent``."""
        rec = self._open.pop(call_id, None)
        if rec is None:
            return
        method, thread, run, decode = rec
        with self._lock:
            if len(self._done) == self._done.maxlen:
                self.dropped += 1
            self._done.append((call_id, method, thread, run, decode, reply_ns, sent))
            self._recorded.notify_all()

    def drain(self, settle: float = DRAIN_SETTLE_S) -> List[tuple]:
        """The records since the last drain. A call whose reply is already on its way is
        recorded by its thread just after the send: calls still open get up to ``settle``
        seconds to finish their records (the host drains right after its last reply)."""
        with self._lock:
            end = time.monotonic() + settle
            while self._open and (left := end - time.monotonic()) > 0:
                self._recorded.wait(left)
            out = list(self._done)
            self._done.clear()
        return out


_profiler: Optional[WorkerProfiler] = None


def profiler(ep: Any) -> WorkerProfiler:
    """This worker's profiler."""
    global _profiler
    if _profiler is None or _profiler.ep is not ep:
        _profiler = WorkerProfiler(ep)
    return _profiler
