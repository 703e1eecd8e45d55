"""The embedded default builder: deterministic, cached, atomic; exercised with a tiny recipe."""

import dataclasses
import json

import pytest
import torch

from transformers import AutoModelForCausalLM, AutoTokenizer

from reopold_agent.demo import embedded
from reopold_agent.demo.measured_stop import EmbeddedBuildError
from reopold_agent.supervised import SupervisedConfig
from reopold_agent.demo.tiny_models import TINY_SPECS


def _tiny_recipe(**changes):
    sft = SupervisedConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1)
    changes = {"teacher_target": None, "student_target": None, "probe": None, **changes}
    return dataclasses.replace(embedded.RECIPES["tool_math"], teacher_spec=TINY_SPECS["nano"],
                               student_spec=TINY_SPECS["nano"], teacher_sft=sft, student_sft=sft,
                               num_conversations=20, **changes)


@pytest.fixture(scope="module")
def sandbox():
    from reopold_agent.sandbox import LocalSandbox, SandboxConfig, SandboxUnavailable

    try:
        box = LocalSandbox(SandboxConfig(timeout_s=5.0, warm_workers=2))
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace isolation unavailable on this machine: {exc}")
    yield box
    box.close()


def test_builds_once_then_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(embedded.RECIPES, "tool_math", _tiny_recipe())
    logs = []
    assert not embedded.is_built("tool_math", tmp_path)
    first = embedded.ensure_embedded_models("tool_math", tmp_path, log=logs.append)
    assert embedded.is_built("tool_math", tmp_path)
    assert any("building" in line for line in logs)
    for path in (first.teacher, first.student):
        AutoModelForCausalLM.from_pretrained(path)
        assert AutoTokenizer.from_pretrained(path).get_vocab() == AutoTokenizer.from_pretrained(first.teacher).get_vocab()
    assert (first.teacher.parent / "COMPLETE").exists() and (first.teacher.parent / "build.json").exists()
    logs.clear()
    again = embedded.ensure_embedded_models("tool_math", tmp_path, log=logs.append)
    assert again == first and logs == []
    assert not [p for p in (tmp_path / "embedded").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_the_shipped_tool_math_student_has_a_head_dim_vllm_accepts():
    recipe = embedded.RECIPES["tool_math"]
    assert recipe.student_spec.head_dim >= 32 and recipe.teacher_spec.head_dim >= 32


def test_targets_are_measured_on_real_probe_episodes_and_recorded(tmp_path, monkeypatch, sandbox):
    """Each role plays the probe problems through the environment and sandbox; build.json keeps it."""
    probe = embedded.AccuracyProbe(env_kwargs={"max_tool_rounds": 2}, num_problems=3,
                                   rollout=embedded.RolloutConfig(max_turn_tokens=4, max_episode_tokens=256,
                                                                  max_turns=2, temperature=0.0))
    target = embedded.AccuracyTarget(low=0.0, first_check=2, every=1, fine_every=1, max_steps=3)
    monkeypatch.setitem(embedded.RECIPES, "tool_math",
                        _tiny_recipe(teacher_target=target, student_target=target, probe=probe))
    logs = []
    built = embedded.ensure_embedded_models("tool_math", tmp_path, sandbox=sandbox, log=logs.append)
    report = json.loads((built.teacher.parent / "build.json").read_text())
    for role in ("teacher", "student"):
        assert report[role]["steps"] == 2 and report[role]["measurements"] == [[2, 0.0]]
        assert any(line.startswith(f"  {role}: step 2: 0.0% of the probe problems") for line in logs)
    assert report["machine"]["cpus"] >= 1 and report["teacher"]["threads"] == report["student"]["threads"] == 1


def test_a_recipe_with_targets_refuses_to_build_without_a_sandbox(tmp_path):
    with pytest.raises(ValueError, match="pass a sandbox"):
        embedded.ensure_embedded_models("tool_math", tmp_path)
    assert not (tmp_path / "embedded").exists() or not any((tmp_path / "embedded").iterdir())


def test_a_missed_band_leaves_nothing_in_the_cache(tmp_path, monkeypatch, sandbox):
    probe = embedded.AccuracyProbe(env_kwargs={}, num_problems=2,
                                   rollout=embedded.RolloutConfig(max_turn_tokens=2, max_turns=1, temperature=0.0))
    target = embedded.AccuracyTarget(low=1.0, first_check=1, every=1, fine_every=1, max_steps=2)
    monkeypatch.setitem(embedded.RECIPES, "tool_math", _tiny_recipe(teacher_target=target, probe=probe))
    with pytest.raises(EmbeddedBuildError, match="teacher reached only 0.0% greedy accuracy after 2 steps"):
        embedded.ensure_embedded_models("tool_math", tmp_path, sandbox=sandbox, log=lambda _: None)
    assert not embedded.is_built("tool_math", tmp_path)
    assert not any((tmp_path / "embedded").iterdir())


def test_gold_conversations_are_solved_conversations():
    conv = embedded.gold_conversations("tool_math", count=2)[0]
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv[2]["content"].startswith("<tool_call>") and conv[4]["content"].startswith("\\boxed{")


def test_the_vision_language_recipe_builds_vl_checkpoints_through_both_stages(tmp_path, monkeypatch, sandbox):
    """Both stages run for both roles, and each role stops by its accuracy on real visual_qa probe
    episodes (image prompt, zoom tool, the recipe's image size), recorded in build.json."""
    from reopold_agent.vision.loading import is_vision_language, load_model, load_processor
    from reopold_agent.demo.tiny_vl import TINY_VL_SPECS

    sft = SupervisedConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=1)
    shipped = embedded.RECIPES["visual_qa"]
    probe = dataclasses.replace(shipped.probe, num_problems=2,
                                rollout=dataclasses.replace(shipped.probe.rollout, max_turn_tokens=4))
    target = embedded.AccuracyTarget(low=0.0, first_check=2, every=1, fine_every=1, max_steps=2)
    recipe = dataclasses.replace(shipped, teacher_spec=TINY_VL_SPECS["nano"], student_spec=TINY_VL_SPECS["nano"],
                                 alignment_sft=sft, teacher_sft=sft, student_sft=sft, num_conversations=6,
                                 probe=probe, teacher_target=target, student_target=target)
    monkeypatch.setitem(embedded.RECIPES, "visual_qa", recipe)
    logs = []
    built = embedded.ensure_embedded_models("visual_qa", tmp_path, sandbox=sandbox, log=logs.append)
    assert any("teacher alignment" in line for line in logs) and any("student sft" in line for line in logs)
    report = json.loads((built.teacher.parent / "build.json").read_text())
    for role in ("teacher", "student"):
        assert report[role]["steps"] == 2 and report[role]["measurements"] == [[2, 0.0]]
        assert any(line.startswith(f"  {role}: step 2: 0.0% of the probe problems") for line in logs)
    for path in (built.teacher, built.student):
        assert is_vision_language(path)
        load_model(path, dtype=torch.float32, role="student")
        processor = load_processor(path)
        assert processor.image_processor.merge_size == 2


