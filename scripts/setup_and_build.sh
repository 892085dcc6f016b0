#!/usr/bin/env bash
# `make test`'s first step: the set-up (scripts/setup.sh: wheels, pip and apt, mostly waiting on
# the network and the disk) runs in the background while cargo builds the binary and the test
# binaries (the CPU). The set-up's log is printed when it has ended; if either fails, so does this.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$(date +%s)
bash scripts/setup.sh "$@" >"$log" 2>&1 &
setup_pid=$!
build=0
$CARGO build --bin cortexflow --tests || build=$?
built=$(date +%s)
setup=0
wait "$setup_pid" || setup=$?
cat "$log"
echo "setup+build: the build took $((built - started)) s, the set-up (beside it) ended at $(($(date +%s) - started)) s"
[ "$setup" = 0 ] || { echo "setup failed (exit $setup); see its log above" >&2; exit "$setup"; }
exit "$build"
