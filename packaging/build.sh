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
.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    packaging/bitsmith-linux.spec
cp packaging/bitsmith.desktop resources/icons/bitsmith.svg resources/icons/bitsmith.png dist/bitsmith/
cp packaging/install-linux.sh dist/bitsmith/install.sh
echo "built: $ROOT/dist/bitsmith ($(du -sh dist/bitsmith | cut -f1))"
