"""In a worker of an extension loaded through :mod:`nodecell.compat.pyisolate`: the
``pyisolate`` alias, and the init hook that sets up pyisolate's child-side state
(the adapter, serializers, singleton callers, ``get_child_rpc_instance()``).

Called by ``nodecell._worker`` when the host set ``NODECELL_PYISOLATE_ALIAS=1``.
"""

from __future__ import annotations


def install() -> None:
    """Install the alias and register the child bootstrap with the worker runtime."""
    from .. import _worker_rt
    from . import install_pyisolate_alias
    from .pyisolate._internal import _nc_child

    install_pyisolate_alias()
    _worker_rt.add_init_hook(_nc_child.bootstrap)
