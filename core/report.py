"""Reading a job's report: where it keeps the perplexity it measured.

Torch-free: the window's history and the export's model card both read it.
"""

from __future__ import annotations

from typing import Any

# Sub-reports that can hold a measured perplexity, tried in this order after the top level:
# a search's final `eval`, `after` tuning, a pipeline's `quantized` stage, a tune's `best`
# step, and the `final` / `evaluation` blocks of other reports.
PPL_HOMES = ("eval", "after", "quantized", "best", "final", "evaluation")
PPL_CONTEXT = ("data", "seqlen", "windows")     # what the number was measured on, when the report says


def find_ppl(report: Any) -> dict | None:
    """{'ppl': x, and 'data' / 'seqlen' / 'windows' where the same block gives them} for the
    perplexity a report holds: its top-level `ppl`, else the first one found in PPL_HOMES
    (searched depth first). None when the report measured none."""
    if not isinstance(report, dict):
        return None
    if isinstance(report.get("ppl"), (int, float)):
        return {"ppl": float(report["ppl"]), **{k: report[k] for k in PPL_CONTEXT if k in report}}
    for key in PPL_HOMES:
        found = find_ppl(report.get(key))
        if found:
            return found
    return None
