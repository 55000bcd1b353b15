#!/usr/bin/env bash
# Builds the nodecell wheel (the _nodecell extension + the launcher binary) and
# installs it into .venv. Prints the wheel's path.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
cargo build --release -q -p nodecell
mkdir -p pyshim/python/nodecell/bin
install -m 0755 target/release/nodecell pyshim/python/nodecell/bin/nodecell
rm -f target/wheels/nodecell-*.whl
PYO3_PYTHON="$REPO/.venv/bin/python" .venv/bin/maturin build --release --quiet -m pyshim/Cargo.toml \
  --interpreter .venv/bin/python -o target/wheels >/dev/null
WHEEL="$(ls target/wheels/nodecell-*.whl | head -1)"
.venv/bin/uv pip install -q --python .venv/bin/python --reinstall --no-deps "$WHEEL"
chmod -R a+rX .venv 2>/dev/null || true
echo "$WHEEL"
