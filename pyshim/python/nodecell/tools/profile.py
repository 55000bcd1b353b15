"""Profiles of calls across host and cells (filled in below; see the module docs)."""

from __future__ import annotations

from typing import Any, Optional


def current_path() -> Optional[str]:
    """Where the running profile will be written, or None when not profiling."""
    return None


async def worker_ready(ext: Any, worker: Any) -> None:
    """A worker finished init: turn its span recording on when profiling."""


def handle_request(conn: Any, msg: Any) -> None:
    """``{"op": "profile"}`` on the tools socket."""
    conn.send({"error": "profiling over the tools socket is not available yet"})


def start(path: str) -> None:
    raise NotImplementedError


def stop_sync() -> Optional[str]:
    raise NotImplementedError
