"""Reading a user's prompts: the accepted line formats, file:line errors, exact match."""

from __future__ import annotations

import json

import pytest

from reopold_agent.tasks.data import TaskDataError
from reopold_agent.tasks.prompt_data import as_verdict, exact_match, load_prompt_items, prompt_item
from reopold_agent.tasks.spec import Verdict


def _write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def test_prompt_and_messages_lines_become_items(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        {"prompt": "2+2?", "answer": 4, "system": "Be brief.", "topic": "sums"},
        "",
        {"messages": [{"role": "user", "content": "Capital of France?"}], "answer": "Paris", "split": "eval",
         "reference": [{"role": "assistant", "content": "Paris"}]},
    ])
    first, second = load_prompt_items(path)
    assert first["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert (first["answer"], first["split"], first["reference"], first["topic"]) == ("4", "train", None, "sums")
    assert second["split"] == "eval" and second["reference"][0]["content"] == "Paris"
    assert prompt_item({"prompt": "hi"}, "x")["answer"] == ""


@pytest.mark.parametrize("line, reason", [
    ("{not json", r"p.jsonl:2: not valid JSON"),
    ("[1, 2]", r"p.jsonl:2: expected a JSON object, got list"),
    ({"answer": "1"}, r'p.jsonl:2: needs exactly one of "prompt" \(a string\) or "messages"'),
    ({"prompt": "a", "messages": []}, r'p.jsonl:2: needs exactly one of'),
    ({"prompt": "  "}, r'p.jsonl:2: "prompt" must be a non-empty string'),
    ({"prompt": "a", "answer": [1]}, r'p.jsonl:2: "answer" must be a string or a number, got list'),
    ({"prompt": "a", "split": "test"}, r"p.jsonl:2: \"split\" must be \"train\" or \"eval\", got 'test'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     r"p.jsonl:2: \"messages\" must end with a user message, got 'assistant'"),
    ({"messages": [{"role": "robot", "content": "a"}]}, r"p.jsonl:2: \"messages\"\[0\] has role 'robot'"),
    ({"messages": [{"role": "user", "content": 5}]}, r'p.jsonl:2: "messages"\[0\] needs a string content'),
    ({"prompt": "a", "reference": [{"role": "tool", "content": "3"}]},
     r"p.jsonl:2: \"reference\" must end with the assistant's final answer"),
    ({"prompt": "a", "system": 3}, r'p.jsonl:2: "system" must be a string'),
])
def test_a_bad_line_names_file_line_and_reason(tmp_path, line, reason):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(TaskDataError, match=reason):
        load_prompt_items(path)


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(TaskDataError, match="does not exist"):
        load_prompt_items(str(tmp_path / "none.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskDataError, match="has no items"):
        load_prompt_items(str(tmp_path / "empty.jsonl"))


def test_hf_source_without_datasets_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TaskDataError, match=r"hf:org/set:test: reading a Hugging Face dataset needs the datasets"):
        load_prompt_items("hf:org/set:test")


def test_hf_split_rows_are_checked_like_lines(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "my_prompts"  # a dataset folder as the hub or a user keeps it: a parquet split
    folder.mkdir()
    rows = datasets.Dataset.from_list([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}])
    rows.to_parquet(str(folder / "test.parquet"))
    items = load_prompt_items(f"hf:{folder}:test")
    assert [(i["messages"][-1]["content"], i["answer"]) for i in items] == [("a", "1"), ("b", "2")]
    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": ""}]).to_parquet(str(folder / "test.parquet"))
    with pytest.raises(TaskDataError, match=rf"hf:{folder}:test\[1\]: \"prompt\" must be a non-empty string"):
        load_prompt_items(f"hf:{folder}:test")
    with pytest.raises(TaskDataError, match="cannot load it"):
        load_prompt_items(f"hf:{tmp_path / 'absent'}")


def test_exact_match_reads_boxed_or_the_whole_reply():
    item = {"answer": "391"}
    assert exact_match(item, "so \\boxed{391.0}") == Verdict(1.0, "391.0", "correct")
    assert exact_match(item, " 391 ").reward == 1.0
    assert exact_match(item, "\\boxed{390}").reward == 0.0
    assert exact_match({"answer": "Paris"}, "paris.").reward == 1.0
    assert exact_match({"answer": ""}, "anything").reward == 0.0


def test_custom_verdicts_are_read():
    assert as_verdict(True).reward == 1.0 and as_verdict(0.5).reward == 0.5
    assert as_verdict(Verdict(0.0, "x")).extracted == "x"
    with pytest.raises(TypeError, match="got str"):
        as_verdict("yes")
