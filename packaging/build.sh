#!/usr/bin/env bash
# Build the Linux desktop bundle: dist/bitsmith/ with the window program `bitsmith`,
# the worker program `bitsmith-worker`, the .desktop entry, the icon and an installer.
# The torch inside is the one in .venv: a CPU build here; build in a CUDA venv
# (BITSMITH_TORCH=torch ./packaging/setup_env.sh on a GPU machine) for the CUDA variant.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./packaging/setup_env.sh
.venv/bin/python -m pip install -q --disable-pip-version-check "pyinstaller>=6.10"
# PyInstaller does not follow the editable install's package-dir mapping: stage a plain
# `bitsmith` package (namespace + core, kernels, app) for it to analyse.
STAGE="$ROOT/build/stage"
rm -rf "$STAGE" && mkdir -p "$STAGE/bitsmith"
cp packaging/namespace/__init__.py "$STAGE/bitsmith/"
for part in core kernels app; do
    cp -r "$part" "$STAGE/bitsmith/$part"
done
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
export BITSMITH_STAGE="$STAGE"
.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    packaging/bitsmith-linux.spec
cp packaging/bitsmith.desktop resources/icons/bitsmith.svg resources/icons/bitsmith.png dist/bitsmith/
cp packaging/install-linux.sh dist/bitsmith/install.sh
echo "built: $ROOT/dist/bitsmith ($(du -sh dist/bitsmith | cut -f1))"
