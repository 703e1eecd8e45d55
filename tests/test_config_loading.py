from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from reopold_agent.config_loading import ConfigError, from_dict, load_yaml, parse_override


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    name: Literal["a", "b"] = "a"
    path: str | None = None

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError("steps must be >= 0")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    tags: list[str] = field(default_factory=list)


def test_nested_build_and_int_to_float():
    cfg = from_dict(Outer, {"inner": {"lr": 1, "steps": 3}, "flag": True, "tags": ["x"]})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 3 and cfg.flag and cfg.tags == ["x"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"lrr": 1}}, "unknown config key 'inner.lrr'"),
        ({"inner": {"steps": "ten"}}, "inner.steps: expected int, got 'ten'"),
        ({"inner": {"steps": 2.5}}, "inner.steps: expected int"),
        ({"flag": "yes"}, "flag: expected bool"),
        ({"inner": {"name": "c"}}, "inner.name: expected one of 'a', 'b'"),
        ({"inner": {"steps": -1}}, "inner: steps must be >= 0"),
        ({"inner": 3}, "inner: expected a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert message in str(info.value)


def test_overrides_parse_yaml_values():
    assert parse_override("inner.lr=3e-4") == (["inner", "lr"], 3e-4)
    assert parse_override("flag=true") == (["flag"], True)
    assert parse_override("inner.path=null") == (["inner", "path"], None)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("inner.lr")


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(bad)
