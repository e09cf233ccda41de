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
