"""The tuning loop in memory: micro-batching and gradient checkpointing change nothing, the
data order covers every window once per epoch, and the loss goes down."""

from __future__ import annotations

import copy

import torch

from bitsmith.core.inventory import layer_inventory, linear_weight
from bitsmith.core.quant.grid import quantize_rtn
from bitsmith.core.tune.config import TuneSpec
from bitsmith.core.tune.distill import build_teacher_cache
from bitsmith.core.tune.qlinear import install_tunable
from bitsmith.core.tune.run import enable_block_checkpointing
from bitsmith.core.tune.trainer import Tuner, batch_rows
from bitsmith.core.synthetic import tiny_model


def _setup(tmp_path, **spec_fields):
    teacher = tiny_model("llama", seed=0)
    with torch.no_grad():   # a random model is nearly uniform; make it confident so the error shows
        teacher.lm_head.weight.mul_(30)
    student = copy.deepcopy(teacher)
    names = [l.name for l in layer_inventory(student)]
    quantized = {n: quantize_rtn(linear_weight(student.get_submodule(n)), 3, 32) for n in names}
    layers = install_tunable(student, quantized, {n: None for n in names})
    windows = torch.randint(0, 512, (8, 24), generator=torch.Generator().manual_seed(0))
    dense = {f"dense.{n}": linear_weight(teacher.get_submodule(n)).detach() for n in names}
    cache = build_teacher_cache(tmp_path, teacher, {"calib": windows, "eval": windows[:2]}, topk=16,
                                batch_size=4, extra=dense)
    spec = TuneSpec(steps=3, batch=4, windows=8, seqlen=24, **spec_fields)
    return Tuner(student, layers, cache, spec, torch.device("cpu")), student


def test_batch_rows_cover_every_window_once_per_epoch():
    n, batch = 10, 4
    rows = [r for step in range(5) for r in batch_rows(step, batch, n, seed=3)]   # two epochs
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert rows[:10] != rows[10:20]                         # a fresh permutation per epoch
    assert batch_rows(2, batch, n, seed=3) == batch_rows(2, batch, n, seed=3)


def test_micro_batching_and_checkpointing_give_the_same_step(tmp_path):
    """The same steps up to float summation order (continuous: the result is smooth in the
    gradients; the V step's rounding is not, so PV is compared on its first loss only)."""
    whole, _ = _setup(tmp_path / "a", method="continuous")
    split, model = _setup(tmp_path / "b", method="continuous", micro_batch=1)
    enable_block_checkpointing(model)
    for _ in range(2):
        a, b = whole.train_step(), split.train_step()
        assert abs(a.loss - b.loss) < 1e-5 * max(1.0, abs(a.loss))
    for name in whole.layers:
        torch.testing.assert_close(whole.layers[name].scales, split.layers[name].scales, rtol=1e-4, atol=1e-7)
    pv_whole, _ = _setup(tmp_path / "c", method="pv")
    pv_split, _ = _setup(tmp_path / "d", method="pv", micro_batch=2)
    assert abs(pv_whole.train_step().loss - pv_split.train_step().loss) < 1e-5


def test_loss_goes_down_and_the_best_state_can_be_evaluated(tmp_path):
    tuner, _ = _setup(tmp_path, method="continuous", lr=1e-3)
    first = tuner.evaluate()              # the eval windows are among the training windows here
    losses = [tuner.train_step().loss for _ in range(6)]
    assert min(losses[3:]) < losses[0]
    later = tuner.evaluate()
    assert later["kl"] < first["kl"]
    assert set(later["layers"]) == set(tuner.layers) and all(v > 0 for v in later["layers"].values())


def test_checked_v_step_keeps_codes_only_when_the_next_windows_improve(tmp_path):
    """check_codes: after each step, either no code moved, or the loss on the next step's
    windows is lower with the new codes than with the old ones (same scales)."""
    tuner, _ = _setup(tmp_path, method="pv", code_lr=0.2, tau=0.05, check_codes=True)
    kept = rejected = 0
    for _ in range(4):
        codes_before = {n: l.codes.clone() for n, l in tuner.layers.items()}
        result = tuner.train_step()
        next_rows = batch_rows(tuner.step, tuner.spec.batch, len(tuner.calib), tuner.spec.seed)
        loss_new = float(tuner._token_losses(next_rows, tuner.spec.batch).mean())
        codes_after = {n: l.codes.clone() for n, l in tuner.layers.items()}
        for n, layer in tuner.layers.items():
            layer.codes.copy_(codes_before[n])
        loss_old = float(tuner._token_losses(next_rows, tuner.spec.batch).mean())
        for n, layer in tuner.layers.items():
            layer.codes.copy_(codes_after[n])
        moved = sum(int((codes_after[n] != codes_before[n]).sum()) for n in tuner.layers)
        assert moved == result.codes_changed
        if moved:
            kept += 1
            assert loss_new <= loss_old
        else:
            rejected += 1
    assert kept + rejected == 4


def test_code_change_must_beat_its_standard_error():
    from bitsmith.core.tune.trainer import code_change_helps

    noisy = torch.tensor([-1.0, 1.0] * 50) - 0.05      # mean -0.05, standard error 0.1
    assert code_change_helps(noisy, 0.0) and not code_change_helps(noisy, 2.0)
    assert code_change_helps(torch.full((10,), -0.01) + torch.arange(10) * 1e-4, 3.0)
    assert not code_change_helps(torch.zeros(8), 0.0)     # no change is no gain


def test_cancel_is_checked_between_forward_passes_inside_a_step(tmp_path):
    """A step of a real model takes tens of seconds on a CPU: the tuner checks between its
    micro-batches (and the V step's extra forwards), not only between steps."""
    from bitsmith.core.errors import Cancelled

    tuner, _ = _setup(tmp_path, method="pv", micro_batch=1)
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled()

    tuner.check = check
    try:
        tuner.train_step()
        raise AssertionError("the step ran to its end")
    except Cancelled:
        pass
    assert len(calls) == 2 and tuner.step == 0           # stopped after one of its 4 micro-batches
    calls.clear()
    tuner.check = lambda: calls.append(1)
    tuner.evaluate()
    assert len(calls) == 2                                 # evaluation: once per micro-batch of 2 windows
