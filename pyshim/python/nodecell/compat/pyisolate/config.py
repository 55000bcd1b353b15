"""pyisolate's configuration types (``pyisolate.config``).

As in pyisolate these are ``TypedDict`` s: ``ExtensionConfig(name=..., ...)`` and a
dict literal give the same plain dict, checked by nothing until it is used. nodecell
checks it when an extension is created from it (:class:`pyisolate.host.Extension`):
a value nodecell cannot honour raises :class:`nodecell.ConfigError` naming the field.

``SandboxMode`` is nodecell's: ``REQUIRED`` and ``DISABLED`` as in pyisolate, plus
``BEST_EFFORT`` (start, and report the walls this kernel cannot give).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Dict, List, TypedDict, Union

from ...config import SandboxMode

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover - Python 3.9/3.10
    try:
        from typing_extensions import NotRequired
    except ImportError:
        from typing import Optional as NotRequired  # type: ignore[assignment]

if TYPE_CHECKING:
    from ._internal.rpc_protocol import ProxiedSingleton

__all__ = ["SandboxMode", "ExtensionManagerConfig", "SandboxConfig", "CUDAWheelConfig", "ExtensionConfig"]


class ExtensionManagerConfig(TypedDict):
    """Settings of an :class:`ExtensionManager`: ``venv_root_path``, the folder nodecell's
    content-addressed venv cache lives in (readable by the unprivileged uid workers run as)."""

    venv_root_path: str


class SandboxConfig(TypedDict, total=False):
    """The ``sandbox`` section: ``writable_paths``, ``readonly_paths`` (a list, or a
    ``{src: dst}`` dict), ``network``."""

    writable_paths: List[str]
    readonly_paths: Union[List[str], Dict[str, str]]
    network: bool


class CUDAWheelConfig(TypedDict):
    """``cuda_wheels``: packages to take from a custom wheel index.

    nodecell gives ``index_url`` / ``index_urls`` to uv as extra indexes (uv takes a
    package from the first index that has it, so the listed ``packages`` come from
    there) and renames dependencies per ``package_map``."""

    index_url: NotRequired[str]
    index_urls: NotRequired[List[str]]
    packages: List[str]
    package_map: NotRequired[Dict[str, str]]


class ExtensionConfig(TypedDict):
    """One extension (node pack). See pyisolate's documentation for each field;
    nodecell's differences: ``package_manager`` must be ``"uv"``; ``conda_*`` raise
    :class:`nodecell.ConfigError`; ``sealed_host_ro_paths`` become read-only mounts
    put on the worker's ``sys.path``; nodecell's own fields (``timeout``,
    ``max_memory``, ``max_cpu_percent``, ``max_pids``, ``workers``...) may be given too.
    """

    name: str
    module_path: NotRequired[str]
    module: NotRequired[str]
    isolated: bool
    dependencies: List[str]
    apis: List["type[ProxiedSingleton]"]
    share_torch: bool
    share_cuda_ipc: bool
    sandbox: NotRequired[SandboxConfig]
    sandbox_mode: NotRequired[SandboxMode]
    env: NotRequired[Dict[str, str]]
    package_manager: NotRequired[str]
    execution_model: NotRequired[str]
    sealed_host_ro_paths: NotRequired[List[str]]
    conda_channels: NotRequired[List[str]]
    conda_dependencies: NotRequired[List[str]]
    conda_platforms: NotRequired[List[str]]
    cuda_wheels: NotRequired[CUDAWheelConfig]
    extra_index_urls: NotRequired[List[str]]
