#!/usr/bin/env bash
# Builds the nodecell wheel (the _nodecell extension + the launcher binary) and
# installs it into .venv. Prints the wheel's path.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
# The launcher the wheel ships is linked statically: it starts a sandbox per pack,
# and a dynamically linked Rust binary spends a large part of a launch in the
# loader and libgcc_s's start-up (see `cargo xtask bench launch --static`); it
# also runs on any glibc. `cargo build --release` keeps making the dynamic
# target/release/nodecell.
TRIPLE="$(uname -m)-unknown-linux-gnu"
mkdir -p pyshim/python/nodecell/bin
if RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/static \
   cargo build --release -q -p nodecell --bin nodecell --target "$TRIPLE"; then
  install -m 0755 "target/static/$TRIPLE/release/nodecell" pyshim/python/nodecell/bin/nodecell
else
  echo "build-wheel: the static launcher did not build; shipping the dynamic one" >&2
  cargo build --release -q -p nodecell
  install -m 0755 target/release/nodecell pyshim/python/nodecell/bin/nodecell
fi
rm -f target/wheels/nodecell-*.whl
PYO3_PYTHON="$REPO/.venv/bin/python" .venv/bin/maturin build --release --quiet -m pyshim/Cargo.toml \
  --interpreter .venv/bin/python -o target/wheels >/dev/null
WHEEL="$(ls target/wheels/nodecell-*.whl | head -1)"
.venv/bin/uv pip install -q --python .venv/bin/python --reinstall --no-deps "$WHEEL"
chmod -R a+rX .venv 2>/dev/null || true
echo "$WHEEL"
