"""`--method rtn-mse`: RTN with each group's range searched against diag(H), registered as a
quantizer in one file (core/quant/methods/rtn_mse.py)."""

import pytest
import torch

from bitsmith.core.cli import build_parser
from bitsmith.core.errors import BadInput
from bitsmith.core.events import Emitter, read_events
from bitsmith.core.jobs import make_job
from bitsmith.core.plan import LayerPlan
from bitsmith.core.pipeline import QuantizeOptions, quantize_layer
from bitsmith.core.quant.gptq import rel_error
from bitsmith.core.quant.grid import ClipConfig, quantize_rtn
from bitsmith.core.quant.registry import quantizer, quantizer_names, used_by
from bitsmith.core.rundir import RunDir
from bitsmith.core.runner import execute


def _layer(bits: int = 3, group_size: int = 32) -> LayerPlan:
    return LayerPlan(bits=bits, group_size=group_size, sym=False, keep=None, d_out=48, d_in=128)


def _weighted(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Σ_j H_jj (w_j − ŵ_j)² per row: the objective rtn-mse minimises group by group."""
    return (torch.diag(H) * (W - W_hat) ** 2).sum(dim=1)


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(400, 128, generator=g) * torch.rand(128, generator=g).pow(3) * 4   # skewed input scales
    W = torch.randn(48, 128, generator=g)
    W[:, ::17] *= 6                                                                   # outliers widen some ranges
    return W, 2 * X.t() @ X / 400


def test_registered_with_its_own_spec_and_in_every_menu():
    q = quantizer("rtn-mse")
    assert q.calibrated and q.sequential and q.clip == "always"
    assert "rtn-mse" in quantizer_names() and quantizer_names()[0] == "gptq"
    assert used_by()["true_sequential"] == ("gptq", "rtn-mse") and used_by()["damp"] == ("gptq",)
    args = build_parser().parse_args(["quantize", "default", "--method", "rtn-mse"])
    assert args.method == "rtn-mse"


def test_never_worse_than_rtn_on_its_objective_and_better_in_output_error():
    W, H = _problem()
    options = QuantizeOptions(method="rtn-mse", clip=ClipConfig(enabled=True))
    qw, fields = quantize_layer(W, H, _layer(), options)
    plain = quantize_rtn(W, 3, 32).dequantize()
    ours = qw.dequantize()
    assert fields == {}
    assert (_weighted(W, ours, H) <= _weighted(W, plain, H) + 1e-6).all()   # shrink 1 is a candidate
    assert rel_error(W, ours, H) < rel_error(W, plain, H)
    # the same grid as RTN: codes in range, one scale and zero per group
    assert qw.codes.max() <= 7 and qw.scales.shape == (48, 4)


def test_weights_columns_by_diag_h_not_uniformly():
    """The range that minimises the unweighted error differs once H says which columns matter."""
    W, H = _problem(1)
    weighted = quantize_layer(W, H, _layer(), QuantizeOptions(method="rtn-mse", clip=ClipConfig(enabled=True)))[0]
    uniform = quantize_rtn(W, 3, 32, clip=True).dequantize()
    assert not torch.equal(weighted.dequantize(), uniform)
    assert _weighted(W, weighted.dequantize(), H).sum() <= _weighted(W, uniform, H).sum()


def test_needs_calibration_and_its_range_search():
    with pytest.raises(BadInput, match="RTN-MSE needs calibration windows"):
        make_job("quantize", method="rtn-mse", calib_windows=0)
    with pytest.raises(BadInput, match="range search") as err:
        make_job("quantize", method="rtn-mse", clip=False)
    assert "--method rtn" in err.value.hint
    with pytest.raises(BadInput, match="unknown quantization method 'rtn-max'") as err:
        make_job("quantize", method="rtn-max")
    assert "rtn-mse" in err.value.hint
    assert make_job("quantize", method="rtn-mse").spec.clips
    with pytest.raises(ValueError, match="Hessian"):
        quantize_layer(*_problem()[:1], None, _layer(), QuantizeOptions(method="rtn-mse"))


def test_quantize_job_with_rtn_mse(tmp_run, tiny_llama):
    job = make_job("quantize", model={"source": str(tiny_llama)}, method="rtn-mse", calib="builtin",
                   calib_windows=4, seqlen=32, plan={"bits": 3, "group_size": 32})
    run = RunDir.create(tmp_run, job.to_dict())
    assert execute(run, Emitter()) == 0
    layers = [e for e in read_events(run.events_file) if e["type"] == "layer"]
    assert len(layers) == 14 and all(0 < e["rel_error"] < 0.5 for e in layers)
    assert run.read_report()["method"] == "rtn-mse"
