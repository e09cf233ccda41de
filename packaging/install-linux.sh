#!/usr/bin/env bash
# Install the unpacked Bitsmith folder for the current user: a launcher in the
# applications menu and `bitsmith` on the PATH (~/.local/bin). Run it from the folder.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p ~/.local/bin ~/.local/share/applications ~/.local/share/icons/hicolor/scalable/apps
ln -sf "$HERE/bitsmith" ~/.local/bin/bitsmith
cp "$HERE/bitsmith.svg" ~/.local/share/icons/hicolor/scalable/apps/bitsmith.svg
sed "s|^Exec=.*|Exec=$HERE/bitsmith %F|" "$HERE/bitsmith.desktop" > ~/.local/share/applications/bitsmith.desktop
echo "Bitsmith installed: find it in your applications menu, or run 'bitsmith'."
