"""EvoPress scoring on Ray (core/search/cluster.py, cluster_units.py): the same fitness however the stage is cut
and wherever it runs, lost actors, cancel, and the errors before any work.

The Ray tests share one local instance (`ray_local` in conftest.py: `ray.init(num_cpus=2)`, no
network) and skip when Ray is not installed; the rest need no Ray."""

from __future__ import annotations

import json
import random
import socket
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bitsmith.core.errors import BadInput, Cancelled
from bitsmith.core.events import Emitter
from bitsmith.core.inventory import layer_inventory
from bitsmith.core.jobs import ModelSpec, make_job
from bitsmith.core.model import load_model, model_fingerprint
from bitsmith.core.search.assemble import Assembler
from bitsmith.core.search.blocks import BlockRunner
from bitsmith.core.search.cluster import ActorShape, ScoringPool, parse_cluster, size_pool
from bitsmith.core.search.cluster_units import ActorJob, TargetRows, UnitScorer, combine_units, plan_units
from bitsmith.core.search.database import open_database
from bitsmith.core.search.fitness import CandidateScorer, dense_targets
from bitsmith.core.search.genome import SearchSpace

LEVELS = [2, 3, 4, 5, 6, 16]


@pytest.fixture(scope="module")
def scoring(db_run, tiny_llama, tmp_path_factory) -> dict:
    """The tiny Llama, its database, dense targets on 8 windows (also as the file actors read)."""
    loaded = load_model(str(tiny_llama))
    layers = layer_inventory(loaded.model)
    db = open_database(next(db_run.glob("database-*")))
    runner = BlockRunner(loaded.model)
    windows = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0))
    targets = dense_targets(runner, windows)
    path = tmp_path_factory.mktemp("targets") / "dense.safetensors"
    save_file({"windows": targets.windows.contiguous(), "logp": targets.logp.contiguous()}, str(path))
    space = SearchSpace.from_layers(layers, LEVELS)
    rng = random.Random(0)
    genomes = [tuple(rng.randrange(len(LEVELS)) for _ in layers) for _ in range(7)] + [space.uniform(3)] * 2
    return dict(loaded=loaded, layers=layers, db=db, runner=runner, targets=targets, path=path, genomes=genomes,
                fingerprint=model_fingerprint(loaded.model),     # before the local scorer swaps variants in
                local=CandidateScorer(runner, [l.block for l in layers], Assembler(loaded.model, layers, space, db).set_layer,
                                      targets, batch_size=2))


ROWS = [6, 1, 3, 0, 7]      # three batches of two windows, the last one short


# --- without Ray ---------------------------------------------------------------------------

