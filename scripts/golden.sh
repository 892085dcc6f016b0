#!/usr/bin/env bash
# Behaviour fingerprint: runs reduced versions of pipelines/alice.toml, alice-taxonomy.toml (the
# layer-15 SAE, with prediction-error, variance-partition and Shapley stages) and
# natural-stories.toml (tests/fixtures/golden/*.toml) and compares the sha256 of every Parquet
# table they write with tests/fixtures/golden/SHA256SUMS.
#
#   scripts/golden.sh [--bin PATH] [--record] [--keep DIR]
#
# --bin     the cortexflow binary (default target/debug/cortexflow, built if missing)
# --record  write SHA256SUMS instead of comparing (do this only on a commit whose outputs are
#           the reference, and say so in the commit message)
# --keep    run in DIR and keep it (default: a temporary folder, removed afterwards)
#
# The `changes` log carries wall-clock times (unix_ms): its rows are hashed without that column.
# Exit 0 when every table matches, 1 with the differing tables listed otherwise.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/debug/cortexflow"
RECORD=0
KEEP=""
while [ $# -gt 0 ]; do
  case $1 in
    --bin) BIN=$(realpath "$2"); shift 2 ;;
    --record) RECORD=1; shift ;;
    --keep) KEEP=$2; shift 2 ;;
    *) echo "golden: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --bin cortexflow)
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "golden: $PY missing (run make setup)" >&2; exit 2; }
export CORTEXFLOW_DATA=$(realpath "${CORTEXFLOW_DATA:-$ROOT/../shared/data}")
if [ -n "$KEEP" ]; then WORK=$KEEP; mkdir -p "$WORK"; else WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; fi
cp "$ROOT"/tests/fixtures/golden/*.toml "$WORK/"
cd "$WORK"
for p in alice alice-taxonomy natural-stories; do
  echo "golden: cortexflow run $p.toml -w 2" >&2
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -o "$p.time" -f "%e s, peak RSS %M kB" "$BIN" run "$p.toml" -w 2 >"$p.log" 2>&1 ||
      { tail -20 "$p.log" >&2; echo "golden: $p failed" >&2; exit 1; }
    echo "golden: $p took $(cat "$p.time")" >&2
  else
    "$BIN" run "$p.toml" -w 2 >"$p.log" 2>&1 || { tail -20 "$p.log" >&2; echo "golden: $p failed" >&2; exit 1; }
  fi
done
"$PY" - "$WORK/out" >"$WORK/SHA256SUMS" <<'PY'
import hashlib, json, os, sys
import pyarrow.parquet as pq
root = sys.argv[1]
for dirpath, _, files in sorted(os.walk(root)):
    for f in sorted(files):
        if not f.endswith(".parquet"):
            continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, root)
        table = pq.read_table(path)
        if "unix_ms" in table.column_names:
            rows = table.drop(["unix_ms"]).to_pylist()
            digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
            rel += " (rows without unix_ms)"
        else:
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        print(f"{digest}  {rel}")
PY
echo "golden: $(wc -l <"$WORK/SHA256SUMS") tables" >&2
if [ "$RECORD" = 1 ]; then
  cp "$WORK/SHA256SUMS" "$ROOT/tests/fixtures/golden/SHA256SUMS"
  echo "golden: recorded tests/fixtures/golden/SHA256SUMS" >&2
  exit 0
fi
if diff -u "$ROOT/tests/fixtures/golden/SHA256SUMS" "$WORK/SHA256SUMS" >&2; then
  echo "golden: every table is byte-identical to the recorded run" >&2
else
  echo "golden: the tables above differ from tests/fixtures/golden/SHA256SUMS" >&2
  exit 1
fi
