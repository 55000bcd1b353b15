#!/usr/bin/env bash
# The nodecell demo on a fresh machine: set-up, build, then a Studio-style
# workflow across four isolated node packs (two numpy versions side by side,
# torch image filters, and a pack that misbehaves on purpose).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
export UV_CACHE_DIR="${UV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecell-dev/uv}"
export UV_PYTHON_DOWNLOADS=never
export PATH="$REPO/.venv/bin:$PATH"
scripts/setup.sh
scripts/build-wheel.sh >/dev/null
exec .venv/bin/python -m nodecell.studio.demo --packs examples/packs --workflow examples/workflow.json "$@"
