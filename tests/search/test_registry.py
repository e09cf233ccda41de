"""The allocator registry (core/search/registry.py): every allocator is one file in
core/search/allocators/, returns one shape (an Allocation), and the search job's validation,
the CLI, the driver and the window's method menu read the registry. The last test drops a
new allocator file in and runs a search with it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bitsmith.core.client import python_command
from bitsmith.core.errors import BadInput
from bitsmith.core.jobs import make_job
from bitsmith.core.search.registry import allocator, allocator_names, used_by

# A complete allocator in one file, as one in core/search/allocators/ would be: every unit at
# the lowest level (within any budget the levels allow), measured with the variant database.
TOY_ALLOCATOR = '''
"""lowest: every unit at the lowest level."""

from ..registry import Allocation, register_allocator


@register_allocator("lowest", "every layer at the lowest level", uses=("spike_top_k",))
def lowest(setup, database):
    space = setup.unit_space(setup.spec.levels)
    db = database()
    return Allocation(space, tuple(0 for _ in space.names), db, {"lowest": {"units": len(space.names)}})
'''

USE_TOY = r'''
import json, sys
import bitsmith.core.search.allocators as allocators
allocators.__path__.append(sys.argv[1])

from bitsmith.core.cli import build_parser
from bitsmith.core.events import Emitter
from bitsmith.core.jobs import make_job
from bitsmith.core.plan import load_plan_file
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute
from bitsmith.core.search.registry import allocator_names, used_by

model, work = sys.argv[2:4]
args = build_parser().parse_args(["search", model, "--method", "lowest"])
job = make_job("search", model={"source": model}, method="lowest", target_bits=3.0, levels=[2, 3, 4],
               windows=2, seqlen=32, eval_windows=1, eval_seqlen=32, threads=1, budget="code")
run = RunDir.create(work, job.to_dict())
code = execute(run, Emitter())
plan = load_plan_file(run.plan_file)
found = {"names": allocator_names(), "used_by": used_by()["spike_top_k"], "cli": args.method, "code": code,
         "bits": sorted({e.bits for e in plan.entries.values()}), "report": run.read_report()["lowest"],
         "ppl": run.read_report()["ppl"] > 1}

from PySide6.QtWidgets import QApplication
from bitsmith.app.spec_form import SpecForm
from bitsmith.core.search.config import SearchSpec

app = QApplication([])
form = SpecForm(SearchSpec)
combo = form.widgets["method"]
found["menu"] = [combo.itemText(i) for i in range(combo.count())]
print("FOUND " + json.dumps(found))
'''


def test_allocators_and_their_own_specs():
    assert allocator_names() == ["evopress", "spike", "sensitivity", "fisher"]
    evopress, spike = allocator("evopress"), allocator("spike")
    assert evopress.min_levels == 2 and evopress.label == "EvoPress" and evopress.database
    assert not spike.database and used_by()["spike_keep_bits"] == ("spike",)
    assert used_by()["generations"] == ("evopress",)


def test_validation_reads_the_registry():
    with pytest.raises(BadInput, match="unknown search method 'genetic'") as err:
        make_job("search", method="genetic")
    assert "evopress, spike, sensitivity, fisher" in err.value.hint
    with pytest.raises(BadInput, match="EvoPress needs at least 2 levels"):
        make_job("search", method="evopress", levels=[3], target_bits=3.0)
    with pytest.raises(BadInput, match="the spike method does neither"):
        make_job("search", method="spike", cluster="local:2")
    with pytest.raises(BadInput, match="unknown preset 'gpu'"):
        make_job("search", preset="gpu")


def test_a_new_allocator_is_one_file(tiny_llama, tmp_path):
    """lowest.py alone: the registry lists it, the CLI and the search job accept it, the
    driver runs it and writes its plan and report, and the window's method menu offers it."""
    (tmp_path / "allocators").mkdir()
    (tmp_path / "allocators" / "lowest.py").write_text(TOY_ALLOCATOR)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(python_command("-c", USE_TOY, str(tmp_path / "allocators"), str(tiny_llama),
                                        str(tmp_path / "run")), capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.split("FOUND ", 1)[1])
    assert found["names"] == ["evopress", "spike", "sensitivity", "fisher", "lowest"] == found["menu"]
    assert found["used_by"] == ["spike", "lowest"] and found["cli"] == "lowest" and found["code"] == 0
    assert found["bits"] == [2] and found["report"] == {"units": 14} and found["ppl"]
