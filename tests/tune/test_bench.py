"""The tune benchmark's summary: methods compared on their mean over seeds."""

import pytest

from bitsmith.core.tune.bench import row_key, summarize


def test_row_keys_keep_the_single_seed_names():
    assert row_key("pv", 3) == "pv@3"
    assert row_key("pv", 3, seed=2) == "pv#2@3"
    assert row_key("eora16", 2) == "eora16@2"


def test_summary_compares_means_over_seeds():
    rows = {"gptq3": {"ppl": 70.0},
            row_key("pv", 3): {"ppl": 52.0}, row_key("pv", 3, 1): {"ppl": 54.0},
            row_key("continuous", 3): {"ppl": 53.5}, row_key("continuous", 3, 1): {"ppl": 53.5},
            row_key("ste", 3): {"ppl": 52.5},
            row_key("ste", 3, 1): {"ppl": None},            # a failed run counts in no mean
            row_key("pv", 2): {"ppl": 300.0}, "gptq2": {"ppl": 400.0}}
    out = summarize(rows, 3, dense=30.0)
    assert out["pv_ppl"] == pytest.approx(53.0)
    assert out["pv_ppl_seeds"] == [52.0, 54.0]
    assert out["pv_ppl_std"] == pytest.approx(2 ** 0.5)
    assert out["pv_gap_closed"] == pytest.approx((70 - 53) / 40, abs=1e-4)
    assert out["ste_ppl"] == 52.5 and "ste_ppl_seeds" not in out
    assert out["bar"] == {"pv_closes_30pct": True, "pv_beats_ste": False, "pv_beats_continuous": True}
    assert "gptq_gap_closed" not in out and out["gptq_ppl"] == 70.0


def test_summary_without_pv_has_no_bar():
    out = summarize({"gptq3": {"ppl": 70.0}, "continuous@3": {"ppl": 60.0}}, 3, dense=None)
    assert out == {"gptq_ppl": 70.0, "dense_ppl": None, "continuous_ppl": 60.0}
