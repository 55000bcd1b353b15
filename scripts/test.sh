#!/usr/bin/env bash
# Runs every test nodecell has, on a fresh machine too: set-up, Rust unit and
# integration tests, the sandbox escape suite (root and rootless), the Python
# wheel's tests. Exit status is nonzero if anything failed.
set -euo pipefail
export CARGO_INCREMENTAL=0  # one build per run here: incremental state only costs time and disk
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
export UV_CACHE_DIR="${UV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecell-dev/uv}"
export UV_PYTHON_DOWNLOADS=never
export PATH="$REPO/.venv/bin:$PATH"

T0=$SECONDS
TLAST=$SECONDS
TIMES=""
# Prints a step's heading; the time the previous step took goes into the summary at the end.
step() {
  [ -n "${TNAME:-}" ] && TIMES+="$(printf '%6ss  %s' $((SECONDS - TLAST)) "$TNAME")"$'\n'
  TNAME="$*"; TLAST=$SECONDS
  printf '\n\033[1m== %s\033[0m\n' "$*"
}
summary() {
  local rc=$?
  step "time per step (exit status $rc)"
  printf '%s%6ss  total\n' "$TIMES" $((SECONDS - T0))
}
trap summary EXIT

step "set-up"
NODECELL_SETUP_BUILD=0 scripts/setup.sh  # the tests below build what they run (debug binaries, the wheel)

step "gates: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings

step "cargo test (unit + integration)"
cargo test --workspace --no-fail-fast -q 2>&1 | tail -n 400

# The escape suite mostly waits on sandboxes starting and ending; the wheel's release
# build mostly computes: they run side by side (the suite's log is shown when it ends).
step "cargo xtask sandbox-test (escape suite, root and rootless) beside the Python wheel's build"
cargo build -q -p xtask -p nodecell --bins
SUITE_LOG="$(mktemp)"
cargo xtask sandbox-test >"$SUITE_LOG" 2>&1 &
SUITE_PID=$!
# maturin build: the extension, the package and the static launcher
if ! scripts/build-wheel.sh; then
  wait "$SUITE_PID" || true
  cat "$SUITE_LOG"
  exit 1
fi
SUITE_RC=0
wait "$SUITE_PID" || SUITE_RC=$?
cat "$SUITE_LOG"
rm -f "$SUITE_LOG"
[ "$SUITE_RC" = 0 ] || { echo "cargo xtask sandbox-test failed (exit $SUITE_RC)"; exit "$SUITE_RC"; }

step "pytest (the wheel in a fresh venv, its sdist; a skip not on tests/python/skip_policy.py's list fails)"
.venv/bin/python -m pytest -q -rs --durations=15 tests/python
