from dataclasses import dataclass, field
from typing import Literal

import pytest

from bitsmith.core.config import ConfigError, from_dict, to_dict


@dataclass
class Inner:
    name: str = "x"
    size: int = 1


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    mode: Literal["a", "b"] = "a"
    rate: float = 0.5
    limit: int | None = None
    tags: list[str] = field(default_factory=list)


def test_round_trip():
    obj = Outer(Inner("y", 3), "b", 2.0, 7, ["p", "q"])
    assert from_dict(Outer, to_dict(obj)) == obj


def test_int_accepted_as_float_but_not_bool_as_int():
    assert from_dict(Outer, {"rate": 1}).rate == 1.0
    with pytest.raises(ConfigError, match=r"cfg.inner.size must be an integer"):
        from_dict(Outer, {"inner": {"size": True}}, "cfg")


@pytest.mark.parametrize("doc, fragment", [
    ({"bogus": 1}, "unknown field(s) bogus"),
    ({"inner": {"nme": "x"}}, "cfg.inner has unknown field(s) nme"),
    ({"mode": "c"}, "cfg.mode must be one of 'a', 'b'"),
    ({"limit": "3"}, "cfg.limit must be"),
    ({"tags": "p"}, "cfg.tags must be a list"),
])
def test_errors_name_the_field(doc, fragment):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, doc, "cfg")
    assert fragment in err.value.message
