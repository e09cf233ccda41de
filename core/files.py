"""File names and paths that several rooms read, spelled once.

Nothing heavy is imported here: the window reads these names without torch.
"""

from __future__ import annotations

from pathlib import Path

# Marks a native quantized checkpoint folder (RUN_DIR/quantized); quant/checkpoint.py writes it.
QUANT_MANIFEST = "bitsmith-quant.json"
QUANT_WEIGHTS = "bitsmith-weights.safetensors"    # its dense tensors and the layers' codes, scales, zeros

# WikiText-2's raw test split in the shared data folder beside the repository (core/ is two
# levels below it). Tests and benchmarks evaluate on it; DESIGN.md: never calibrate on it.
WIKITEXT_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
