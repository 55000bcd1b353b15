"""Cells started before the host's event loop runs, adopted by it later.

A host app such as ComfyUI runs its custom nodes' ``prestartup_script.py`` before it
imports torch and its own modules, and makes its event loop only after that (seconds
later). An app cell started there (:meth:`nodecell.appcell.AppCells.start_early`) boots
its zygote (torch, the app's modules) while the app boots. :class:`EarlyLaunch` does the
part that needs no event loop, on a thread of its own: it provisions the venv, builds the
launcher's command line and starts the launcher (a plain :class:`subprocess.Popen`, with
the control socket and status pipe a :class:`~nodecell.cell._Cell` would make). Once the
host's loop runs, :class:`AdoptedCell` takes that process over: the same control, status
and log handling as a cell the loop started itself, so nothing downstream can tell them
apart. What the zygote sends meanwhile waits in its socket and pipes (the log pipes are
enlarged to 1 MiB so a chatty preload does not block on them).

A launch that fails (provisioning, launcher, a zygote that dies) records why in
:attr:`EarlyLaunch.failure`; the adopter logs it and the cell is started the ordinary way.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from .cell import _Cell

__all__ = ["EarlyLaunch", "AdoptedCell", "EarlyNotNeeded"]

log = logging.getLogger("nodecell")

#: ``fcntl`` F_SETPIPE_SZ (Linux): the zygote's stdout/stderr pipes hold this much until adopted.
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20
#: Launches not adopted when the host process exits are ended then (their zygotes hold memory).
_pending: "weakref.WeakSet[EarlyLaunch]" = weakref.WeakSet()


class EarlyNotNeeded(Exception):
    """Raised by a launch's ``prepare`` when there is nothing for it to start (not a failure)."""


def _end_pending() -> None:
    for e in list(_pending):
        e.kill()


atexit.register(_end_pending)


