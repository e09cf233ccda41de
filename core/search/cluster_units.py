"""What a clustered EvoPress stage is cut into, and what each Ray actor runs (no Ray import here;
core/search/cluster.py sends the units out and gathers them).

A unit is one batch of pool windows (cut as the local scorer cuts them) × a run of
candidates. `UnitScorer` scores a unit on its own copy of the model, assembled from the
variant database, against the dense targets of just those windows, read from the run's
file; `combine_units` puts the units' KL sums back in batch order.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import BitsmithError, Cancelled

if TYPE_CHECKING:
    import torch

    from .fitness import DenseTargets
    from .genome import Genome


@dataclass(frozen=True)
class ActorShape:
    count: int
    num_cpus: int
    num_gpus: int

    def describe(self) -> str:
        each = "1 GPU" if self.num_gpus else f"{self.num_cpus} CPU core{'s' * (self.num_cpus > 1)}"
        return f"{self.count} scoring actor{'s' * (self.count > 1)}, {each} each"


# --- units: the pieces of a stage ---------------------------------------------------------

@dataclass
class Unit:
    """Candidates `members` (indices into the stage's genomes) on batch `batch` of its windows."""

    batch: int
    members: list[int]
    genomes: list[tuple[int, ...]]        # per-layer genomes of the members
    rows: list[int]                       # pool windows of the batch (sorted)


def plan_units(genomes: Sequence["Genome"], rows: Sequence[int], batch_size: int, actors: int) -> list[Unit]:
    """Batches of the sorted windows as the local scorer cuts them, × runs of candidates.

    Candidates are sorted first, so that those sharing their first blocks' levels share a
    unit and their prefixes (a genome lists block 0's layers first). A stage is cut into
    about two units per actor, so that a slow or lost actor holds up little."""
    rows = sorted(rows)
    batches = [rows[s: s + batch_size] for s in range(0, len(rows), batch_size)]
    order = sorted(range(len(genomes)), key=lambda m: tuple(genomes[m]))
    runs = max(1, min(len(order), math.ceil(2 * actors / max(1, len(batches)))))
    cuts = [round(i * len(order) / runs) for i in range(runs + 1)]
    chunks = [order[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    return [Unit(b, chunk, [tuple(genomes[m]) for m in chunk], batch)
            for b, batch in enumerate(batches) for chunk in chunks]


def combine_units(units: Sequence[Unit], results: Sequence[dict], n_genomes: int) -> list[float]:
    """Each unit's KL sums into [batch][genome], then the means as the local scorer takes them."""
    from .fitness import mean_kl

    n_batches = max(u.batch for u in units) + 1
    kl = [[math.nan] * n_genomes for _ in range(n_batches)]
    tokens = [0] * n_batches
    for unit, result in zip(units, results):
        tokens[unit.batch] = result["tokens"]
        for m, value in zip(unit.members, result["kl"]):
            kl[unit.batch][m] = value
    return mean_kl(kl, tokens)


# --- what an actor runs ------------------------------------------------------------------

class TargetRows:
    """The dense targets file (checkpoint/dense-*.safetensors), read a batch of rows at a
    time through safetensors' memory map: an actor holds only its unit's windows."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        self._file = safe_open(str(self.path), framework="pt")
        self.names = set(self._file.keys())

    def rows(self, rows: Sequence[int]) -> "DenseTargets":
        """DenseTargets over just `rows` (sorted), in that order: row i of it is pool row rows[i]."""
        import torch

        from .fitness import DenseTargets

        def take(name: str) -> "torch.Tensor | None":
            if name not in self.names:
                return None
            whole = self._file.get_slice(name)
            return torch.cat([whole[r: r + 1] for r in rows])

        return DenseTargets(take("windows"), take("logp"), take("top_logp"), take("top_idx"))


class UnitScorer:
    """Scores units on one model: the body of each Ray actor (and of the in-process tests)."""

    def __init__(self, model: "torch.nn.Module", layers: Sequence, levels: Sequence[int], database: Any,
                 targets: TargetRows, batch_size: int, share_prefixes: bool) -> None:
        from .assemble import Assembler
        from .blocks import BlockRunner
        from .genome import SearchSpace

        self.assembler = Assembler(model, layers, SearchSpace.from_layers(layers, levels), database)
        self.runner = BlockRunner(model)
        self.blocks = [layer.block for layer in layers]
        self.targets = targets
        self.batch_size = batch_size
        self.share_prefixes = share_prefixes

    def score(self, unit: Unit, check: Callable[[], None] | None = None) -> dict:
        """{"kl": the members' KL sums on the unit's batch, "tokens": its tokens,
        "forward_tokens": full-model token equivalents computed}."""
        from .fitness import CandidateScorer

        if len(unit.rows) > self.batch_size:
            raise ValueError(f"a unit holds one batch of at most {self.batch_size} windows, got {len(unit.rows)}")
        scorer = CandidateScorer(self.runner, self.blocks, self.assembler.set_layer, self.targets.rows(unit.rows),
                                 self.batch_size, self.share_prefixes)
        kl, tokens = scorer.totals(unit.genomes, list(range(len(unit.rows))), check)
        return {"kl": kl[0], "tokens": tokens[0], "forward_tokens": scorer.forward_tokens}


@dataclass
class ActorJob:
    """What an actor needs to set itself up; every path is one the driver wrote."""

    model: dict                   # ModelSpec fields (source made absolute when it is a path)
    fingerprint: str              # model_fingerprint of the driver's model: the actor's must match
    layers: list[str]             # the driver's layer inventory, in order
    levels: list[int]             # the layer space's levels
    database: str                 # the variant database folder
    targets: str                  # the dense targets file
    cache_bytes: int
    batch_size: int
    share_prefixes: bool
    threads: int                  # torch CPU threads


def actor_job(setup: Any, levels: Sequence[int], db: Any, targets: Path) -> ActorJob:
    """The ActorJob of a search (setup.Setup): the driver's model as it was loaded — its
    dtype, so the actors compute what it would; a path source made absolute."""
    from ..model import model_fingerprint

    spec = setup.spec
    model = asdict(spec.model)
    source = Path(model["source"]).expanduser()
    if model["source"] != "default" and source.exists():
        model["source"] = str(source.resolve())
    model["dtype"] = str(setup.loaded.dtype).replace("torch.", "")
    model["device"] = "auto"             # the actor's own: its GPU when it has one
    return ActorJob(model=model, fingerprint=model_fingerprint(setup.model), layers=[l.name for l in setup.layers],
                    levels=list(levels), database=str(Path(db.folder).resolve()), targets=str(Path(targets).resolve()),
                    cache_bytes=int(spec.cache_gb * 2**30), batch_size=spec.batch_size,
                    share_prefixes=spec.share_prefixes, threads=spec.threads or 1)


class ScoringActor:
    """The Ray actor (made remote by the pool, so importing this module needs no Ray)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.scorer: UnitScorer | None = None

    def setup(self, job: ActorJob) -> dict:
        """Load the model, open the database and the targets; {"error": ...} instead of raising,
        so that the driver can say in one line what a node lacks."""
        import platform

        import torch

        started = time.time()
        try:
            torch.set_num_threads(job.threads)
            for name, path in (("variant database", Path(job.database) / "meta.json"),
                               ("dense targets", Path(job.targets))):
                if not path.is_file():
                    return {"error": f"node {platform.node()} cannot read the {name} at {path}"}
            from ..inventory import layer_inventory
            from ..jobs import ModelSpec
            from ..model import load_model, model_fingerprint
            from .database import open_database

            loaded = load_model(ModelSpec(**job.model))
            if model_fingerprint(loaded.model) != job.fingerprint:
                return {"error": f"node {platform.node()} loaded a different model from {job.model['source']}"}
            layers = layer_inventory(loaded.model)
            if [l.name for l in layers] != job.layers:
                return {"error": f"node {platform.node()} lists other linear layers in {job.model['source']}"}
            db = open_database(Path(job.database), job.cache_bytes, loaded.device)
            self.scorer = UnitScorer(loaded.model, layers, job.levels, db, TargetRows(Path(job.targets)),
                                     job.batch_size, job.share_prefixes)
        except BitsmithError as err:
            return {"error": f"node {platform.node()}: {err.one_line()}"}
        return {"host": platform.node(), "pid": os.getpid(), "device": str(loaded.device),
                "threads": torch.get_num_threads(), "seconds": round(time.time() - started, 2)}

    def _check(self) -> None:
        if self._stop.is_set():
            raise Cancelled()

    def score(self, unit: Unit) -> dict:
        assert self.scorer is not None, "setup first"
        try:
            return self.scorer.score(unit, self._check)
        except Cancelled:
            return {"cancelled": True}

    def cancel(self) -> None:
        """Runs in the `control` concurrency group, beside a `score` in progress."""
        self._stop.set()

    def probe(self) -> dict:
        """Where the actor runs and what it imports (tests: no repository root on sys.path)."""
        import sys

        import kernels  # Hugging Face's, which transformers imports

        return {"pid": os.getpid(), "sys_path": list(sys.path), "kernels": getattr(kernels, "__file__", None)}


__all__ = ["Unit", "plan_units", "combine_units", "TargetRows", "UnitScorer", "ActorJob", "actor_job", "ScoringActor"]
