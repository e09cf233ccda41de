#!/usr/bin/env bash
# Re-resolve every dependency to its newest release in a scratch environment (.venv-lock),
# run the whole suite there with ./test, and rewrite packaging/constraints.txt only if it
# passes. torch, triton, the NVIDIA/CUDA wheels and sympy/mpmath stay out of the lock: torch
# is chosen per machine, and those are pinned by the torch build a machine has.
# Extra arguments go to pytest (e.g. -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SCRATCH="$ROOT/.venv-lock"
LOCK="$ROOT/packaging/constraints.txt"

rm -rf "$SCRATCH"
echo "[lock] installing the newest releases into $SCRATCH and running the suite" >&2
if ! BITSMITH_VENV="$SCRATCH" BITSMITH_UNLOCKED=1 ./test "$@"; then
    echo "[lock] the suite failed on the newest releases: $LOCK is unchanged." >&2
    echo "[lock] Fix the failure (or exclude the broken release in pyproject.toml), then run again." >&2
    exit 1
fi

NEW="$(mktemp "$ROOT/packaging/.constraints.XXXXXX")"
{
    echo "# The versions the whole suite last passed with: packaging/setup_env.sh installs these."
    echo "# Written by packaging/update_lock.sh on $(date -u +%Y-%m-%d) with $("$SCRATCH/bin/python" --version)."
    echo "# Left out on purpose: torch, triton, nvidia-*/cuda-*, sympy, mpmath (chosen per machine with torch)."
    "$SCRATCH/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable \
        | grep -viE '^(torch|triton|nvidia-|cuda-|sympy|mpmath|pip|setuptools|wheel)([=<>~!@ ]|$)' \
        | sed -E 's/\+[A-Za-z0-9.]+$//' \
        | sort -f
} > "$NEW"
mv "$NEW" "$LOCK"
echo "[lock] the suite passed: rewrote $LOCK ($(grep -vc '^#' "$LOCK") packages)" >&2
