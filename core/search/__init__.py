"""Bit allocation: which bit-width each linear layer gets under an average-bits budget.

    genome.py      search space, budget arithmetic, budget-neutral mutation, the start
    selection.py   multi-stage elitist selection
    knapsack.py    the sensitivity baseline's DP over levels
    spike.py       spike scores (QFeM) and the spike-aware allocation
    database.py    the variant database (Hessians, variants on disk, lazy LRU)
    block_variants.py  one block's variants at every level, quantized here or elsewhere
    blocks.py      running a model block by block
    assemble.py    swapping variants into the model
    fitness.py     dense targets and KL scoring with shared block prefixes
    evopress.py    the EvoPress loop with checkpoint and resume
    presets.py     `reference` and `cpu`
    driver.py      the `search` job (core/jobkinds/search.py) step by step
    cluster*.py    --cluster: database tasks and candidate scoring on Ray
    bench.py       `bitsmith bench search`
"""
