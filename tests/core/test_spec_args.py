"""CLI flags generated from job specs (core/spec_args.py)."""

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from bitsmith.core.config import setting, to_dict
from bitsmith.core.jobs import ModelSpec, make_job
from bitsmith.core.spec_args import add_spec_args, spec_values
from bitsmith.core.tune.config import TuneSpec


@dataclass
class _Spec:
    model: ModelSpec = field(default_factory=ModelSpec)
    method: str = setting("a", "which one", choices=lambda: ["a", "b"])
    keep: Literal[16, 8] = 8
    levels: list[int] = setting([2, 3], "bit-widths")
    share: bool = True
    topk: int | None = setting(128, "0: all", none_as=0)
    hidden: int = setting(1, cli=False)


def _parse(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_spec_args(parser, _Spec)
    return spec_values(_Spec, parser.parse_args(list(argv)))


def test_flags_defaults_and_types_come_from_the_fields():
    assert _parse() == {"method": "a", "keep": 8, "levels": [2, 3], "share": True, "topk": 128}
    assert _parse("--method", "b", "--keep", "16", "--levels", "4,5", "--no-share", "--topk", "0") == {
        "method": "b", "keep": 16, "levels": [4, 5], "share": False, "topk": None}
    with pytest.raises(SystemExit):
        _parse("--method", "c")            # choices from the metadata's callable
    with pytest.raises(SystemExit):
        _parse("--hidden", "2")            # cli: False


def test_list_defaults_are_not_shared():
    a, b = _Spec(), _Spec()
    a.levels.append(9)
    assert b.levels == [2, 3]


def test_the_tune_command_makes_the_default_job_and_keeps_its_old_flags():
    from bitsmith.core.cli import build_parser

    args = build_parser().parse_args(["tune", "ckpt"])
    job = make_job("tune", model=ModelSpec("ckpt"), **spec_values(TuneSpec, args))
    assert to_dict(job.spec) == to_dict(TuneSpec(model=ModelSpec("ckpt")))
    args = build_parser().parse_args(["tune", "ckpt", "--no-train-zeros", "--train-head", "--teacher-topk", "0",
                                      "--no-check-codes", "--micro-batch", "2"])
    values = spec_values(TuneSpec, args)
    assert (values["train_zeros"], values["train_head"], values["teacher_topk"], values["check_codes"],
            values["micro_batch"]) == (False, True, None, False, 2)


def test_the_quantize_command_makes_the_default_job():
    from bitsmith.core.cli import build_parser
    from bitsmith.core.quant.config import QuantizeSpec

    args = build_parser().parse_args(["quantize", "default"])
    values = spec_values(QuantizeSpec, args, skip=("plan", "calib_windows"))
    defaults = to_dict(QuantizeSpec())
    assert values == {k: v for k, v in defaults.items() if k in values} and "damp" in values
    args = build_parser().parse_args(["quantize", "default", "--no-act-order", "--clip", "--method", "rtn-mse"])
    values = spec_values(QuantizeSpec, args, skip=("plan", "calib_windows"))
    assert (values["act_order"], values["clip"], values["method"]) == (False, True, "rtn-mse")
