"""The embedded default builder: deterministic, cached, atomic; exercised with a tiny recipe."""

import dataclasses

import torch

from transformers import AutoModelForCausalLM, AutoTokenizer

from reopold_agent import embedded
from reopold_agent.supervised import SupervisedConfig
from reopold_agent.tiny_models import TINY_SPECS


def _tiny_recipe():
    sft = SupervisedConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1)
    return dataclasses.replace(embedded.RECIPES["tool_math"], teacher_spec=TINY_SPECS["nano"],
                               student_spec=TINY_SPECS["nano"], teacher_sft=sft, student_sft=sft,
                               num_conversations=20)


def test_builds_once_then_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(embedded.RECIPES, "tool_math", _tiny_recipe())
    logs = []
    first = embedded.ensure_embedded_models("tool_math", tmp_path, log=logs.append)
    assert any("building" in line for line in logs)
    for path in (first.teacher, first.student):
        AutoModelForCausalLM.from_pretrained(path)
        assert AutoTokenizer.from_pretrained(path).get_vocab() == AutoTokenizer.from_pretrained(first.teacher).get_vocab()
    assert (first.teacher.parent / "COMPLETE").exists() and (first.teacher.parent / "build.json").exists()
    logs.clear()
    again = embedded.ensure_embedded_models("tool_math", tmp_path, log=logs.append)
    assert again == first and logs == []
    assert not [p for p in (tmp_path / "embedded").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_gold_conversations_are_solved_conversations():
    conv = embedded.gold_conversations("tool_math", count=2)[0]
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv[2]["content"].startswith("<tool_call>") and conv[4]["content"].startswith("\\boxed{")


def test_the_vision_language_recipe_builds_vl_checkpoints_through_both_stages(tmp_path, monkeypatch):
    from reopold_agent.vision.loading import is_vision_language, load_model, load_processor
    from reopold_agent.vision.tiny import TINY_VL_SPECS

    sft = SupervisedConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=1)
    recipe = dataclasses.replace(embedded.RECIPES["visual_qa"], teacher_spec=TINY_VL_SPECS["nano"],
                                 student_spec=TINY_VL_SPECS["nano"], alignment_sft=sft, teacher_sft=sft,
                                 student_sft=sft, num_conversations=6)
    monkeypatch.setitem(embedded.RECIPES, "visual_qa", recipe)
    logs = []
    built = embedded.ensure_embedded_models("visual_qa", tmp_path, log=logs.append)
    assert any("teacher alignment" in line for line in logs) and any("student sft" in line for line in logs)
    for path in (built.teacher, built.student):
        assert is_vision_language(path)
        load_model(path, dtype=torch.float32, role="student")
        processor = load_processor(path)
        assert processor.image_processor.merge_size == 2


def test_alignment_conversations_pair_the_zoomed_cell_with_its_colour():
    conv = embedded.alignment_conversations("visual_qa", count=3)[1]
    gold = embedded.gold_conversations("visual_qa", count=3)[1]
    assert [m["role"] for m in conv] == ["user", "assistant"]
    assert conv[1]["content"] == gold[-1]["content"].removeprefix("\\boxed{").removesuffix("}")
    zoomed = [p["image"] for p in gold[3]["content"] if p.get("type") == "image"][0]
    assert conv[0]["content"][0]["image"].tobytes() == zoomed.tobytes()
