"""Components on the tiny models: block runner, multi-level GPTQ, scorer, spike scores."""

from __future__ import annotations

import torch

from bitsmith.core.inventory import layer_inventory
from bitsmith.core.quant.gptq import gptq_multi, gptq_quantize
from bitsmith.core.search.assemble import Assembler
from bitsmith.core.search.blocks import BlockRunner
from bitsmith.core.search.database import find_database, open_database, DatabaseSettings
from bitsmith.core.search.fitness import CandidateScorer, dense_targets
from bitsmith.core.search.genome import SearchSpace
from bitsmith.core.search.spike import choose_kept, spike_allocation, spike_scores
from bitsmith.core.synthetic import tiny_model


def test_block_runner_matches_the_model():
    for family in ("llama", "gpt2"):
        model = tiny_model(family)
        ids = torch.randint(0, 512, (2, 24))
        assert torch.allclose(BlockRunner(model).forward(ids), model(input_ids=ids, use_cache=False).logits, atol=1e-5)


def test_multi_level_gptq_equals_one_layer_at_a_time():
    torch.manual_seed(0)
    X = torch.randn(300, 128) * torch.rand(128) * 3
    X[:, 7] = 0                                          # a dead input
    H = X.t() @ X / 300
    weights = [torch.randn(40, 128), torch.randn(16, 128)]
    for act_order, clip in [(False, False), (True, True)]:
        out = gptq_multi(weights, H, [2, 3, 8], 32, act_order=act_order, static_groups=False, damp=0.1, clip=clip)
        for w, per_level in zip(weights, out):
            for bits, qw in zip([2, 3, 8], per_level):
                ref, _ = gptq_quantize(w, H, bits, 32, act_order=act_order, static_groups=False, damp=0.1, clip=clip)
                assert torch.equal(qw.codes, ref.codes) and torch.equal(qw.scales, ref.scales)
                assert torch.equal(qw.zeros, ref.zeros)


def _scorer_setup(db_run, tiny_llama, topk=None):
    from bitsmith.core.model import load_model

    loaded = load_model(str(tiny_llama))
    layers = layer_inventory(loaded.model)
    folder = next(db_run.glob("database-*"))
    db = open_database(folder)
    space = SearchSpace.from_layers(layers, [2, 3, 4, 5, 6, 16])
    runner = BlockRunner(loaded.model)
    windows = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    targets = dense_targets(runner, windows, topk=topk)
    assembler = Assembler(loaded.model, layers, space, db)
    return space, runner, targets, assembler, layers


def test_shared_prefixes_give_the_same_fitness_for_fewer_tokens(db_run, tiny_llama):
    space, runner, targets, assembler, layers = _scorer_setup(db_run, tiny_llama)
    blocks = [l.block for l in layers]
    base = space.uniform(3)
    late = list(base)
    late[-1] = 2                                           # differs only in block 1
    late2 = list(base)
    late2[-2] = 4
    dense = space.uniform(16)
    genomes = [base, tuple(late), tuple(late2), dense]
    shared = CandidateScorer(runner, blocks, assembler.set_layer, targets, batch_size=2)
    alone = CandidateScorer(runner, blocks, assembler.set_layer, targets, batch_size=2, share_prefixes=False)
    a = shared.score(genomes, [0, 1, 2, 3])
    b = alone.score(genomes, [0, 1, 2, 3])
    assert a == b
    assert abs(a[3]) < 1e-6 and a[0] > 0                   # the dense genome has zero KL
    assert shared.forward_tokens < alone.forward_tokens == alone.candidate_tokens
    # three candidates share block 0 (uniform 3): block 0 runs twice (3-bit, dense), not four times
    assert shared.forward_tokens == 4 * 32 * (2 + 4) / 2


def test_sparse_kl_is_a_lower_bound_that_closes_as_k_grows(db_run, tiny_llama):
    space, runner, full_t, assembler, layers = _scorer_setup(db_run, tiny_llama)
    blocks = [l.block for l in layers]
    g = [space.uniform(2)]
    full = CandidateScorer(runner, blocks, assembler.set_layer, full_t).score(g, [0, 1, 2, 3])[0]
    previous = 0.0
    for k in (16, 128, 511):                     # the vocabulary is 512
        assembler.restore()                      # targets come from the dense model
        sparse_t = dense_targets(runner, full_t.windows, topk=k)
        sparse = CandidateScorer(runner, blocks, assembler.set_layer, sparse_t).score(g, [0, 1, 2, 3])[0]
        assert previous - 1e-7 <= sparse <= full + 1e-7
        previous = sparse
    assert previous == __import__("pytest").approx(full, rel=1e-3)


def _plant_spike(model, block: int = 1, token: int = 7):
    """Token `token` writes a large value into one residual dimension that only it uses;
    block `block`'s MLP turns it into one huge intermediate channel: a spike at the input
    of that block's down_proj, on that token only."""
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 0.0
        emb[token, 0] = 50.0
        mlp = model.model.layers[block].mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[3].zero_()
            proj.weight[3, 0] = 20.0
        for layer in model.model.layers:                 # nothing else writes dimension 0
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()


def test_spike_detection_finds_the_planted_spike():
    model = tiny_model("llama")
    _plant_spike(model)
    layers = layer_inventory(model)
    names = [l.name for l in layers]
    windows = torch.randint(8, 512, (6, 40), generator=torch.Generator().manual_seed(1))
    windows[:, 5] = 7                                    # the spiking token once in every window
    scores = spike_scores(model, names, windows, batch_size=3)
    ranked = sorted(scores, key=lambda n: -scores[n])
    assert ranked[0] == "model.layers.1.mlp.down_proj"
    assert scores[ranked[0]] > 20 * scores[ranked[1]]
    kept = choose_kept(scores, 50.0, None)
    assert kept == ["model.layers.1.mlp.down_proj"]
    space = SearchSpace.from_layers(layers, [2, 3, 4, 16])
    # a 16-bit down_proj is 11% of this tiny model's weights: at 4 bits on average it fits
    alloc = spike_allocation(space, scores, 4.0, kept)
    bits = space.bits_map(alloc.genome)
    assert bits["model.layers.1.mlp.down_proj"] == 16 and space.fits(alloc.genome, 4.0)
    assert alloc.kept == kept and alloc.dropped == []
    # at 3 bits it does not fit even with everything else at 2: it is dropped, not overspent
    alloc = spike_allocation(space, scores, 3.0, kept)
    assert alloc.dropped == kept and max(space.bits(alloc.genome)) <= 4
