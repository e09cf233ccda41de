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
shared memory (a database at five levels takes 5.4 bytes per weight — 570 MB for the default
model's 106M — so ~38 GB for an 8B model's 7B linear weights; full-vocabulary dense targets for
the reference preset are 64 windows × 2048 tokens × 128k × 4 bytes ≈ 67 GB); (2) files outlive
the driver: a resumed driver re-opens them, nothing is re-sent.

Faults: an actor that dies (its process, its node) loses the unit it held; the unit goes
back to the queue for another actor, a `log` event says so (`cluster: "actor_lost"`), and the
stage goes on. Only when no actor is left does the search stop (resumable from its
generation checkpoint). Cancel: the driver polls its cancel token while it waits, tells
every actor to stop (a separate concurrency group, so the call reaches an actor that is
busy scoring), and each actor stops between candidates.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..errors import BadInput, BitsmithError, Cancelled
from .cluster_units import ActorJob, ActorShape, ScoringActor, Unit, combine_units, plan_units

if TYPE_CHECKING:
    from ..events import Emitter
    from .cluster_database import RayBlocks
    from .db_settings import DatabaseSettings
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


def _init_local(num_cpus: int, dashboard: bool) -> Any:
    """ray.init of a new instance on this machine (address "local", even where `ray start` left
    a cluster address); the actors' output kept off the driver's stdout (a worker's stdout
    carries events only). Ray's context."""
    ray = import_ray()
    with _ray_init_safely():
        return ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=False,
                        configure_logging=False)


def init_local_ray(num_cpus: int) -> Any:
    """A private Ray instance without a dashboard (the `local:N` kind, and the tests'); ray."""
    _init_local(num_cpus, dashboard=False)
    return import_ray()


def init_local_ray_jobs(num_cpus: int) -> str:
    """A private Ray instance with its dashboard, which serves the Jobs API (core/submit.py): its URL."""
    return f"http://{_init_local(num_cpus, dashboard=True).dashboard_url}"


def reachable(host: str, port: int, timeout: float = 5.0) -> str | None:
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
        why = reachable(address.host, address.port)
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
               if address.kind == "auto" else
               "a cluster with token authentication (Ray's default for `ray start`) needs RAY_AUTH_MODE=token and "
               "its token (~/.ray/auth_token or RAY_AUTH_TOKEN) here; check that it runs the same Ray version")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"cannot connect to the Ray cluster at {address.text}: {first}", fix) from None
    return ray, True


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

    def database_blocks(self, settings: "DatabaseSettings", levels: Sequence[int],
                        check: Callable[[], None] | None = None) -> "RayBlocks":
        """A BlockQuantizer for the variant database: (block, level) tasks sized as the actors are."""
        from .cluster_database import RayBlocks

        shape = size_pool(self.address, self.ray.cluster_resources(), len(self._alive_nodes()),
                          self.threads, self.actors)
        return RayBlocks(self.ray, shape, settings, levels, self.emitter, check)

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
        if not genomes:
            return []
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


__all__ = ["ClusterAddress", "parse_cluster", "ClusterSession", "ScoringPool", "open_cluster", "init_local_ray",
           "init_local_ray_jobs", "size_pool", "ActorShape", "import_ray", "reachable"]
