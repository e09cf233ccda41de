"""EvoPress scoring on a Ray cluster (`--cluster local:N | ray://HOST:PORT | auto`).

The driver (the search job) draws every candidate and every token sample, as it does
locally; only scoring goes out. A stage's scoring is cut into units — one batch of pool
windows × a run of candidates — and a pool of Ray actors scores them, one unit per actor
at a time. Each actor holds its own copy of the model, assembles candidates from the
variant database, and reads the dense targets of the unit's windows.

Same answer: `CandidateScorer.totals` gives a candidate's KL sum on a batch of windows
independently of the other candidates scored with it, so units can go anywhere in any
order; `mean_kl` then adds the batch sums in batch order from 0.0, the very float
operations a local run performs. With the same kernels (same device type, dtype and CPU
thread count) the fitness is bit-identical, and the plan with it.

Storage: the database and the dense targets reach the actors through the run directory,
which must be on storage every node mounts at the same path (on one machine: trivially).
Not the object store, because (1) the database is already on disk, written block by block
and resumable, and an actor needs only the variants its candidates use, read lazily through
safetensors' memory map, while the object store would copy all of it into every node's
shared memory (an 8B model's database at five levels is ~25 GB; full-vocabulary dense targets
for the reference preset are 64 windows × 2048 tokens × 128k × 4 bytes ≈ 67 GB); (2) files
outlive the driver: a resumed driver re-opens them, nothing is re-sent.

Faults: an actor that dies (its process, its node) loses the unit it held; the unit goes
back to the queue for another actor, a `log` event says so (`cluster: "actor_lost"`), and the
stage goes on. Only when no actor is left does the search stop (resumable from its
generation checkpoint). Cancel: the driver polls its cancel token while it waits, tells
every actor to stop (a separate concurrency group, so the call reaches an actor that is
busy scoring), and each actor stops between candidates.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..errors import BadInput, BitsmithError, Cancelled

if TYPE_CHECKING:
    import torch

    from ..events import Emitter
    from .fitness import DenseTargets
    from .genome import Genome

INSTALL_HINT = "install the cluster extra: pip install 'bitsmith[cluster]' (or leave --cluster out)"
POLL_S = 0.2            # the driver checks its cancel token this often while actors score
CANCEL_WAIT_S = 10.0    # how long a cancel waits for the actors to hand their units back


# --- the address -------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterAddress:
    """`local:N` (a private Ray instance on this machine, N actors), `ray://HOST:PORT` (Ray
    Client to a running cluster) or `auto` (the cluster this machine belongs to)."""

    kind: str                      # local | client | auto
    text: str                      # as the user wrote it
    actors: int | None = None      # local:N
    host: str = ""
    port: int = 0


def parse_cluster(text: str) -> ClusterAddress:
    text = text.strip()
    if text == "auto":
        return ClusterAddress("auto", text)
    if text.startswith("local:"):
        n = text[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise BadInput(f"--cluster {text}: N must be a positive whole number", "use e.g. --cluster local:2")
        return ClusterAddress("local", text, actors=int(n))
    if text.startswith("ray://"):
        host, _, port = text[len("ray://"):].rpartition(":")
        if not host or not port.isdigit():
            raise BadInput(f"--cluster {text} is not ray://HOST:PORT",
                           "use the head node's Ray Client address, e.g. ray://10.0.0.5:10001")
        return ClusterAddress("client", text, host=host, port=int(port))
    raise BadInput(f"--cluster {text!r} is not a cluster address",
                   "use local:N, ray://HOST:PORT or auto (or leave --cluster out to score in this process)")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInput("--cluster needs Ray, which is not installed", INSTALL_HINT) from None
    return ray


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
    """The ActorJob of a search (driver.Setup): the driver's model as it was loaded — its
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


# --- the session: connecting, sizing, pools ------------------------------------------------

