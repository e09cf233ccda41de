"""Searches on a model kept home in bf16 (its blocks onloaded per call): the variant
database, its plan and the EvoPress fitness match the fp32 copy run resident."""

import json

import torch

from bitsmith.core.inventory import layer_inventory
from bitsmith.core.jobs import ModelSpec
from bitsmith.core.model import load_model
from bitsmith.core.search.assemble import Assembler
from bitsmith.core.search.blocks import BlockRunner
from bitsmith.core.search.database import open_database
from bitsmith.core.search.fitness import CandidateScorer, dense_targets
from bitsmith.core.search.genome import SearchSpace


def _errors(run) -> dict:
    meta = json.loads(next(run.path.glob("database-*/meta.json")).read_text())
    return meta["errors"]


def test_lean_database_and_plan_match_the_resident_run(run_search, tiny_bf16, tmp_path):
    bf16, fp32 = tiny_bf16["llama"]
    code, resident, _ = run_search(tmp_path / "fp32", model=ModelSpec(str(fp32), "cpu"), method="sensitivity",
                                   target_bits=3.0)
    assert code == 0
    code, disk, events = run_search(tmp_path / "disk", model=ModelSpec(str(bf16), "cpu", offload="disk"),
                                    method="sensitivity", target_bits=3.0)
    assert code == 0, [e for e in events if e["type"] == "error"]
    a, b = _errors(resident), _errors(disk)
    for name in a:
        for bits in a[name]:
            assert abs(a[name][bits] - b[name][bits]) <= 1e-5 * max(a[name][bits], 1e-6), (name, bits)
    ra, rb = resident.read_report(), disk.read_report()
    assert ra["bits"] == rb["bits"] and rb["model"]["offload"] == "disk"
    assert abs(ra["ppl"] - rb["ppl"]) < 2e-3 * ra["ppl"]      # variants rounded to bf16 in the lean model


def test_lean_fitness_matches_resident(db_run, tiny_bf16):
    """Candidates scored block by block on the lean model: same KL as on the fp32 model, up
    to the bf16 rounding of the swapped-in variants."""
    bf16, fp32 = tiny_bf16["llama"]
    db = open_database(next(db_run.glob("database-*")))
    windows = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    fitness = []
    for loaded in (load_model(ModelSpec(str(fp32), "cpu")),
                   load_model(ModelSpec(str(bf16), "cpu", offload="ram"), lean=True)):
        layers = layer_inventory(loaded.model)
        space = SearchSpace.from_layers(layers, [2, 3, 4, 16])
        runner = BlockRunner(loaded.model)
        assembler = Assembler(loaded.model, layers, space, db)
        scorer = CandidateScorer(runner, [l.block for l in layers], assembler.set_layer,
                                 dense_targets(runner, windows), batch_size=2)
        genomes = [space.uniform(2), space.uniform(3), tuple([1] * 7 + [3] * 7)]
        fitness.append(scorer.score(genomes, range(4)))
        assembler.restore()
        assert all(m.weight is d for m, d in zip(assembler.modules, assembler.dense))
    assert fitness[0][0] > fitness[0][1] > 0
    for a, b in zip(*fitness):
        assert abs(a - b) < 1e-2 * a


def test_targets_and_fitness_made_a_chunk_of_positions_at_a_time(db_run, tiny_llama, monkeypatch):
    """Large vocabularies: the dense targets (full and top-k) and the candidates' KL come out
    the same when the logits are made 5 positions at a time."""
    import bitsmith.core.search.fitness as fitness

    loaded = load_model(str(tiny_llama))
    layers = layer_inventory(loaded.model)
    space = SearchSpace.from_layers(layers, [2, 3, 4, 16])
    db = open_database(next(db_run.glob("database-*")))
    windows = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(1))
    genomes = [space.uniform(2), space.uniform(3)]
    results = []
    for budget in (fitness.LOGIT_BYTES, 5 * 4 * 512):             # whole batches, then 5 positions
        monkeypatch.setattr(fitness, "LOGIT_BYTES", budget)
        runner = BlockRunner(loaded.model)
        assembler = Assembler(loaded.model, layers, space, db)
        out = []
        for topk in (None, 8):
            targets = dense_targets(runner, windows, topk=topk, batch_size=2)
            scorer = CandidateScorer(runner, [l.block for l in layers], assembler.set_layer, targets, batch_size=2)
            out.append((targets, scorer.score(genomes, range(4))))
        assembler.restore()
        results.append(out)
    for (t_a, s_a), (t_b, s_b) in zip(*results):
        for name in ("logp", "top_logp"):
            a, b = getattr(t_a, name), getattr(t_b, name)
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-5))
        assert all(abs(x - y) <= 1e-5 * x for x, y in zip(s_a, s_b))
