"""``singleton_scope()``: undo singleton changes on exit (pyisolate's test helper)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator

__all__ = ["singleton_scope"]


@contextmanager
def singleton_scope() -> Iterator[None]:
    """Save which singletons exist; on exit (also on an exception) restore exactly that
    set. Instances are not copied: changes to an instance that existed before stay."""
    from .rpc_protocol import SingletonMetaclass

    saved: Dict[type, Any] = SingletonMetaclass._instances.copy()
    try:
        yield
    finally:
        SingletonMetaclass._instances.clear()
        SingletonMetaclass._instances.update(saved)
