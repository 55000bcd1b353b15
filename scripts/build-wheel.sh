#!/usr/bin/env bash
# Builds the nodecell wheel and installs it into .venv; prints the wheel's path.
#
# A thin wrapper: the wheel (the _nodecell extension, the Python package and the
# statically linked launcher, built by pyshim/build.rs) comes from one standard
# command, here `maturin build --release` (manylinux-tagged; `pip wheel .` builds
# the same files, tagged linux_x86_64 as pip's source builds are).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
# Earlier versions copied the launcher here before building; a stale copy must not ship.
rm -rf pyshim/python/nodecell/bin
rm -f target/wheels/nodecell-*.whl
PYO3_PYTHON="$REPO/.venv/bin/python" .venv/bin/maturin build --release --quiet \
  --interpreter .venv/bin/python -o target/wheels >/dev/null
WHEEL="$(ls target/wheels/nodecell-*.whl | head -1)"
.venv/bin/uv pip install -q --python .venv/bin/python --reinstall --no-deps "$WHEEL"
chmod -R a+rX .venv 2>/dev/null || true
echo "$WHEEL"
