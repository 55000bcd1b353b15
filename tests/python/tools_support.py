"""Helpers for the developer-tools tests: a host process (tools_host.py) on pipes or
under a real pty, and pty-driven commands (``nodecell debug``, ``nodecell top``)."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import List, Optional

from nodecell._find_launcher import find_launcher


def launcher() -> str:
    return find_launcher()


def tools_dir() -> str:
    """A private directory for the tools sockets of one test (mode 0700)."""
    return tempfile.mkdtemp(prefix="nodecell-tools-", dir="/tmp")


class Pty:
    """A process on a real pseudo-terminal; ``expect`` reads until a pattern shows up."""

    def __init__(self, argv: List[str], env: dict, cwd: Optional[str] = None, rows: int = 40,
                 cols: int = 170) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            try:
                if cwd:
                    os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        # A real terminal has a size (ratatui draws nothing on a 0x0 one).
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.buf = b""
        self.log = b""

    def expect(self, pattern: str, timeout: float = 120) -> str:
        """Read until ``pattern`` (a regex) matches; return the text up to and including it."""
        rx = re.compile(pattern.encode())
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out.decode("utf-8", "replace")
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; output so far:\n"
                                     + self.log.decode("utf-8", "replace")[-4000:])
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            if not data:
                raise AssertionError(f"the process ended while waiting for {pattern!r}; output:\n"
                                     + self.log.decode("utf-8", "replace")[-4000:])
            self.buf += data
            self.log += data

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:  # keep draining so the child never blocks on a full pty
                r, _, _ = select.select([self.fd], [], [], 0.1)
                if r:
                    data = os.read(self.fd, 65536)
                    self.buf += data
                    self.log += data
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise AssertionError("process did not exit; output:\n" + self.log.decode("utf-8", "replace")[-4000:])

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def host_argv(support_dir: Path, venv_root: Path, *args: str) -> List[str]:
    return [sys.executable, str(support_dir / "tools_host.py"), str(venv_root),
            str(support_dir / "packs" / "dbgpack"), *args]


def env_with(tools: str, **extra: str) -> dict:
    env = dict(os.environ)
    env["NODECELL_TOOLS_DIR"] = tools
    env.pop("PYTHONBREAKPOINT", None)
    env.update(extra)
    return env


class Host:
    """tools_host.py on pipes, driven by commands (see its docstring)."""

    def __init__(self, support_dir: Path, venv_root: Path, tools: str, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(host_argv(support_dir, venv_root, "--commands", *args),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env_with(tools, **env))
        self.stderr: List[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self.line(300)
        assert line.startswith("READY"), line
        self.pid = int(line.split()[1])

    def line(self, timeout: float = 120) -> str:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise AssertionError(f"host said nothing for {timeout} s; stderr:\n{self._stderr()}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"host exited ({self.proc.wait()}); stderr:\n{self._stderr()}")
        return line.strip()

    def expect(self, prefix: str, timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        while True:
            line = self.line(max(end - time.monotonic(), 0.1))
            if line.startswith(prefix):
                return line

    def send(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def call(self, cmd: str, timeout: float = 120) -> str:
        self.send("call " + cmd)
        return self.expect(("RESULT ", "ERROR "), timeout)  # type: ignore[arg-type]

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _stderr(self) -> str:
        return "".join(self.stderr)[-4000:]

    def close(self) -> str:
        """Stop the host; returns its stderr."""
        if self.proc.poll() is None:
            try:
                self.send("bye")
            except OSError:
                pass
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return "".join(self.stderr)
