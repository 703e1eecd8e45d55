"""The configuration tree refuses every out-of-range value in one line naming the field, and
every value it accepts runs.

An exhaustive walk: every numeric field of ``TrainConfig`` (nested sections included) is set to
0, -1, NaN and infinity over the default preset, as a YAML file or ``--set`` would give it.
Each value is either refused with a one-line ``ConfigError`` that names the field by its dotted
path, or it is accepted, and then a one-step training run on tiny models with that value ends
with exit code 0 and no traceback.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from reopold_agent.cli import main, preset_path
from reopold_agent.config_loading import ConfigError, from_dict, load_yaml, set_nested
from reopold_agent.config_ranges import FieldError, Range, check_ranges, ranged
from reopold_agent.train_config import TrainConfig
from tests import tiny

PROBES = (0, -1, math.nan, math.inf)


def numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted name, int or float) of every numeric field under dataclass ``cls``."""
    out = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            out += numeric_fields(tp, f"{prefix}{field.name}.")
            continue
        kinds = [a for a in (typing.get_args(tp) or (tp,)) if a in (int, float)]
        if kinds:
            out.append((prefix + field.name, kinds[0]))
    return out


FIELDS = numeric_fields(TrainConfig)


def _build(name: str, value: float) -> TrainConfig:
    data = load_yaml(preset_path("tool_math"))
    set_nested(data, name.split("."), value)
    return from_dict(TrainConfig, data)


def _verdicts() -> tuple[list[tuple[str, float]], list[tuple[str, float, str]]]:
    accepted, refused = [], []
    for name, _ in FIELDS:
        for value in PROBES:
            try:
                _build(name, value)
            except ConfigError as exc:
                refused.append((name, value, str(exc)))
            else:
                accepted.append((name, value))
    return accepted, refused


ACCEPTED, REFUSED = _verdicts()


def test_the_walk_covers_every_section():
    sections = {name.split(".")[0] for name, _ in FIELDS}
    assert sections >= {"model", "rollout", "objective", "train", "eval", "sandbox"}
    assert {"rollout.vllm.gpu_memory_utilization", "objective.reopold.lam", "train.grad_clip",
            "sandbox.timeout_s", "eval.batch_episodes"} <= {name for name, _ in FIELDS}


@pytest.mark.parametrize("name, value, message", REFUSED, ids=[f"{n}={v}" for n, v, _ in REFUSED])
def test_a_refused_value_is_one_line_naming_the_field(name, value, message):
    assert "\n" not in message
    assert name in message, message


def test_non_finite_floats_and_the_issues_values_are_refused():
    refused = {(name, repr(value)) for name, value, _ in REFUSED}
    for name, kind in FIELDS:
        if kind is float:
            assert (name, "nan") in refused and (name, "inf") in refused, name
    for name, value in [("train.grad_clip", -1), ("train.grad_clip", 0), ("train.torch_threads", -1),
                        ("train.warmup_steps", -1), ("rollout.top_k", -1), ("eval.samples", 0),
                        ("eval.batch_episodes", 0), ("model.teacher_batch_rows", 0),
                        ("model.vocab_chunk_rows", 0), ("eval.num_problems", -1)]:
        assert (name, repr(value)) in refused, (name, value)


def test_messages_say_the_range():
    messages = {(name, repr(value)): message for name, value, message in REFUSED}
    assert messages[("train.grad_clip", "-1")] == "train.grad_clip must be > 0, got -1.0"
    assert messages[("train.lr", "nan")] == "train.lr must be a finite number > 0, got nan"
    assert messages[("train.torch_threads", "0")] == "train.torch_threads must be >= 1 or null, got 0"
    assert messages[("train.steps", "nan")] == "train.steps: expected int, got nan (float)"


def test_ranges_are_checked_on_direct_construction_too():
    with pytest.raises(FieldError, match="grad_clip must be > 0, got -1.0"):
        dataclasses.replace(TrainConfig().train, grad_clip=-1.0)


def test_range_descriptions_and_checks():
    @dataclasses.dataclass
    class Probe:
        share: float = ranged(0.5, gt=0, le=1)
        count: int | None = ranged(None, ge=1)
        free: float = 1.0

        def __post_init__(self):
            check_ranges(self)

    Probe(share=1.0, count=None, free=-3.0)
    assert Range(gt=0, le=1).describe() == "in (0, 1]" and Range(ge=1).describe() == ">= 1"
    assert Range(lt=2.5).describe() == "< 2.5"
    with pytest.raises(FieldError, match=r"share must be in \(0, 1\], got 0.0"):
        Probe(share=0.0)
    with pytest.raises(FieldError, match="count must be >= 1 or null, got 0"):
        Probe(count=0)
    with pytest.raises(FieldError, match="free must be a finite number, got inf"):
        Probe(free=math.inf)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny.save_tool_math_models(tmp_path_factory.mktemp("models"))


def _one_step(models, out, sets):
    student, teacher = models
    argv = ["train", "--task", "tool_math", "--student", str(student), "--teacher", str(teacher),
            "--steps", "1", "--output-dir", str(out),
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2", "--set", "train.mini_batches=1",
            "--set", "rollout.max_turn_tokens=12", "--set", "rollout.max_episode_tokens=160",
            "--set", "eval.num_problems=2", "--set", "eval.batch_episodes=4", "--set", "eval.teacher=false",
            "--set", "train.torch_threads=1"]
    for name, value in sets:
        argv += ["--set", f"{name}={value}"]
    return main(argv)


@pytest.mark.slow
@pytest.mark.parametrize("name, value", ACCEPTED, ids=[f"{n}={v}" for n, v in ACCEPTED])
def test_an_accepted_value_runs(models, tmp_path, capsys, name, value):
    """Every value the walk accepted trains a step and evaluates without a traceback."""
    assert _one_step(models, tmp_path / "run", [(name, value)]) == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err


def test_the_accepted_values_run_together(models, tmp_path, capsys):
    """One run with every accepted value at once (the slow test above runs them one by one);
    ``eval.num_problems=0`` turns evaluation off, so it gets a run of its own."""
    together = [(n, v) for n, v in ACCEPTED if n != "eval.num_problems"]
    assert together
    assert _one_step(models, tmp_path / "a", together) == 0, capsys.readouterr().err
    assert _one_step(models, tmp_path / "b", [("eval.num_problems", 0)]) == 0, capsys.readouterr().err


def test_a_refused_value_from_the_command_line_exits_2_in_one_line(capsys):
    for argv, message in [
        (["train", "--set", "train.grad_clip=-1"], "train.grad_clip must be > 0, got -1.0"),
        (["train", "--set", "train.lr=.nan"], "train.lr must be a finite number > 0, got nan"),
        (["train", "--set", "rollout.temperature=.inf"], "rollout.temperature must be a finite number >= 0"),
        (["eval", "--num-problems", "-3"], "eval.num_problems must be >= 0, got -3"),
        (["eval", "--samples", "0"], "eval.samples must be >= 1, got 0"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err == f"reopold-agent {argv[0]}: error: {message}" or (message in err and len(err.splitlines()) == 1), err

