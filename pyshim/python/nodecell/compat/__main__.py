"""``python -m nodecell.compat``: opt a process tree or a venv into the pyisolate alias.

    python -m nodecell.compat exec -- CMD [ARGS...]   run CMD; every Python it starts imports nodecell's pyisolate
    python -m nodecell.compat install-pth [--site DIR]  every process of this venv gets the alias
    python -m nodecell.compat remove-pth [--site DIR]   undo install-pth
    python -m nodecell.compat status                    what is installed
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from typing import List, Optional

PTH_NAME = "nodecell-pyisolate-alias.pth"
# A .pth line starting with "import" runs at start-up; NODECELL_PYISOLATE_ALIAS=0 turns it off.
PTH_LINE = ("import os; os.environ.get('NODECELL_PYISOLATE_ALIAS', '1') != '0' and "
            "__import__('nodecell.compat').compat.install_pyisolate_alias()\n")


def _site(arg: Optional[str]) -> str:
    return arg or sysconfig.get_paths()["purelib"]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodecell.compat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("exec", help="run a command with the alias in every Python process it starts")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("install-pth", "remove-pth"):
        sp = sub.add_parser(name)
        sp.add_argument("--site", help="site-packages folder (default: this interpreter's)")
    sub.add_parser("status")
    a = p.parse_args(argv)

    from . import autoload_path

    if a.cmd == "exec":
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not cmd:
            p.error("exec needs a command after --")
        env = dict(os.environ)
        env["NODECELL_PYISOLATE_ALIAS"] = "1"
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = autoload_path() + (os.pathsep + old if old else "")
        try:
            os.execvpe(cmd[0], cmd, env)
        except OSError as e:
            print(f"nodecell.compat exec: cannot run {cmd[0]!r}: {e}", file=sys.stderr)
            return 127
    path = os.path.join(_site(getattr(a, "site", None)), PTH_NAME)
    if a.cmd == "install-pth":
        with open(path, "w") as f:
            f.write(PTH_LINE)
        print(f"wrote {path}: `import pyisolate` now gives nodecell's layer in this venv "
              "(NODECELL_PYISOLATE_ALIAS=0 turns it off for one process)")
        return 0
    if a.cmd == "remove-pth":
        try:
            os.unlink(path)
            print(f"removed {path}")
        except FileNotFoundError:
            print(f"{path} was not there")
        return 0
    print(f"{PTH_NAME} in {os.path.dirname(path)}: {'yes' if os.path.exists(path) else 'no'}")
    print(f"autoload folder (exec): {autoload_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
