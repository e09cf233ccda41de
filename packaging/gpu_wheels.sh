#!/usr/bin/env bash
# Fetch into .whl/ the wheels the GPU check needs beyond what the lent GPU machine has;
# packaging/gpu_check.sh installs whatever .whl/ holds there, offline (pip --no-index).
#
#   bash packaging/gpu_wheels.sh                    # the check's own needs (see NEEDED)
#   bash packaging/gpu_wheels.sh gguf==0.19.0 ...   # extra pins, e.g. to run more tests there
#
# The GPU machine (no network): Python 3.12, torch 2.11.0+cu130, triton 3.6.0, transformers
# 5.17.0, accelerate 1.15, safetensors 0.8.0, tokenizers 0.23.2, sentencepiece, numpy, pytest,
# hypothesis, protobuf, psutil. Every import on the check's path is among them: the CPU
# rehearsal passes in a venv of those versions holding nothing else (BITSMITH_PYTHON=that
# venv's python). gguf, datasets, PySide6, pyqtgraph, pytest-qt, compressed-tensors and Hugging
# Face's `kernels` are imported only by other commands, lazily. So NEEDED is empty today and a
# plain run only says so; a dependency the check starts to need goes into NEEDED, pinned as in
# packaging/constraints.txt. The working tree plus .whl/ travel to that machine, 64 MiB at most.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"
LIMIT_MIB=32           # the tree itself needs room in the 64 MiB too
NEEDED=()
WANT=("${NEEDED[@]+"${NEEDED[@]}"}" "$@")

if [ "${#WANT[@]}" -eq 0 ]; then
    echo "The GPU check needs no wheel beyond what the GPU machine has; nothing fetched." >&2
    echo "(pass NAME==VERSION arguments to carry extra packages in .whl/)" >&2
    exit 0
fi

mkdir -p "$DEST"
# Binary wheels for CPython 3.12 on x86-64 Linux; pure-Python wheels match any platform.
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$DEST" "${WANT[@]}"

size_kib="$(du -sk "$DEST" | cut -f1)"
ls -l "$DEST" >&2
echo "$(ls "$DEST"/*.whl | wc -l) wheel(s), $((size_kib / 1024)) MiB in $DEST" >&2
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
    echo "error: .whl/ holds more than $LIMIT_MIB MiB; the tree and .whl/ must travel in 64 MiB." >&2
    echo "Fix: carry fewer packages (rm -r .whl and fetch again with fewer pins)." >&2
    exit 2
fi
