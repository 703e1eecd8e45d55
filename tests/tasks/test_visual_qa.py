"""Tests of tasks/visual_qa.py and the VisualQA-v0 environment (zoom tool)."""

import json

import pytest
from PIL import Image

from reopold_agent.envs import make_env
from reopold_agent.tasks import visual_qa
from reopold_agent.tasks.data import split_of
from reopold_agent.tool_protocol import render_tool_call


def scene_key(item):
    return json.dumps([item["scene"], item["question"]])


def test_splits_are_disjoint_and_deterministic():
    train = [visual_qa.make_item("train", i) for i in range(40)]
    evals = [visual_qa.make_item("eval", i) for i in range(40)]
    assert not {scene_key(it) for it in train} & {scene_key(it) for it in evals}
    assert {split_of(scene_key(it)) for it in evals} == {"eval"}
    again = visual_qa.make_item("eval", 3)
    assert again["image"].tobytes() == evals[3]["image"].tobytes()
    assert visual_qa.make_item("eval", 3, seed=1)["image"].tobytes() != again["image"].tobytes()
    assert {it["qtype"] for it in train} == {"count", "read"}


def test_answers_match_the_scene():
    for i in range(30):
        item = visual_qa.make_item("train", i)
        assert item["image"].size == (448, 448)
        shapes, boxes = item["scene"]["shapes"], item["scene"]["boxes"]
        x0, y0, x1, y1 = item["bbox"]
        if item["qtype"] == "count":
            color, kind = item["question"].split()[2], item["question"].split()[3][:-1]
            hits = [s for s in shapes if (s["color"], s["kind"]) == (color, kind)]
            assert item["answer"] == str(len(hits)) and hits
            assert all(x0 <= s["x"] - s["r"] and s["x"] + s["r"] <= x1 for s in hits)
        else:
            box = next(b for b in boxes if b["text"] == item["answer"])
            assert f"with the {box['color']} border" in item["question"]
            assert x0 <= box["box"][0] and box["box"][2] <= x1 and 7 <= box["font_px"] <= 8


@pytest.mark.parametrize("split, index", [("train", 0), ("train", 1), ("eval", 0), ("eval", 1)])
def test_gold_trajectory_earns_full_reward(play_gold, split, index):
    env = make_env("reopold_agent/VisualQA-v0", split=split)
    assert play_gold(env, options={"index": index}) == 1.0


def test_prompt_has_the_image_then_the_question():
    env = make_env("reopold_agent/VisualQA-v0")
    obs, info = env.reset(options={"index": 2})
    parts = obs[1]["content"]
    assert [p["type"] for p in parts] == ["image", "text"] and parts[0]["image"].size == (448, 448)
    assert parts[1]["text"].endswith("(The image is 448x448 pixels.)")
    assert "\\boxed{}" in obs[0]["content"] and info["qtype"] in ("count", "read")


def test_zoom_tool_outputs_and_errors():
    env = make_env("reopold_agent/VisualQA-v0", max_calls_per_turn=5)
    env.reset(options={"index": 0})
    action = (render_tool_call("zoom", {"bbox": [10, 20, 60, 40], "scale": 2})
              + render_tool_call("zoom", {"bbox": [-50, -50, 20, 10]})
              + render_tool_call("zoom", {"bbox": [30, 30, 30, 50]})
              + render_tool_call("zoom", {"bbox": [0, 0, 10, 10], "scale": 20})
              + render_tool_call("zoom", {"bbox": [0, 0, 10]}))
    obs, _, _, _, info = env.step(action)
    assert obs[0]["content"][0]["image"].size == (100, 40)
    assert obs[0]["content"][1]["text"] == "Zoomed into [10, 20, 60, 40] at 2.00x (100x40 px)."
    assert obs[1]["content"][1]["text"] == "Zoomed into [0, 0, 20, 10] at 8.00x (160x80 px)."
    assert obs[2]["content"].startswith("Error: bbox [30, 30, 30, 50] is empty")
    assert obs[3]["content"] == "Error: scale must be between 1 and 8, got 20"
    assert "must have between 4 and 4 items" in obs[4]["content"]
    assert info["error_kinds"] == ["bad_bbox", "bad_bbox", "bad_arguments"]


@pytest.mark.parametrize("text, reward", [
    ("\\boxed{4821}", 1.0), ("It says \\boxed{4,821}.", 1.0), ("\\boxed{4821.0}", 1.0),
    ("\\boxed{4812}", 0.0), ("4821", 0.0),
])
def test_verifier_numbers(text, reward):
    assert visual_qa.verify({"answer": "4821"}, text).reward == reward


def test_verifier_words():
    assert visual_qa.verify({"answer": "Red"}, "\\boxed{\\text{red}}").reward == 1.0
    assert visual_qa.verify({"answer": "red circle"}, "\\boxed{Red  circle.}").reward == 1.0
    assert visual_qa.verify({"answer": "red"}, "\\boxed{blue}").reward == 0.0


def test_user_jsonl_with_relative_images(tmp_path, play_gold):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 32), "white").save(tmp_path / "imgs" / "a.png")
    rows = [{"image": "imgs/a.png", "question": "What colour?", "answer": "white"},
            {"image": "imgs/a.png", "question": "Zoom?", "answer": 7, "bbox": [0, 0, 32, 32]}]
    path = tmp_path / "vqa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    env = make_env("reopold_agent/VisualQA-v0", data_path=str(path))
    obs, info = env.reset(options={"index": 0})
    assert obs[1]["content"][0]["image"].size == (64, 32) and info["answer"] == "white"
    assert env.gold_turns() == [{"role": "assistant", "content": "\\boxed{white}"}]
    assert play_gold(env, options={"index": 1}) == 1.0


def test_reset_with_a_pil_item():
    env = make_env("reopold_agent/VisualQA-v0")
    image = Image.new("RGB", (50, 50), "blue")
    _, info = env.reset(options={"item": {"image": image, "question": "Colour?", "answer": "blue"}})
    again = env.reset(options={"item": {"image": image, "question": "Colour?", "answer": "blue"}})
    assert info["prompt_id"] == again[1]["prompt_id"]
    assert env.step("\\boxed{Blue}")[1] == 1.0