def _lost_errors(ray: Any) -> tuple:
    ex = ray.exceptions
    return tuple(getattr(ex, n) for n in ("RayActorError", "WorkerCrashedError", "NodeDiedError",
                                          "ObjectLostError", "OutOfMemoryError") if hasattr(ex, n))


@contextmanager
def _ray_init_safely() -> Iterator[None]:
    """ray.init with the process's SIGTERM/SIGINT handlers kept (ray.init replaces SIGTERM's with
    an exit; the worker's cancels cooperatively), from an empty working directory: Ray puts the
    driver's working directory on every worker's sys.path, and from the repository root our
    kernels/ folder would shadow Hugging Face's `kernels`."""
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    cwd = os.getcwd()
    neutral = tempfile.mkdtemp(prefix="bitsmith-ray-")
    os.chdir(neutral)
    try:
        yield
    finally:
        os.chdir(cwd)
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)


def init_local_ray(num_cpus: int, **kwargs: Any) -> Any:
    """A private Ray instance on this machine (the `local:N` kind, and the tests'); no dashboard,
    and the actors' output kept off the driver's stdout (a worker's stdout carries events only)."""
    ray = import_ray()
    with _ray_init_safely():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, **kwargs)
    return ray


def _reachable(host: str, port: int, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to host:port opens; else why not (before Ray's 30 s client timeout)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__


def connect(address: ClusterAddress) -> tuple[Any, bool]:
    """(ray, whether this session started the instance); BadInput naming the address and the fix."""
    ray = import_ray()
    if address.kind == "client":
        why = _reachable(address.host, address.port)
        if why is not None:
            raise BadInput(f"cannot reach the Ray cluster at {address.text} ({why})",
                           "start its head with `ray start --head` (Ray Client listens on port 10001), check the "
                           "host, port and firewall, or use --cluster local:N")
    if ray.is_initialized():          # a caller's instance (tests, a notebook): use it, leave it running
        return ray, False
    if address.kind == "local":
        return init_local_ray(max(os.cpu_count() or 1, address.actors or 1)), True
    try:
        with _ray_init_safely():
            ray.init(address=address.text, log_to_driver=False, configure_logging=False)
    except (ConnectionError, TimeoutError, OSError, RuntimeError) as err:
        fix = ("start one with `ray start --head` or set RAY_ADDRESS, or use --cluster local:N"
               if address.kind == "auto" else "check that the cluster runs the same Ray version, or use --cluster local:N")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"cannot connect to the Ray cluster at {address.text}: {first}", fix) from None
    return ray, True


@dataclass(frozen=True)
class ActorShape:
    count: int
    num_cpus: int
    num_gpus: int

    def describe(self) -> str:
        each = "1 GPU" if self.num_gpus else f"{self.num_cpus} CPU core{'s' * (self.num_cpus > 1)}"
        return f"{self.count} scoring actor{'s' * (self.count > 1)}, {each} each"


def size_pool(address: ClusterAddress, resources: dict, nodes: int, threads: int | None,
              actors: int | None) -> ActorShape:
    """How many actors, with what: one GPU each when the cluster has GPUs; else CPU cores
    (`threads`, or the cores shared out). BadInput when they cannot fit the cluster."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    count = address.actors or actors or (gpus if gpus else nodes)
    if gpus:
        shape = ActorShape(count, 1, 1)
    else:
        shape = ActorShape(count, threads or max(1, cpus // max(1, count)), 0)
    if shape.count * shape.num_gpus > gpus or shape.count * shape.num_cpus > cpus:
        raise BadInput(f"the Ray cluster at {address.text} has {cpus} CPUs and {gpus} GPUs; "
                       f"{shape.describe()} do not fit",
                       "ask for fewer actors (--cluster local:N, --cluster-actors) or fewer --threads")
    return shape


class ClusterSession:
    """One connection for a search job; scoring pools made on it are kept for the job (a budget
    sweep's targets share one), and closed with it."""

    def __init__(self, address: ClusterAddress, emitter: "Emitter", threads: int | None = None,
                 actors: int | None = None) -> None:
        self.address = address
        self.emitter = emitter
        self.threads = threads
        self.actors = actors
        self.ray, self.owned = connect(address)
        self.pools: dict[tuple, ScoringPool] = {}
        resources = self.ray.cluster_resources()
        emitter.log(f"Ray cluster {address.text}: {len(self._alive_nodes())} node(s), "
                    f"{int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs")

    def _alive_nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def pool(self, job: ActorJob, check: Callable[[], None] | None = None) -> "ScoringPool":
        key = (job.database, job.targets, tuple(job.levels), job.batch_size, job.share_prefixes)
        if key not in self.pools:
            # the cluster's whole resources: actors wait (cancellably) for what others hold
            shape = size_pool(self.address, self.ray.cluster_resources(), len(self._alive_nodes()),
                              self.threads, self.actors)
            self.pools[key] = ScoringPool(self.ray, shape, job, self.emitter, check)
        return self.pools[key]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        if self.owned:
            self.ray.shutdown()


@contextmanager
def open_cluster(text: str | None, emitter: "Emitter", threads: int | None = None,
                 actors: int | None = None) -> Iterator[ClusterSession | None]:
    """The job's cluster session (None without --cluster), connected before any work starts."""
    if not text:
        yield None
        return
    session = ClusterSession(parse_cluster(text), emitter, threads, actors)
    try:
        yield session
    finally:
        session.close()


# --- the pool ----------------------------------------------------------------------------

@dataclass
class PoolStats:
    units: int = 0
    rescored_units: int = 0
    lost_actors: list[dict] = field(default_factory=list)
    cancelled_units: int = 0               # units an actor handed back unfinished on a cancel
    setup_seconds: float = 0.0


class ScoringPool:
    """Actors that score units; `score` has CandidateScorer's signature and counters."""

    def __init__(self, ray: Any, shape: ActorShape, job: ActorJob, emitter: "Emitter",
                 check: Callable[[], None] | None = None) -> None:
        self.ray = ray
        self.shape = shape
        self.batch_size = job.batch_size
        self.emitter = emitter
        self.lost = _lost_errors(ray)
        self.stats = PoolStats()
        self.forward_tokens = 0.0
        self.candidate_tokens = 0
        self.closed = False
        started = time.time()
        remote = ray.remote(concurrency_groups={"control": 1})(ScoringActor)
        job = ActorJob(**{**asdict(job), "threads": shape.num_cpus if not shape.num_gpus else job.threads})
        self.actors = [remote.options(num_cpus=shape.num_cpus, num_gpus=shape.num_gpus, max_restarts=0).remote()
                       for _ in range(shape.count)]
        self.alive = list(range(shape.count))
        emitter.stage("cluster_actors", "start")
        emitter.log(f"starting {shape.describe()}: each loads the model and opens the database")
        self.info = self._setup(job, check)
        emitter.stage("cluster_actors", "end")
        self.stats.setup_seconds = round(time.time() - started, 2)

    def _setup(self, job: ActorJob, check: Callable[[], None] | None) -> list[dict]:
        refs = {actor.setup.remote(job): i for i, actor in enumerate(self.actors)}
        info: list[dict] = [{}] * len(self.actors)
        try:
            while refs:
                ready, _ = self.ray.wait(list(refs), num_returns=1, timeout=POLL_S)
                if check is not None:
                    check()
                for ref in ready:
                    i = refs.pop(ref)
                    try:
                        out = self.ray.get(ref)
                    except self.lost as err:
                        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                        raise BitsmithError(f"scoring actor {i} was lost while loading the model ({first})",
                                            "check the cluster's memory (`ray status`), or ask for fewer actors") \
                            from None
                    if "error" in out:
                        raise BadInput(f"scoring actor {i}: {out['error']}",
                                       "every Ray node needs the same Bitsmith install and model, and the run "
                                       "directory on storage mounted at the same path")
                    info[i] = out
                    self.emitter.log(f"scoring actor {i} ready on {out['host']} ({out['device']}, "
                                     f"{out['threads']} threads, {out['seconds']:.1f} s)")
        except BaseException:
            self.close()
            raise
        return info

    def _lose(self, actor: int, unit: int, units: Sequence[Unit], err: BaseException) -> None:
        self.alive.remove(actor)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        lost = {"actor": actor, "host": self.info[actor].get("host"), "error": first}
        self.stats.lost_actors.append(lost)
        self.stats.rescored_units += 1
        self.emitter.emit("log", message=f"scoring actor {actor} on {lost['host']} was lost mid-stage ({first}); "
                          f"its {len(units[unit].members)} candidate(s) on {len(units[unit].rows)} window(s) are "
                          f"re-scored on the {len(self.alive)} actor(s) left",
                          cluster="actor_lost", actor=actor, candidates=len(units[unit].members),
                          actors_left=len(self.alive))

    def _cancel(self, inflight: dict) -> None:
        """Tell every live actor to stop between candidates; wait for the units they hold."""
        for i in self.alive:
            self.actors[i].cancel.options(concurrency_group="control").remote()
        if inflight:
            ready, _ = self.ray.wait(list(inflight), num_returns=len(inflight), timeout=CANCEL_WAIT_S)
            for ref in ready:
                try:
                    if self.ray.get(ref).get("cancelled"):
                        self.stats.cancelled_units += 1
                except Exception:       # an actor lost while stopping: nothing left to stop
                    pass
        self.closed = True

    def score(self, genomes: Sequence["Genome"], rows: Sequence[int],
              check: Callable[[], None] | None = None) -> list[float]:
        """Mean KL per token of each genome (per-layer genomes) over the pool windows `rows`."""
        if self.closed:
            raise RuntimeError("this scoring pool was cancelled or closed")
        units = plan_units(genomes, rows, self.batch_size, len(self.alive))
        pending = deque(range(len(units)))
        idle = list(self.alive)
        inflight: dict[Any, tuple[int, int]] = {}
        results: list[dict] = [{}] * len(units)
        while pending or inflight:
            while pending and idle:
                actor, unit = idle.pop(0), pending.popleft()
                inflight[self.actors[actor].score.remote(units[unit])] = (actor, unit)
            if not inflight:
                raise BitsmithError(f"every scoring actor on the Ray cluster was lost "
                                    f"({len(self.stats.lost_actors)} of {self.shape.count})",
                                    "check the cluster (`ray status`), then resume: bitsmith run RUN_DIR --resume")
            ready, _ = self.ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            if check is not None:
                try:
                    check()
                except Cancelled:
                    self._cancel(inflight)
                    raise
            for ref in ready:
                actor, unit = inflight.pop(ref)
                try:
                    out = self.ray.get(ref)
                except self.lost as err:
                    self._lose(actor, unit, units, err)
                    pending.appendleft(unit)
                    continue
                results[unit] = out
                self.forward_tokens += out["forward_tokens"]
                idle.append(actor)
        self.stats.units += len(units)
        batch_tokens = {unit.batch: result["tokens"] for unit, result in zip(units, results)}
        self.candidate_tokens += sum(batch_tokens.values()) * len(genomes)
        return combine_units(units, results, len(genomes))

    def summary(self) -> dict:
        return {"actors": self.shape.count, "num_cpus": self.shape.num_cpus, "num_gpus": self.shape.num_gpus,
                "hosts": sorted({i.get("host") for i in self.info if i}), **asdict(self.stats)}

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:         # already gone
                pass
        self.closed = True


__all__ = ["ClusterAddress", "parse_cluster", "plan_units", "combine_units", "UnitScorer", "TargetRows",
           "ScoringActor", "ActorJob", "ClusterSession", "ScoringPool", "open_cluster", "init_local_ray",
           "size_pool", "ActorShape"]
