"""The embedded default builder: deterministic, cached, atomic; exercised with a tiny recipe."""

import dataclasses

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
