"""Bit allocation: which bit-width each linear layer gets under an average-bits budget.

    config.py      the `search` job's spec (torch-free; the job is core/jobkinds/search.py)
    registry.py    allocators register themselves; allocators/ holds one file each
                   (evopress, spike, sensitivity, fisher), all returning an Allocation
    setup.py       what every allocator works with (Setup) and the steps they share
    genome.py      search space, budget arithmetic, budget-neutral mutation, the start
    selection.py   multi-stage elitist selection
    knapsack.py    the sensitivity baseline's DP over levels
    spike.py       spike scores (QFeM) and the spike-aware allocation
    database.py    the variant database (Hessians, variants on disk, lazy LRU)
    db_settings.py what a variant depends on (the database's identity)
    block_variants.py  one block's variants at every level, quantized here or elsewhere
    blocks.py      running a model block by block
    assemble.py    swapping variants into the model
    fitness.py     dense targets and KL scoring with shared block prefixes
    evopress.py    the EvoPress loop with checkpoint and resume
    presets.py     EvoPress's settings (Preset), `reference` and `cpu`
    driver.py      database → allocation → plan.json, budget sweeps
    cluster*.py    --cluster: database tasks and candidate scoring on Ray
    bench.py       `bitsmith bench search`
"""
