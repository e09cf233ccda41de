"""Reading a job's report: the common core every report may carry (`ReportCore`: the model,
the bit budget, a perplexity with the data it was measured on), and where each job keeps it.

Torch-free: the window's history and the export's model card both read it.
"""

from __future__ import annotations

from dataclasses import dataclass
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


BUDGET_HOMES = (("budget",), ("plan", "budget"))   # quantize and search; a report holding its plan


@dataclass(frozen=True)
class ReportCore:
    """What every job's report says in the same words, each where the job has it."""

    model: str | None        # the model it ran on: report["model"]["source"]
    budget: dict | None      # plan.Budget.to_dict(): avg_code_bits, effective_bits, total_bytes, ...
    ppl: dict | None         # find_ppl: {"ppl", and "data" / "seqlen" / "windows" where said}


def find_budget(report: Any) -> dict | None:
    """The report's bit budget (plan.Budget.to_dict(), with avg_code_bits), or None."""
    for path in BUDGET_HOMES:
        value = report
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, dict) and isinstance(value.get("avg_code_bits"), (int, float)):
            return value
    return None


def report_core(report: Any) -> ReportCore:
    """The common core of any job's report (fields it lacks are None)."""
    model = report.get("model") if isinstance(report, dict) else None
    source = model.get("source") if isinstance(model, dict) else model if isinstance(model, str) else None
    return ReportCore(source, find_budget(report), find_ppl(report))
