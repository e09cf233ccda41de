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


def test_method_menu_and_greyed_fields_come_from_the_quantizer_registry(qtbot):
    """The quantize page lists every registered method; a field only some methods read (GPTQ's
    damp) is disabled while another is chosen."""
    from bitsmith.app.strategies import USED_BY
    from bitsmith.core.quant.registry import quantizer_names

    form = SpecForm(QuantizeSpec)
    qtbot.addWidget(form)
    combo = form.widgets["method"]
    assert [combo.itemData(i) for i in range(combo.count())] == quantizer_names()
    assert form.values()["method"] == "gptq"
    form.set_used_by("method", USED_BY["quantize"])
    form.set_value("method", "rtn-mse")
    assert not form.widgets["damp"].isEnabled() and form.widgets["true_sequential"].isEnabled()
