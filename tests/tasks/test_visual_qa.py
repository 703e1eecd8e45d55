"""Tests of tasks/visual_qa.py and the VisualQA-v0 environment (zoom tool)."""

import json
import math
from collections import Counter

import gymnasium
import numpy as np
import pytest
from PIL import Image

from reopold_agent.demo import embedded
from reopold_agent.envs import make_env
from reopold_agent.tasks import visual_qa
from reopold_agent.tasks.data import split_of
from reopold_agent.demo.tiny_models import build_tokenizer
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


# ---- the easy "dots" level ---------------------------------------------------------------

DOT_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def dominant_colour(image):
    """The COLORS name most pixels far from the background are nearest to, its share, and count."""
    pixels = np.asarray(image, dtype=float).reshape(-1, 3)
    far = pixels[np.linalg.norm(pixels - np.array(visual_qa.BACKGROUND), axis=1) > 60]
    names = list(visual_qa.COLORS)
    palette = np.array([visual_qa.COLORS[n] for n in names], dtype=float)
    nearest = np.argmin(((far[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(names))
    return names[int(counts.argmax())], counts.max() / len(far), len(far)


def test_dots_items_are_deterministic():
    item = visual_qa.make_item("train", 5, level="dots")
    again = visual_qa.make_item("train", 5, level="dots")
    assert again["image"].tobytes() == item["image"].tobytes()
    assert {k: v for k, v in again.items() if k != "image"} == {k: v for k, v in item.items()
                                                               if k != "image"}
    other_seed = visual_qa.make_item("train", 5, seed=1, level="dots")
    assert other_seed["image"].tobytes() != item["image"].tobytes()
    assert visual_qa.make_item("train", 5)["qtype"] in ("count", "read")  # default stays scenes


def test_dots_splits_are_disjoint():
    train = [visual_qa.make_item("train", i, level="dots") for i in range(100)]
    evals = [visual_qa.make_item("eval", i, level="dots") for i in range(100)]
    assert not {scene_key(it) for it in train} & {scene_key(it) for it in evals}
    assert {split_of(scene_key(it)) for it in train} == {"train"}
    assert {split_of(scene_key(it)) for it in evals} == {"eval"}


def test_dots_colours_are_balanced_per_asked_cell():
    items = [visual_qa.make_item("train", i, level="dots") for i in range(400)]
    pairs = Counter((tuple(it["bbox"]), it["answer"]) for it in items)
    assert len(pairs) == 16 * 5 and set(pairs.values()) == {5}  # each block of 80 has each pair once
    first_eval_block = Counter((tuple(it["bbox"]), it["answer"])
                               for it in (visual_qa.make_item("eval", i, level="dots")
                                          for i in range(80)))
    assert set(first_eval_block.values()) == {1} and len(first_eval_block) == 80


def test_dots_item_matches_its_image():
    for i in range(20):
        item = visual_qa.make_item("eval", i, level="dots")
        x0, y0, x1, y1 = item["bbox"]
        assert item["question"] == f"What color is the dot inside [{x0}, {y0}, {x1}, {y1}]?"
        assert item["qtype"] == "dots" and x1 - x0 == y1 - y0 == 112 and x0 % 112 == y0 % 112 == 0
        dots = item["scene"]["dots"]
        assert len(dots) == 16 and all(visual_qa.DOT_RADII[0] <= d["r"] <= visual_qa.DOT_RADII[1] for d in dots)
        inside = [d for d in dots if x0 <= d["x"] < x1 and y0 <= d["y"] < y1]
        assert len(inside) == 1 and inside[0]["color"] == item["answer"]
        assert math.dist((inside[0]["x"], inside[0]["y"]), (x0 + 56, y0 + 56)) <= 26
        text = visual_qa.prompt_messages(item)[1]["content"][1]["text"]
        assert text == item["question"] + " (The image is 448x448 pixels.)"


def test_dots_gold_zooms_into_the_asked_cell_and_shows_the_dot():
    for i in range(10):
        item = visual_qa.make_item("train", i, level="dots")
        call, tool, final = visual_qa.gold_turns(item)
        assert call["tool_calls"][0]["function"] == {"name": "zoom",
                                                     "arguments": {"bbox": item["bbox"]}}
        zoomed, note = tool["content"][0]["image"], tool["content"][1]["text"]
        assert zoomed.size == (448, 448) and "at 4.00x" in note
        colour, share, count = dominant_colour(zoomed)
        assert colour == item["answer"] and share > 0.9
        assert count > 0.8 * math.pi * (4 * visual_qa.DOT_RADII[0]) ** 2  # the dot, 4x larger after the zoom
        assert final == {"role": "assistant", "content": f"\\boxed{{{item['answer']}}}"}


@pytest.mark.parametrize("split, index", [("train", 0), ("eval", 0), ("eval", 1)])
def test_dots_gold_trajectory_earns_full_reward(play_gold, split, index):
    env = make_env("reopold_agent/VisualQA-v0", split=split, level="dots")
    assert play_gold(env, options={"index": index}) == 1.0


@pytest.mark.parametrize("text, reward", [
    ("\\boxed{red}", 1.0), ("\\boxed{ Red }", 1.0), ("\\boxed{RED}", 1.0),
    ("The dot is \\boxed{red}.", 1.0), ("\\boxed{\\text{red}}", 1.0),
    ("\\boxed{blue}", 0.0), ("red", 0.0), ("\\boxed{reddish}", 0.0), ("\\boxed{}", 0.0),
])
def test_verifier_colour_words(text, reward):
    assert visual_qa.verify({"answer": "red"}, text).reward == reward


def test_env_level_kwarg_through_gymnasium():
    env = gymnasium.make("reopold_agent/VisualQA-v0", level="dots", split="eval")
    obs, info = env.reset(options={"index": 3})
    assert info["qtype"] == "dots" and obs[1]["content"][0]["image"].size == (448, 448)
    assert obs[1]["content"][1]["text"].startswith("What color is the dot inside [")
    assert gymnasium.make("reopold_agent/VisualQA-v0").reset(options={"index": 3})[1]["qtype"] \
        in ("count", "read")


def test_bad_level_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown visual_qa level 'easy'; allowed levels: "
                                         r"scenes, dots"):
        make_env("reopold_agent/VisualQA-v0", level="easy")
    with pytest.raises(ValueError, match="allowed levels: scenes, dots"):
        visual_qa.make_item("train", 0, level="easy")


def test_user_jsonl_ignores_level(tmp_path):
    Image.new("RGB", (64, 32), "white").save(tmp_path / "a.png")
    path = tmp_path / "vqa.jsonl"
    path.write_text(json.dumps({"image": "a.png", "question": "What colour?", "answer": "white"}))
    env = make_env("reopold_agent/VisualQA-v0", data_path=str(path), level="dots")
    obs, info = env.reset(options={"index": 0})
    assert env.num_items() == 1 and info["answer"] == "white" and info["qtype"] is None


def test_embedded_gold_conversations_for_visual_qa():
    convs = embedded.gold_conversations("visual_qa", count=3, seed=0)
    tokenizer = build_tokenizer([""])
    for index, conv in enumerate(convs):
        assert [m["role"] for m in conv] == ["system", "user", "assistant", "tool", "assistant"]
        assert conv[2]["content"].startswith("<tool_call>") and "zoom" in conv[2]["content"]
        assert conv[4]["content"] == f"\\boxed{{{visual_qa.make_item('train', index, level='dots')['answer']}}}"
        rendered = tokenizer.apply_chat_template(conv, tokenize=False)
        assert rendered.count(DOT_PLACEHOLDER) == 2
