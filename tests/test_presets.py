"""Every shipped preset loads into a valid TrainConfig."""

from importlib import resources

import pytest

from reopold_agent.cli import build_parser, resolve_config

PRESETS = sorted(p.name[:-5] for p in resources.files("reopold_agent.configs").iterdir() if p.name.endswith(".yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_resolves(preset):
    args = build_parser().parse_args(["train", "--task", preset])
    config = resolve_config(args)
    assert config.task.name and config.train.steps >= 1


def test_default_preset_is_the_embedded_tool_math_run():
    config = resolve_config(build_parser().parse_args(["train", "--task", "tool_math"]))
    assert config.model.student is None and config.model.teacher is None
    assert config.objective.name == "reopold" and config.eval.num_problems >= 500
