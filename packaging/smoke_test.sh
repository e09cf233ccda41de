#!/usr/bin/env bash
# Smoke-test the built bundle: start the frozen window offscreen, let it start the frozen
# worker on an `inspect` job for a tiny random Llama, and check the events that come back.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${1:-$ROOT/dist/bitsmith}"
[ -x "$BUNDLE/bitsmith" ] && [ -x "$BUNDLE/bitsmith-worker" ] || {
    echo "error: no bundle at $BUNDLE — build it first with packaging/build.sh" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
.venv/bin/python -c "from tests.tiny import save_tiny_model; save_tiny_model('$WORK/tiny-llama')"
QT_QPA_PLATFORM=offscreen BITSMITH_RUNS="$WORK/runs" HF_HUB_OFFLINE=1 \
    "$BUNDLE/bitsmith" --smoke-test "$WORK/tiny-llama" | tee "$WORK/verdict.json"
grep -q '"ok": true' "$WORK/verdict.json" && echo "smoke test passed"
