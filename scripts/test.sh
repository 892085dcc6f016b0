#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run), then the wall time per test group.
#
# With cargo-nextest (on every machine of this project's kind): the unit tests of the library and
# the binary, and the integration tests (one binary, tests/it/main.rs), each test in its own
# process, settings in .config/nextest.toml; then the doc tests (nextest does not run those); then
# scripts/test_times.py prints the seconds per group (module of tests/it, or the library's unit
# tests) from nextest's JUnit report. Without nextest: plain `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
if ! $CARGO nextest --version >/dev/null 2>&1; then
  echo "test: cargo-nextest not found; running cargo test (no per-group times)" >&2
  exec $CARGO test
fi
start=$(date +%s)
status=0
$CARGO nextest run --profile ci --no-fail-fast || status=$?
$CARGO test --doc || status=$?
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
# nextest keeps its reports under the workspace's target/nextest whatever CARGO_TARGET_DIR says
"$PY" scripts/test_times.py target/nextest/ci/junit.xml || true
echo "test: the suite took $(( $(date +%s) - start )) s"
exit $status
