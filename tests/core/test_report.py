"""One `find_ppl` for every reader of a report (the export's model card, the window's history)."""

from __future__ import annotations

import pytest

from bitsmith.core.report import PPL_HOMES, find_ppl


def test_top_level_ppl_wins_and_carries_what_it_was_measured_on():
    report = {"ppl": 41, "data": "builtin-eval", "seqlen": 512, "windows": 16, "eval": {"ppl": 50.0}}
    assert find_ppl(report) == {"ppl": 41.0, "data": "builtin-eval", "seqlen": 512, "windows": 16}


@pytest.mark.parametrize("home", PPL_HOMES)
def test_every_home_is_searched(home):
    assert find_ppl({"method": "x", home: {"ppl": 7.5, "step": 3}}) == {"ppl": 7.5}


def test_homes_are_tried_in_order_and_searched_depth_first():
    assert find_ppl({"best": {"ppl": 2.0}, "eval": {"ppl": 1.0}}) == {"ppl": 1.0}
    assert find_ppl({"final": {"eval": {"ppl": 3.0, "data": "d"}}}) == {"ppl": 3.0, "data": "d"}


def test_no_perplexity():
    # a tune report names its checkpoint folder under "quantized": a string, not a block
    assert find_ppl({"quantized": "/runs/r/quantized", "before": {"ppl": 9.0}}) is None
    assert find_ppl(None) is None and find_ppl({}) is None


def test_the_common_core_of_every_report():
    from bitsmith.core.report import report_core

    budget = {"avg_code_bits": 3.0, "effective_bits": 3.5, "total_bytes": 10}
    search = {"model": {"source": "default"}, "budget": budget, "ppl": 62.1,
              "eval": {"data": "builtin-eval", "windows": 4, "seqlen": 512}}
    core = report_core(search)
    assert core.model == "default" and core.budget == budget and core.ppl == {"ppl": 62.1}
    tune = {"source": "r/quantized", "plan": {"budget": budget}, "best": {"ppl": 18.0, "step": 4}}
    assert report_core(tune).budget == budget and report_core(tune).ppl == {"ppl": 18.0}
    assert report_core(None) == report_core({}) and report_core({}).model is None
