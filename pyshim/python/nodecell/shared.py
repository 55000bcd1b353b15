"""Classes shared by host and worker: :class:`ExtensionBase`, :class:`ProxiedSingleton`,
:func:`local_execution`.

The same module is imported on both sides. In the host a ``ProxiedSingleton``
subclass is an ordinary singleton. In a worker whose extension was configured
with ``apis=[ThatClass]``, ``ThatClass()`` returns a proxy whose method calls
run on the host's one instance (sync methods block the calling worker thread,
async methods are awaitable), except methods marked :func:`local_execution`.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any, Callable, Dict, Optional, TypeVar

__all__ = ["ExtensionBase", "ExtensionLocal", "ProxiedSingleton", "local_execution", "SingletonMetaclass"]

T = TypeVar("T")


def local_execution(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a :class:`ProxiedSingleton` method to run in the calling process instead of the host."""
    func._nodecell_local = True  # type: ignore[attr-defined]
    func._is_local_execution = True  # type: ignore[attr-defined]  # pyisolate's marker
    return func


class SingletonMetaclass(type):
    """Metaclass that makes ``Cls()`` return the one instance of ``Cls`` (or its remote proxy)."""

    _instances: Dict[type, Any] = {}
    _lock = threading.RLock()

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        inst = SingletonMetaclass._instances.get(cls)
        if inst is None:
            with SingletonMetaclass._lock:
                inst = SingletonMetaclass._instances.get(cls)
                if inst is None:
                    inst = super().__call__(*args, **kwargs)
                    SingletonMetaclass._instances[cls] = inst
        return inst

    def inject_instance(cls, instance: Any) -> None:
        """Make ``cls()`` return ``instance`` (used in workers to install the remote proxy)."""
        with SingletonMetaclass._lock:
            SingletonMetaclass._instances[cls] = instance

    def get_instance(cls, *args: Any, **kwargs: Any) -> Any:
        """Return the instance, creating it with the given arguments if needed."""
        return cls(*args, **kwargs)

    def _reset_instance(cls) -> None:
        with SingletonMetaclass._lock:
            SingletonMetaclass._instances.pop(cls, None)


class ProxiedSingleton(metaclass=SingletonMetaclass):
    """A host-side service that workers reach through a proxy.

    Subclass it, list the subclass in ``ExtensionConfig(apis=[...])``, and inside
    the worker ``MyService()`` returns a proxy to the host's instance. Arguments
    and results cross as values (or as remote handles); callables passed as
    arguments become callbacks into the process that owns them.
    """

    def __init__(self) -> None:
        object.__init__(self)

    @classmethod
    def get_remote_id(cls) -> str:
        """The name the host registers this singleton under (the class's qualified name)."""
        return f"{cls.__module__}:{cls.__qualname__}"


class ExtensionLocal:
    """Base of code that runs inside the extension's process (pyisolate's name)."""

    async def before_module_loaded(self) -> None:
        """Called in the worker before the pack's ``__init__.py`` is imported."""

    async def on_module_loaded(self, module: ModuleType) -> None:
        """Called in the worker with the pack's imported module."""


class ExtensionBase(ExtensionLocal):
    """Base class of the object that represents a pack inside its worker.

    Subclass it and pass the subclass to ``ExtensionManager``; the host calls its
    methods (sync or async) with ``await ext.method(...)`` and they run in the
    worker. The subclass must live in an importable module (not ``__main__`` of an
    interactive session): the worker imports it from the host's file, read-only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.module: Optional[ModuleType] = None

    async def stop(self) -> None:
        """Called in the worker when the extension is being stopped."""
