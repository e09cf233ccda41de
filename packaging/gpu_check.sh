#!/usr/bin/env bash
# One prepared run that proves the CUDA path on a lent GPU machine; OUT/gpu-check.json holds
# every step's status, time and results (see core/gpu_check.py for the steps).
#
#   bash packaging/gpu_check.sh [--out DIR] [--budget-s S] [--only env,tests,...] [--keep-work]
#   bash packaging/gpu_check.sh --cpu-rehearsal --out /tmp/gpu-rehearsal   # the same, scaled down, here
#
# Offline by design (a GPU machine reaches no package registry) and with that machine's own
# torch, triton and transformers:
# - Python: $BITSMITH_PYTHON, else this repository's .venv for --cpu-rehearsal, else python3.
# - bitsmith is imported from a staging folder of symlinks put on PYTHONPATH, not installed:
#   an editable install needs setuptools in that environment (a Python 3.12 venv has none) and
#   writes into it; and the repository root itself must never be on sys.path (our kernels/
#   would shadow Hugging Face's `kernels`).
# - Wheels in .whl/ (packaging/gpu_wheels.sh fetches them) are installed into a temporary
#   folder first, with pip --no-index; without .whl/ nothing is installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REHEARSAL=0
for arg in "$@"; do
    [ "$arg" = "--cpu-rehearsal" ] && REHEARSAL=1
done
if [ -n "${BITSMITH_PYTHON:-}" ]; then
    PY="$BITSMITH_PYTHON"
elif [ "$REHEARSAL" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="python3"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/bitsmith-gpu-check.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# STAGE/bitsmith/{__init__.py, core, kernels, app, resources} -> the repository's folders,
# the same mapping as pyproject.toml's package-dir.
STAGE="$TMP/stage"
mkdir -p "$STAGE/bitsmith"
ln -s "$ROOT/packaging/namespace/__init__.py" "$STAGE/bitsmith/__init__.py"
for sub in core kernels app resources; do
    ln -s "$ROOT/$sub" "$STAGE/bitsmith/$sub"
done
PYPATH="$STAGE"

shopt -s nullglob
WHEELS=("$ROOT"/.whl/*.whl)
shopt -u nullglob
if [ "${#WHEELS[@]}" -gt 0 ]; then
    echo "[gpu-check] installing ${#WHEELS[@]} wheel(s) from .whl/ into $TMP/site (offline)" >&2
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --target "$TMP/site" "${WHEELS[@]}"
    PYPATH="$PYPATH:$TMP/site"
fi
export PYTHONPATH="$PYPATH${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ written into the repository's folders
# Compiled kernels and bitsmith's caches start empty (what a first run on a machine costs),
# and in a folder that is surely writable.
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$TMP/triton-cache}"
export BITSMITH_CACHE="${BITSMITH_CACHE:-$TMP/bitsmith-cache}"

echo "[gpu-check] $("$PY" --version 2>&1) at $(command -v "$PY" || echo "$PY"); bitsmith from $STAGE" >&2
# -P: the working directory stays off sys.path (see above).
"$PY" -P -m bitsmith.core.gpu_check --repo "$ROOT" --work "$TMP/work" "$@"
