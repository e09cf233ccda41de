"""The quantizer registry (core/quant/registry.py): every method is one file in
core/quant/methods/; validation, the CLI, the pipeline, the estimate and the window's method
menu read the registry. The last test drops a new method file in and finds it everywhere."""

from __future__ import annotations

import json
import os
import subprocess

from bitsmith.core.client import python_command
from bitsmith.core.quant.registry import quantizer, quantizer_names, used_by

# A complete method in one file, as a file in core/quant/methods/ would be (relative
# imports, torch imported inside): round-to-nearest on the symmetric grid, whatever the plan says.
TOY_METHOD = '''
"""toy: round-to-nearest on the symmetric grid."""

from ..registry import register_quantizer


@register_quantizer("toy", "symmetric round-to-nearest", calibrated=False, sequential=False,
                    uses=("block_size",))
def toy(W, H, layer, options):
    import torch

    from ..grid import quantize_rtn

    return quantize_rtn(W.to(torch.float32), layer.bits, layer.group_size, True), {"toy": True}
'''

USE_TOY = r'''
import json, sys
import bitsmith.core.quant.methods as methods
methods.__path__.append(sys.argv[1])

import torch
from bitsmith.core.cli import build_parser
from bitsmith.core.inventory import layer_inventory
from bitsmith.core.jobs import make_job
from bitsmith.core.pipeline import QuantizeOptions, quantize_model
from bitsmith.core.plan import PlanSpec, resolve_plan
from bitsmith.core.quant.registry import quantizer_names, used_by
from bitsmith.core.synthetic import tiny_model

found = {"names": quantizer_names(), "used_by": used_by()["block_size"],
         "cli": build_parser().parse_args(["quantize", "default", "--method", "toy"]).method,
         "job": make_job("quantize", method="toy", calib_windows=0).spec.method}
model = tiny_model("llama")
plan = resolve_plan(PlanSpec(bits=4, group_size=32), layer_inventory(model))
codes = quantize_model(model, plan, None, QuantizeOptions(method="toy"))
found["sym"] = all(qw.sym for qw in codes.values()) and len(codes) == 14

from PySide6.QtWidgets import QApplication
from bitsmith.app.spec_form import SpecForm
from bitsmith.core.quant.config import QuantizeSpec

app = QApplication([])
form = SpecForm(QuantizeSpec)
combo = form.widgets["method"]
found["menu"] = [combo.itemText(i) for i in range(combo.count())]
print("FOUND " + json.dumps(found))
'''


def test_methods_and_their_own_specs():
    assert quantizer_names() == ["gptq", "rtn", "rtn-mse"]
    gptq, rtn = quantizer("gptq"), quantizer("rtn")
    assert gptq.calibrated and gptq.sequential and gptq.clip == "on" and gptq.workspace == 5
    assert not rtn.calibrated and not rtn.sequential and rtn.clip == "off"
    assert used_by() == {"damp": ("gptq",), "act_order": ("gptq",), "static_groups": ("gptq",),
                         "block_size": ("gptq",), "true_sequential": ("gptq", "rtn-mse")}


def test_a_new_method_is_one_file(tmp_path):
    """toy.py alone: the registry lists it, the CLI and the quantize job accept it, the
    pipeline runs it, and the window's method menu offers it."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "toy.py").write_text(TOY_METHOD)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(python_command("-c", USE_TOY, str(tmp_path / "methods")), capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.split("FOUND ", 1)[1])
    assert found["names"] == ["gptq", "rtn", "rtn-mse", "toy"] == found["menu"]
    assert found["used_by"] == ["gptq", "toy"]
    assert found["cli"] == found["job"] == "toy" and found["sym"]
