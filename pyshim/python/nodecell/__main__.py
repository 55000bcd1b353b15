"""``python -m nodecell`` and the ``nodecell`` console script: the nodecell command line.

Replaces this process with the launcher binary the wheel ships (found by
:func:`nodecell._find_launcher.find_launcher`), passing the arguments through:
``python -m nodecell check``, ``nodecell provision PACK_DIR``, ... The
interpreter running this becomes the command's host Python
(``$NODECELL_HOST_PYTHON``, unless already set): the default interpreter for
pack venvs, the source of a shared torch, and where uv is found.
"""

from __future__ import annotations

import os
import sys
from typing import List, NoReturn, Optional

from ._find_launcher import LauncherNotFound, find_launcher

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> NoReturn:
    """Exec the launcher with ``argv`` (default: this process's arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        launcher = find_launcher()
    except LauncherNotFound as e:
        print(f"nodecell: {e}", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("NODECELL_HOST_PYTHON", sys.executable)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(launcher, ["nodecell", *args])


if __name__ == "__main__":
    main()
