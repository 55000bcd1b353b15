"""Installs nodecell's pyisolate alias at interpreter start-up (``NODECELL_PYISOLATE_ALIAS=1``),
then hands over to the ``sitecustomize`` this one shadows, if there is one.

Put this folder first on ``PYTHONPATH`` (``python -m nodecell.compat exec`` does).
"""
import os
import sys


def _install() -> None:
    if os.environ.get("NODECELL_PYISOLATE_ALIAS") != "1":
        return
    try:
        from nodecell.compat import install_pyisolate_alias
    except ImportError as e:  # nodecell is not importable in this interpreter
        sys.stderr.write(f"nodecell: NODECELL_PYISOLATE_ALIAS=1 but nodecell is not importable ({e})\n")
        return
    install_pyisolate_alias()


def _chain() -> None:
    """Run the next ``sitecustomize`` on sys.path (e.g. Debian's), as if this one were not here."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_install()
_chain()
