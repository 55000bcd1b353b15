#!/usr/bin/env bash
# Sets up everything nodecell's demo and tests need on a fresh Debian 12 machine.
# Idempotent: a second run only checks. Run as root (installs Debian packages)
# or as a user with sudo; without either it skips apt and says so.
#
#   scripts/setup.sh            # Debian packages, .venv (uv, maturin, pytest, numpy, ray, torch), release build
#   NODECELL_SKIP_TORCH=1 ...   # everything but torch (faster; torch tests then fail loudly, not skip)
#   NODECELL_SETUP_BUILD=0 ...  # no release build (scripts/test.sh: its tests use the debug build and the wheel)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# Debian packages: bubblewrap (the launch benchmark's baseline), python3.11 + venv
# (the interpreter sandboxed workers run: readable by any uid, unlike pyenv's under /root),
# git (git+file:// dependency tests), iproute2 (loopback checks), util-linux (unshare, setpriv).
PKGS=(bubblewrap python3.11 python3.11-venv python3.11-dev libc6-dev git iproute2 util-linux passwd procps)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=none; fi
  if [ "$SUDO" = none ]; then
    say "cannot install Debian packages ${missing[*]} (not root, no sudo)"; exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The development venv: Debian's python3.11, so sandboxed workers (which never run
# as host root) can read the interpreter and the host's torch.
export UV_CACHE_DIR="${UV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecell-dev/uv}"
export UV_PYTHON_DOWNLOADS=never
mkdir -p "$UV_CACHE_DIR"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with /usr/bin/python3.11"
  /usr/bin/python3.11 -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  say "installing uv into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv>=0.9,<0.14"
fi
UV=.venv/bin/uv
# aiohttp: the stand-in host app of the Studio tests (tests/fixtures/studio_app) serves routes with it
# jsonschema: the profile test validates traces against a trace-event schema
# auditwheel brings pyelftools, which a Studio test pack imports without declaring it
want=("maturin>=1.12.1,<2" auditwheel pytest pytest-timeout pytest-asyncio mypy "numpy>=2,<3" pyyaml "ray>=2.9,<3" aiohttp jsonschema)
if [ -z "${NODECELL_SKIP_TORCH:-}" ]; then want+=("torch>=2.4,<3"); fi
say "installing Python tools into .venv: ${want[*]}"
$UV pip install -q --python .venv/bin/python "${want[@]}"

# Everything the venv and the sandboxed tests read must be readable by an unprivileged uid.
chmod -R a+rX .venv 2>/dev/null || true

if [[ "${NODECELL_SETUP_BUILD:-1}" == 0 ]]; then
  say "ready: .venv/bin/python (no release build: NODECELL_SETUP_BUILD=0)"
else
  say "building nodecell (release)"
  cargo build --release -q --workspace --bins
  say "ready: target/release/nodecell, .venv/bin/python"
fi
