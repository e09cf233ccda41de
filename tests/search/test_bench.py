"""The benchmark's bar check, on made-up numbers."""

from __future__ import annotations

from bitsmith.core.search.bench import _bar


def test_bar_checks_each_claim_and_leaves_missing_ones_open():
    results = {"database_seconds": {"None": 900.0}, "targets": {
        "3.0": {"uniform": {"ppl": 100.0}, "sensitivity": {"ppl": 90.0}, "spike": {"ppl": 99.0},
                "evopress": {"ppl": 84.0, "search_total_seconds": 1000.0, "eval_seconds": 100.0}},
        "2.5": {"evopress": {"ppl": 120.0, "search_total_seconds": 1500.0, "eval_seconds": 100.0}}}}
    bar = _bar(results)
    assert bar["evopress_3.0_le_0.85_uniform_3"] is True
    assert bar["evopress_3.0_below_sensitivity"] is True
    assert bar["spike_3.0_below_uniform_3"] is True
    assert bar["evopress_2.5_below_uniform_3"] is False
    assert bar["database_plus_slowest_search_seconds"] == 900.0 + 1400.0
    del results["targets"]["3.0"]["spike"]
    assert _bar(results)["spike_3.0_below_uniform_3"] is None
