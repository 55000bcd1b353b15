#!/usr/bin/env bash
# Runs every test nodecell has, on a fresh machine too: set-up, Rust unit and
# integration tests, the sandbox escape suite (root and rootless), the Python
# wheel's tests. Exit status is nonzero if anything failed.
#
# Two lanes run side by side after the set-up and `cargo fmt --check`:
#   Python lane (foreground): the wheel's release build, then pytest (the long pole:
#     it mostly waits on workers, Ray and venvs, so it leaves CPU free);
#   Rust lane (background, its own process group, log printed when it ends): the debug
#     build, the escape suite, cargo test, cargo clippy. Its builds run at nice 10, so
#     they take the CPU the wheel's build and pytest leave idle; the tests themselves
#     (cargo test's, the escape suite) run at normal priority.
# Slow checks that only re-prove what these prove live under `cargo xtask` (wheel-check:
# the sdist compiled into a wheel; pytest deselects its `xtask`-marked test here).
set -euo pipefail
export CARGO_INCREMENTAL=0  # one build per run here: incremental state only costs time and disk
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
export UV_CACHE_DIR="${UV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecell-dev/uv}"
export UV_PYTHON_DOWNLOADS=never
export PATH="$REPO/.venv/bin:$PATH"

# The Rust lane (scripts/test.sh --rust-lane, started below): runs every step even after
# one fails (a full report), prints each step's time as `lane-time <s> <name>`, exits 1
# if any step failed.
if [ "${1:-}" = --rust-lane ]; then
  set +e
  failed=""
  lane() {  # lane <name> <command...>
    local name="$1" t=$SECONDS rc; shift
    printf '\n\033[1m== [rust lane] %s\033[0m\n' "$name"
    "$@"; rc=$?
    echo "lane-time $((SECONDS - t)) $name (exit $rc)"
    [ "$rc" = 0 ] || failed+=" $name;"
  }
  lane "debug build (nodecell, xtask)" nice -n 10 cargo build -q -p xtask -p nodecell --bins
  lane "cargo xtask sandbox-test (escape suite, root and rootless)" cargo xtask sandbox-test
  lane "cargo test: build" nice -n 10 cargo test --workspace --no-run -q
  # Rust tests use .venv as a host environment: not while the wheel is being installed into it
  lane "cargo test: waiting for the wheel's install into .venv" \
    bash -c 'while [ ! -e "$NODECELL_TEST_WHEEL_DONE" ]; do sleep 2; done'
  lane "cargo test (unit + integration)" bash -c 'set -o pipefail; cargo test --workspace --no-fail-fast -q 2>&1 | tail -n 400'
  lane "gates: cargo clippy -D warnings" nice -n 10 cargo clippy --workspace --all-targets -q -- -D warnings
  [ -z "$failed" ] || { echo "rust lane: failed:$failed"; exit 1; }
  exit 0
fi

T0=$SECONDS
TLAST=$SECONDS
TIMES=""
LANE_PID=""
LANE_LOG="$(mktemp)"
# Prints a step's heading; the time the previous step took goes into the summary at the end.
step() {
  [ -n "${TNAME:-}" ] && TIMES+="$(printf '%6ss  %s' $((SECONDS - TLAST)) "$TNAME")"$'\n'
  TNAME="$*"; TLAST=$SECONDS
  printf '\n\033[1m== %s\033[0m\n' "$*"
}
summary() {
  local rc=$?
  if [ -n "$LANE_PID" ] && kill -0 "$LANE_PID" 2>/dev/null; then
    kill -- -"$LANE_PID" 2>/dev/null || true  # interrupted: the lane's whole process group
  fi
  step "time per step (exit status $rc)"
  printf '%s' "$TIMES"
  if [ -s "$LANE_LOG" ]; then
    sed -n 's/^lane-time \([0-9]*\) \(.*\)$/\1 \2/p' "$LANE_LOG" | while read -r s name; do
      printf '%6ss    [rust lane] %s\n' "$s" "$name"
    done
  fi
  printf '%6ss  total\n' $((SECONDS - T0))
  rm -f "$LANE_LOG" "$LANE_LOG.wheel-done"
}
trap summary EXIT

step "set-up"
NODECELL_SETUP_BUILD=0 scripts/setup.sh  # the tests below build what they run (debug binaries, the wheel)

step "gates: cargo fmt --check"
cargo fmt --all --check

step "Rust lane started (debug build, escape suite, cargo test, clippy; log below when it ends); the wheel's release build"
export NODECELL_TEST_WHEEL_DONE="$LANE_LOG.wheel-done"  # touched when build-wheel.sh has ended
setsid -w scripts/test.sh --rust-lane >"$LANE_LOG" 2>&1 &
LANE_PID=$!
# maturin build: the extension, the package and the static launcher
PY_RC=0
scripts/build-wheel.sh || PY_RC=$?
touch "$NODECELL_TEST_WHEEL_DONE"

if [ "$PY_RC" = 0 ]; then
  step "pytest (the wheel in a fresh venv, its sdist; a skip not on tests/python/skip_policy.py's list fails)"
  PYTEST_LOG="$(mktemp)"
  .venv/bin/python -m pytest -q -rs --durations=15 -m "not xtask" tests/python 2>&1 | tee "$PYTEST_LOG" || PY_RC=$?
fi

step "waiting for the Rust lane"
LANE_RC=0
wait "$LANE_PID" || LANE_RC=$?
LANE_PID=""
cat "$LANE_LOG"
if [ -n "${PYTEST_LOG:-}" ]; then
  # pytest's closing line last: the Rust lane's log came after it
  printf '\n\033[1m== pytest result (repeated from above)\033[0m\n'
  sed -n '/short test summary info/,$p' "$PYTEST_LOG" | tail -n 60
  grep -q 'short test summary info' "$PYTEST_LOG" || tail -n 1 "$PYTEST_LOG"
  rm -f "$PYTEST_LOG"
fi
[ "$LANE_RC" = 0 ] || echo "the Rust lane failed (exit $LANE_RC): see its log above"
[ "$PY_RC" = 0 ] || echo "the Python lane failed (exit $PY_RC)"
[ "$LANE_RC" = 0 ] && [ "$PY_RC" = 0 ]