@pytest.mark.parametrize("task", sorted(embedded.RECIPES))
def test_every_embedded_recipe_stops_by_measurement_under_its_presets_conditions(task):
    """A fixed step count lands at different accuracies on other CPUs and library versions, so
    every shipped recipe stops each role by measured accuracy. The probe plays the episodes the
    preset plays: the same environment settings and turn budgets, greedily."""
    from reopold_agent.cli import build_parser, resolve_config

    recipe = embedded.RECIPES[task]
    assert recipe.teacher_target is not None and recipe.teacher_target.low >= 0.95
    band = recipe.student_target
    assert band is not None and 0 < band.low < band.high < recipe.teacher_target.low
    assert recipe.student_sft.stop_after is None  # the band decides where the student stops
    config = resolve_config(build_parser().parse_args(["train", "--task", task]))
    preset_env = {k: v for k, v in config.task.env_kwargs.items() if k not in ("eval_size",)}
    assert recipe.probe.env_kwargs == preset_env
    for field in ("max_turn_tokens", "max_episode_tokens", "max_turns"):
        assert getattr(recipe.probe.rollout, field) == getattr(config.rollout, field), field
    assert recipe.probe.rollout.temperature == 0.0


def test_alignment_conversations_pair_the_zoomed_cell_with_its_colour():
    conv = embedded.alignment_conversations("visual_qa", count=3)[1]
    gold = embedded.gold_conversations("visual_qa", count=3)[1]
    assert [m["role"] for m in conv] == ["user", "assistant"]
    assert conv[1]["content"] == gold[-1]["content"].removeprefix("\\boxed{").removesuffix("}")
    zoomed = [p["image"] for p in gold[3]["content"] if p.get("type") == "image"][0]
    assert conv[0]["content"][0]["image"].tobytes() == zoomed.tobytes()


def test_a_killed_builds_temp_folder_is_removed_by_the_next_build(tmp_path, monkeypatch):
    monkeypatch.setitem(embedded.RECIPES, "tool_math", _tiny_recipe())
    folder = embedded.embedded_folder("tool_math", tmp_path)
    left = folder.parent / f".{folder.name}-k1ll3d"  # what mkdtemp left when the build was killed
    (left / "teacher").mkdir(parents=True)
    (left / "teacher" / "model.safetensors").write_bytes(b"partial")
    other_recipe = folder.parent / ".visual_qa-0123456789ab-x"  # another recipe's build is not touched
    other_recipe.mkdir()
    embedded.ensure_embedded_models("tool_math", tmp_path, log=lambda m: None)
    assert not left.exists() and other_recipe.exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [".visual_qa-0123456789ab-x", folder.name]


def test_a_second_build_of_the_same_recipe_waits_and_uses_the_first(tmp_path, monkeypatch):
    """Two processes ask for the same models at once: one builds, the other waits for the lock
    and then finds the result, without training a second time."""
    import threading

    from reopold_agent.file_lock import FileLock

    monkeypatch.setitem(embedded.RECIPES, "tool_math", _tiny_recipe())
    folder = embedded.embedded_folder("tool_math", tmp_path)
    folder.parent.mkdir(parents=True)
    first = FileLock(folder.parent / f".{folder.name}.lock").acquire()  # the first build is running
    logs, result = [], []
    waiter = threading.Thread(target=lambda: result.append(
        embedded.ensure_embedded_models("tool_math", tmp_path, log=logs.append)))
    waiter.start()
    waiter.join(timeout=1.5)
    assert waiter.is_alive() and len(logs) == 1 and "is running; waiting for it to finish" in logs[0]
    # the first build finishes: its folder appears complete, then its lock is released
    staging = tmp_path / "staging"
    embedded.build_embedded(embedded.RECIPES["tool_math"], staging, log=lambda m: None)
    (staging / "COMPLETE").write_text("")
    staging.rename(folder)
    first.release()
    waiter.join(timeout=60)
    assert not waiter.is_alive() and result[0].student == folder / "student"
    assert not any("building" in line for line in logs)