class EarlyLaunch:
    """One cell's launcher started without an event loop (see the module docs).

    ``prepare()`` runs on the launch thread and returns ``(argv, env, facts)``: the launcher's
    command line (``{CTL}``/``{STATUS}`` as for :meth:`~nodecell.cell._Cell.start`), its
    environment, and whatever the adopter needs to know about the cell (kept in :attr:`facts`)."""

    def __init__(self, name: str, what: str,
                 prepare: Callable[[], Tuple[List[str], Dict[str, str], Dict[str, Any]]]) -> None:
        self.name = name
        #: What this cell is for (log lines).
        self.what = what
        self.facts: Dict[str, Any] = {}
        #: Why the launch failed (None: launched, or still launching).
        self.failure: Optional[str] = None
        #: Why nothing was launched, when nothing had to be (:class:`EarlyNotNeeded`).
        self.not_needed: Optional[str] = None
        self.popen: Optional[subprocess.Popen] = None
        self.ctl: Optional[socket.socket] = None
        self.status_r = -1
        #: ``time.perf_counter()`` when the launch began (the cell's start, for its ``start_s``).
        self.t0 = time.perf_counter()
        #: Seconds until the launcher was started (provisioning, the wait for ``after``).
        self.launched_s: Optional[float] = None
        self.adopted = False
        self._prepare = prepare
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"nodecell-early-{name}", daemon=True)
        _pending.add(self)

    def start(self) -> "EarlyLaunch":
        """Begin on the launch thread; returns at once."""
        self._thread.start()
        return self

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the launch thread (True: it ended; the launcher runs or :attr:`failure` says why)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            argv, env, facts = self._prepare()
            self.facts = facts
            with self._lock:
                if self.failure is not None:  # killed meanwhile
                    return
                self._launch(argv, env)
            self.launched_s = time.perf_counter() - self.t0
        except EarlyNotNeeded as e:
            self.not_needed = self.failure = str(e)
            log.info("no early start of %s: %s", self.what, e)
        except Exception as e:  # noqa: BLE001 - reported by the adopter, which starts the cell itself
            self.failure = f"{type(e).__name__}: {e}"
            log.warning("early start of %s failed (it starts when the first pack needs it): %s",
                        self.what, self.failure)
            self._close_fds()

    def _launch(self, argv: List[str], env: Dict[str, str]) -> None:
        host_ctl, child_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        ctl_fd = child_ctl.fileno()
        argv = [a.replace("{CTL}", str(ctl_fd)).replace("{STATUS}", str(status_w)) for a in argv]
        try:
            self.popen = subprocess.Popen(argv, pass_fds=(ctl_fd, status_w), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                          start_new_session=True)
        except BaseException:
            host_ctl.close()
            os.close(status_r)
            raise
        finally:
            child_ctl.close()
            os.close(status_w)
        self.ctl = host_ctl
        self.status_r = status_r
        for f in (self.popen.stdout, self.popen.stderr):
            try:
                if f is not None:
                    fcntl.fcntl(f.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
            except OSError:  # over /proc/sys/fs/pipe-max-size: the default size then
                pass

    def kill(self) -> None:
        """End a launch nobody adopted (the host stops, or the launch is not wanted)."""
        with self._lock:
            if self.adopted:
                return
            if self.failure is None:
                self.failure = "ended before a host adopted it"
            p = self.popen
            if p is not None and p.poll() is None:
                if self.ctl is not None:
                    try:
                        self.ctl.send(_exit_request())
                    except OSError:
                        pass
                try:
                    p.wait(0.5)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except OSError:
                        p.kill()
                    p.wait()
            self._close_fds()
        _pending.discard(self)

    def _close_fds(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.status_r >= 0:
            os.close(self.status_r)
            self.status_r = -1
        if self.popen is not None:
            for f in (self.popen.stdout, self.popen.stderr):
                if f is not None:
                    f.close()

    def take(self) -> Tuple[subprocess.Popen, socket.socket, int]:
        """Hand the running launcher to an adopter (once)."""
        with self._lock:
            if self.failure is not None or self.popen is None or self.ctl is None:
                raise RuntimeError(self.failure or "not launched")
            self.adopted = True
            out = (self.popen, self.ctl, self.status_r)
            self.ctl, self.status_r = None, -1
        _pending.discard(self)
        return out


def _exit_request() -> bytes:
    from . import _nodecell

    return _nodecell.encode_zygote_request({"op": "exit"})


class _ProcHandle:
    """What :class:`~nodecell.cell._Cell` uses of its ``asyncio`` process, for a
    :class:`subprocess.Popen` started before the loop: ``pid``, ``returncode``, ``wait()``,
    ``kill()`` (the exit is watched through a pidfd on the loop)."""

    def __init__(self, popen: subprocess.Popen, loop: asyncio.AbstractEventLoop) -> None:
        self._p = popen
        self._loop = loop
        self.pid = popen.pid
        self._done: Optional[asyncio.Future] = None

    @property
    def returncode(self) -> Optional[int]:
        return self._p.returncode

    def kill(self) -> None:
        if self._p.returncode is None:
            self._p.kill()

    async def wait(self) -> int:
        if self._p.poll() is not None:
            return self._p.returncode
        done = self._done
        if done is None:
            done = self._done = self._loop.create_future()
            try:
                fd = os.pidfd_open(self.pid)
            except OSError:  # reaped meanwhile
                self._p.wait()
                done.set_result(self._p.returncode)
                return self._p.returncode

            def exited() -> None:
                self._loop.remove_reader(fd)
                os.close(fd)
                self._p.wait()
                if not done.done():
                    done.set_result(self._p.returncode)

            self._loop.add_reader(fd, exited)
        return await asyncio.shield(done)


async def _stream(loop: asyncio.AbstractEventLoop, pipe: Any) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 16, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


class AdoptedCell(_Cell):
    """A :class:`~nodecell.cell._Cell` whose sandbox an :class:`EarlyLaunch` started: ``start``
    takes the running launcher over instead of starting one (``argv``/``env`` unused)."""

    def __init__(self, name: str, early: EarlyLaunch) -> None:
        super().__init__(name)
        self._early = early

    async def start(self, argv: List[str], env: Dict[str, str]) -> None:
        popen, ctl, status_r = self._early.take()
        self.proc = _ProcHandle(popen, self.loop)  # type: ignore[assignment]
        self.ctl = ctl
        ctl.setblocking(False)
        self.loop.add_reader(ctl.fileno(), self._on_ctl)
        os.set_blocking(status_r, False)
        self._status_fd = status_r
        self.loop.add_reader(status_r, self._on_status)
        out = await _stream(self.loop, popen.stdout)
        err = await _stream(self.loop, popen.stderr)
        self.tasks = [
            self.loop.create_task(self._pipe_to_log(out, logging.INFO, "stdout")),
            self.loop.create_task(self._pipe_to_log(err, logging.WARNING, "stderr")),
            self.loop.create_task(self._wait_exit()),
        ]
        await self.ready

    def kill_now(self, grace: float = 2.0) -> None:
        """:meth:`~nodecell.cell._Cell.kill_now`, then reap the launcher (no child watcher
        knows it: it was started before the loop)."""
        super().kill_now(grace)
        p = self._early.popen
        if p is not None:
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
