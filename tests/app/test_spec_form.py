"""The job forms built from the engine's dataclass specs."""

from __future__ import annotations

from bitsmith.app.spec_form import SpecForm
from bitsmith.core.jobkinds.quantize import QuantizeSpec


def test_optional_bool_is_a_three_way_choice_that_defaults_to_the_engine(qtbot):
    """QuantizeSpec.clip is `bool | None`: None lets the engine decide (on for GPTQ, off for
    RTN); a plain checkbox would silently send False and turn GPTQ's range search off."""
    form = SpecForm(QuantizeSpec)
    qtbot.addWidget(form)
    assert form.values()["clip"] is None
    for value in (False, True, None):
        form.set_value("clip", value)
        assert form.values()["clip"] is value
