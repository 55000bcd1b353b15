"""Exceptions raised by nodecell.

Every failure that crosses the process boundary becomes one of these, so a host
can catch ``nodecell.NodecellError`` and know the worker, not the host, failed.
"""

from __future__ import annotations

import builtins
from typing import Dict, Optional

__all__ = [
    "NodecellError",
    "WorkerCrashed",
    "CallTimeout",
    "RemoteError",
    "SandboxUnavailable",
    "ProvisionError",
    "ProtocolError",
    "ExtensionStopped",
    "LoopEnded",
    "ConfigError",
    "ChannelFull",
    "remote_error",
]


class NodecellError(Exception):
    """Base class of every error nodecell raises."""


class WorkerCrashed(NodecellError):
    """The worker process died while a call was pending.

    ``reason`` says how, as it really was: ``"exited"`` (it exited; ``exit_code``),
    ``"signal"`` (killed by ``signal``), ``"memory"`` (killed by its memory limit),
    ``"timeout"`` (killed because a call ran past its deadline), ``"protocol"``
    (dropped for breaking the channel protocol, e.g. impossible ring counters, or for
    reading nothing for a long time while the host's frames waited), ``"setup"``
    (its sandbox could not start). The next call restarts the worker.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "exited",
        exit_code: Optional[int] = None,
        signal: Optional[int] = None,
        extension: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code
        self.signal = signal
        self.extension = extension


class CallTimeout(NodecellError):
    """A call ran past its deadline; the worker was killed and will be restarted."""

    def __init__(self, message: str, *, timeout: float, extension: Optional[str] = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.extension = extension


class RemoteError(NodecellError):
    """The remote side raised an exception.

    Nothing of the remote exception object crosses: only its type name, message
    and formatted traceback text (``remote_type``, ``remote_message``,
    ``remote_traceback``). The host never imports or constructs the remote type.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        text = f"{remote_type}: {remote_message}"
        if remote_traceback:
            text = f"{text}\n\n--- remote traceback ---\n{remote_traceback.rstrip()}"
        super().__init__(text)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


# Builtin exception types a RemoteError may also be an instance of: code written for direct
# calls (``except KeyError``, ``except FileNotFoundError``) keeps working across the wall.
# Generator-control types are left out: a RemoteError must never end an iteration.
_NOT_MIRRORED = (StopIteration, StopAsyncIteration)
_MIRRORS: Dict[str, type] = {}


def _mirror_class(type_name: str) -> type:
    """``RemoteError`` + the builtin exception ``type_name`` names, or ``RemoteError`` itself.

    Only a name of ``builtins`` bound to an ``Exception`` subclass is looked up; nothing is
    imported or evaluated, and nothing of the remote object is constructed.
    """
    cls = _MIRRORS.get(type_name)
    if cls is not None:
        return cls
    builtin = vars(builtins).get(type_name) if type_name.isidentifier() else None
    if not (isinstance(builtin, type) and issubclass(builtin, Exception)) or issubclass(builtin, _NOT_MIRRORED):
        return RemoteError  # not cached: names a peer makes up never grow this table
    try:
        cls = type(f"Remote{type_name}", (RemoteError, builtin),
                   {"__module__": __name__, "__str__": BaseException.__str__,
                    "__doc__": f"A RemoteError whose remote type was the builtin {type_name}."})
        cls("t", "m", "")  # a builtin whose constructor wants more (UnicodeDecodeError) stays plain
    except TypeError:
        cls = RemoteError
    _MIRRORS[type_name] = cls
    return cls


def remote_error(remote_type: str, remote_message: str, remote_traceback: str = "") -> RemoteError:
    """The ``RemoteError`` for an exception the other side raised.

    When the remote type is a builtin exception (``KeyError``, ``ValueError``,
    ``FileNotFoundError``, ...), the error is also an instance of that builtin, so an
    ``except KeyError`` written for a direct call still catches it (a pack's
    ``folder_paths.get_filename_list`` lookup that the host answers, for one).
    """
    return _mirror_class(remote_type)(remote_type, remote_message, remote_traceback)


class SandboxUnavailable(NodecellError):
    """A wall the policy requires is not available on this kernel or for this user.

    ``walls`` names the missing walls. Use ``SandboxMode.BEST_EFFORT`` to run
    anyway (the missing walls are then reported, never silently skipped).
    """

    def __init__(self, message: str, walls: Optional[list] = None) -> None:
        super().__init__(message)
        self.walls = list(walls or [])


class ProvisionError(NodecellError):
    """Building the pack's environment failed; the message carries uv's own error text."""


class ProtocolError(NodecellError):
    """The worker sent something that breaks the protocol; it was dropped and will be restarted."""


class ChannelFull(NodecellError):
    """Too much already waits for the worker to read it (it is not keeping up); this
    call was not sent. The worker is fine: retry later, or send less at once."""

    def __init__(self, message: str, *, extension: Optional[str] = None) -> None:
        super().__init__(message)
        self.extension = extension


class ExtensionStopped(NodecellError):
    """The extension was stopped; calls on it fail until it is loaded again."""


class LoopEnded(NodecellError):
    """The event loop serving the extension's sandbox, running in another thread, ended
    (an ``asyncio.run`` there returned) while this call was handed to it: the call was cut
    off, and the worker may have run it. A call made afterwards starts a sandbox on the
    caller's own loop. (A call the ending loop had not begun is made again from the
    caller's loop instead: it never raises this.)"""

    def __init__(self, message: str, *, extension: Optional[str] = None) -> None:
        super().__init__(message)
        self.extension = extension


class ConfigError(NodecellError, ValueError):
    """A configuration value is wrong; ``field`` names it (e.g. ``sandbox.writable_paths[2]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