def test_units_scored_anywhere_in_any_order_give_the_local_fitness(scoring, tiny_llama):
    local = scoring["local"].score(scoring["genomes"], ROWS)
    for share in (True, False):
        other = load_model(str(tiny_llama))      # another "actor": its own copy of the model
        layers = layer_inventory(other.model)
        worker = UnitScorer(other.model, layers, LEVELS, scoring["db"], TargetRows(scoring["path"]), 2, share)
        for actors in (1, 3):
            units = plan_units(scoring["genomes"], ROWS, 2, actors)
            assert {u.batch for u in units} == {0, 1, 2} and len(units) == 3 * min(9, -(-2 * actors // 3))
            order = list(range(len(units)))
            random.Random(actors).shuffle(order)
            results = {i: worker.score(units[i]) for i in order}
            assert combine_units(units, [results[i] for i in range(len(units))], len(scoring["genomes"])) == local
    assert local[-1] == local[-2] and min(local) > 0


def test_cluster_addresses_and_job_fields_are_checked(tiny_llama):
    assert parse_cluster("local:3").actors == 3
    assert (parse_cluster("ray://10.0.0.5:10001").host, parse_cluster("ray://10.0.0.5:10001").port) == ("10.0.0.5", 10001)
    assert parse_cluster("auto").kind == "auto"
    for bad in ("local:0", "local:x", "ray://host", "10.0.0.5:10001", "cluster"):
        with pytest.raises(BadInput):
            parse_cluster(bad)
    model = ModelSpec(str(tiny_llama))
    for fields in (dict(cluster="local:two"), dict(cluster="local:2", method="spike"),
                   dict(cluster="local:2", cluster_actors=2), dict(cluster_actors=2)):
        with pytest.raises(BadInput):
            make_job("search", model=model, **fields)
    make_job("search", model=model, cluster="ray://head:10001", cluster_actors=4)


def test_pool_size_follows_the_cluster():
    local2 = parse_cluster("local:2")
    assert size_pool(local2, {"CPU": 8.0}, 1, None, None) == ActorShape(2, 4, 0)
    assert size_pool(local2, {"CPU": 8.0, "GPU": 2.0}, 1, None, None) == ActorShape(2, 1, 1)
    assert size_pool(parse_cluster("auto"), {"CPU": 64.0, "GPU": 8.0}, 2, None, None) == ActorShape(8, 1, 1)
    assert size_pool(parse_cluster("auto"), {"CPU": 64.0}, 4, None, None) == ActorShape(4, 16, 0)
    with pytest.raises(BadInput, match="3 scoring actors, 1 GPU each do not fit"):
        size_pool(parse_cluster("local:3"), {"CPU": 8.0, "GPU": 2.0}, 1, None, None)
    with pytest.raises(BadInput, match="do not fit"):
        size_pool(local2, {"CPU": 2.0}, 1, 2, None)


def test_without_ray_the_cluster_flag_is_one_line(tiny_llama, tmp_path, capsys, monkeypatch):
    from bitsmith.core.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)        # `import ray` fails as when it is not installed
    code = main(["search", str(tiny_llama), "--cluster", "local:2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "bitsmith[cluster]" in err and "Traceback" not in err


def test_unreachable_cluster_is_one_line_before_any_work(tiny_llama, tmp_path, capsys):
    pytest.importorskip("ray")
    from bitsmith.core.cli import main
    from bitsmith.core.events import read_events

    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    code = main(["search", str(tiny_llama), "--cluster", f"ray://127.0.0.1:{port}", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and f"ray://127.0.0.1:{port}" in err and "ray start --head" in err and "Traceback" not in err
    events = read_events(run / "events.jsonl")
    assert [e for e in events if e["type"] == "error"]
    assert [e["stage"] for e in events if e["type"] == "stage"] == ["search"]     # the job began; no model load


# --- on a local Ray instance ------------------------------------------------------------------

def _pool(ray, scoring, tiny_llama, share_prefixes=True, batch_size=2) -> tuple[ScoringPool, list[dict]]:
    events: list[dict] = []
    job = ActorJob(model=dict(source=str(tiny_llama)), fingerprint=scoring["fingerprint"],
                   layers=[l.name for l in scoring["layers"]], levels=LEVELS, database=str(scoring["db"].folder),
                   targets=str(scoring["path"]), cache_bytes=1 << 30, batch_size=batch_size,
                   share_prefixes=share_prefixes, threads=1)
    return ScoringPool(ray, ActorShape(2, 1, 0), job, Emitter([events.append])), events


def test_clustered_search_gives_the_local_plan_and_fitness(ray_local, EVO, run_search, db_run, tiny_llama, tmp_path):
    common = dict(model=ModelSpec(str(tiny_llama)), method="evopress", target_bits=2.5, database=str(db_run), **EVO)
    code, local, _ = run_search(tmp_path / "local", **common)
    assert code == 0
    code, clustered, events = run_search(tmp_path / "cluster", cluster="local:2", **common)
    assert code == 0, [e for e in events if e["type"] == "error"]
    assert json.loads(local.plan_file.read_text())["layers"] == json.loads(clustered.plan_file.read_text())["layers"]
    a = json.loads(local.report_file.read_text())["evopress"]
    b = json.loads(clustered.report_file.read_text())["evopress"]
    assert [h["fitness"] for h in a["history"]] == [h["fitness"] for h in b["history"]]
    assert a["candidate_tokens"] == b["candidate_tokens"] and b["cluster"]["actors"] == 2
    assert b["cluster"]["units"] > 0 and not b["cluster"]["lost_actors"]
    # the checkpoint does not depend on where the scoring ran: either run resumes the other
    assert json.loads((local.checkpoint_dir / "search.json").read_text())["key"] == \
        json.loads((clustered.checkpoint_dir / "search.json").read_text())["key"]


def test_a_lost_actor_is_rescored_elsewhere_and_cancel_reaches_the_rest(ray_local, scoring, tiny_llama):
    pool, events = _pool(ray_local, scoring, tiny_llama)         # one pool: actors take seconds to start
    try:
        probe = ray_local.get(pool.actors[0].probe.remote())
        repo = str(Path(__file__).resolve().parents[2])
        assert repo not in probe["sys_path"] and "site-packages" in (probe["kernels"] or "site-packages")
        killed = []

        def kill_one_mid_stage() -> None:      # called while both actors hold a unit
            if not killed:
                ray_local.kill(pool.actors[1])
                killed.append(1)

        fitness = pool.score(scoring["genomes"], ROWS, kill_one_mid_stage)
        assert fitness == scoring["local"].score(scoring["genomes"], ROWS)
        lost = [e for e in events if e.get("cluster") == "actor_lost"]
        assert len(lost) == 1 and lost[0]["actor"] == 1 and lost[0]["actors_left"] == 1
        assert pool.stats.rescored_units == 1 and pool.alive == [0]

        # cancel: the actor left holds a unit of 800 candidates (about 2 s) when the driver is cancelled
        rng = random.Random(1)
        many = [tuple(rng.randrange(len(LEVELS)) for _ in scoring["layers"]) for _ in range(1600)]

        def cancelled() -> None:
            raise Cancelled()

        units = pool.stats.units
        with pytest.raises(Cancelled):
            pool.score(many, [0, 1], cancelled)
        # the unit in flight came back unfinished: the actor stopped between candidates
        assert pool.stats.cancelled_units == 1 and pool.stats.units == units
    finally:
        pool.close()
