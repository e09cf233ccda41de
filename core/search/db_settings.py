"""The variant database's identity: what every variant depends on besides its level, and
the format its files carry. Torch-free, and imported by the database, its block workers
(block_variants.py, cluster_database.py) and the propagated build alike."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

DB_FORMAT = "bitsmith-variant-db"
DB_VERSION = 1


@dataclass(frozen=True)
class DatabaseSettings:
    """Everything a variant depends on, besides the level (the database's identity)."""

    model: str            # model fingerprint (model_fingerprint)
    calib: str            # calibration text source
    windows: int
    seqlen: int
    seed: int
    group_size: int
    sym: bool
    damp: float = 0.1             # the quantize job's defaults, so variants match what it makes
    act_order: bool = True
    static_groups: bool = False
    clip: bool = True
    propagate_bits: int | None = None   # None: Hessians of the dense model (the reference); b: inputs
                                        # propagated through the model quantized at b (core/search/propagated.py)

    def key(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if not (k == "propagate_bits" and v is None)}
        doc = json.dumps({"format": DB_FORMAT, "version": DB_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


__all__ = ["DB_FORMAT", "DB_VERSION", "DatabaseSettings"]
