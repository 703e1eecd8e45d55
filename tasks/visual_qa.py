"""visual_qa: questions about synthetic images; small text needs the ``zoom`` tool.

A generated scene (448x448) holds coloured circles, squares and triangles on a grid of
56-pixel cells, plus two or three small boxes with coloured borders, each holding a 3-4 digit
number in a 7-8 px font. Questions either count shapes ("How many red circles ...?") or read
a number ("What number is written in the small box with the blue border?"). Every item keeps
``bbox``, the region holding its answer, which the gold trajectory zooms into.

Scenes are plain data (``scene``), rendered deterministically by :func:`render_scene`; the
split of a scene is decided by hashing its description, so train and eval never share one.
A user's JSON Lines file of ``{"image", "question", "answer", "bbox"?}`` (image paths
relative to the file) can replace the generated items.

Two levels of generated items exist: ``"scenes"`` (the above, the default) and ``"dots"``, an
easy level for tiny vision-language models that see images downscaled to about 56x56 pixels. A
dots image is a 4x4 grid of 112-pixel cells with faint grid lines, each cell holding one small
dot (radius 11-14 px) of one of the five colours; the question names a cell by its pixel box and
asks the dot's colour. At 56x56 the whole image leaves each dot 1-2 pixels wide among fifteen
others; zooming into the cell (4x) shows it 11-14 pixels wide. Every block of 80
consecutive indices asks each (cell, colour) pair exactly once, so the cell named gives no hint
of the colour.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reopold_agent.tool_protocol import tool_call_message

from .answers import answers_match, extract_boxed
from .data import draw_for_split, read_jsonl
from .spec import Verdict

SIZE = 448
CELL = 56
MAX_ZOOM = 8.0
BACKGROUND = (246, 245, 240)
COLORS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220),
          "yellow": (230, 180, 0), "purple": (148, 60, 189)}
KINDS = ("circle", "square", "triangle")
LEVELS = ("scenes", "dots")
DOT_CELL = 112
DOT_GRID = SIZE // DOT_CELL
DOT_RADII = (11, 14)
DOT_MAX_OFFSET = 18
"""Largest shift of a dot's centre from its cell's centre, per axis (at most ~25 px overall)."""
GRID_LINE = (226, 225, 218)
_DOTS_PLAN_STREAM = {"train": 101, "eval": 102}
"""Seed-sequence tags of the (cell, colour) plans, distinct from draw_for_split's streams."""
SYSTEM_PROMPT = (
    "Answer the question about the image. Small details can be read with the zoom tool "
    "(bbox in pixels). Give the final answer in \\boxed{}."
)


def _draw_scene(rng: np.random.Generator) -> dict[str, Any]:
    """A random scene description (JSON-able) and one question about it."""
    cells = [int(c) for c in rng.permutation((SIZE // CELL) ** 2)]
    n_shapes, n_boxes = int(rng.integers(6, 15)), int(rng.integers(2, 4))
    box_colors = [str(c) for c in rng.choice(list(COLORS), size=n_boxes, replace=False)]
    shapes, boxes = [], []
    for cell in cells[:n_shapes]:
        r = int(rng.integers(10, 22))
        x = (cell % 8) * CELL + CELL // 2 + int(rng.integers(-(27 - r), 28 - r))
        y = (cell // 8) * CELL + CELL // 2 + int(rng.integers(-(27 - r), 28 - r))
        shapes.append({"kind": KINDS[int(rng.integers(3))],
                       "color": list(COLORS)[int(rng.integers(len(COLORS)))],
                       "x": x, "y": y, "r": r})
    for cell, color in zip(cells[n_shapes:], box_colors):
        x0 = (cell % 8) * CELL + int(rng.integers(2, 18))
        y0 = (cell // 8) * CELL + int(rng.integers(2, 36))
        boxes.append({"color": color, "box": [x0, y0, x0 + 36, y0 + 16],
                      "text": str(int(rng.integers(100, 10000))),
                      "font_px": int(rng.integers(7, 9))})
    if rng.random() < 0.5:
        target = shapes[int(rng.integers(len(shapes)))]
        hits = [s for s in shapes if (s["kind"], s["color"]) == (target["kind"], target["color"])]
        bbox = [min(s["x"] - s["r"] for s in hits) - 4, min(s["y"] - s["r"] for s in hits) - 4,
                max(s["x"] + s["r"] for s in hits) + 4, max(s["y"] + s["r"] for s in hits) + 4]
        question = f"How many {target['color']} {target['kind']}s are in the image?"
        answer, qtype = str(len(hits)), "count"
    else:
        box = boxes[int(rng.integers(len(boxes)))]
        x0, y0, x1, y1 = box["box"]
        bbox = [x0 - 6, y0 - 6, x1 + 6, y1 + 6]
        question = f"What number is written in the small box with the {box['color']} border?"
        answer, qtype = box["text"], "read"
    bbox = [max(0, min(SIZE, v)) for v in bbox]
    return {"scene": {"shapes": shapes, "boxes": boxes}, "question": question,
            "answer": answer, "qtype": qtype, "bbox": bbox}


def render_scene(scene: dict[str, Any]) -> Image.Image:
    """Draw a scene description as a 448x448 RGB image (deterministic)."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene["shapes"]:
        x, y, r, fill = s["x"], s["y"], s["r"], COLORS[s["color"]]
        if s["kind"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif s["kind"] == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    for b in scene["boxes"]:
        draw.rectangle(b["box"], fill=(255, 255, 255), outline=COLORS[b["color"]], width=1)
        font = ImageFont.load_default(size=b["font_px"])
        draw.text((b["box"][0] + 3, b["box"][1] + 4), b["text"], fill=(20, 20, 20), font=font)
    return image


def dot_cell_box(cell: int) -> list[int]:
    """Pixel box ``[x0, y0, x1, y1]`` of dots-grid cell ``cell`` (row-major, 0..15)."""
    x0, y0 = (cell % DOT_GRID) * DOT_CELL, (cell // DOT_GRID) * DOT_CELL
    return [x0, y0, x0 + DOT_CELL, y0 + DOT_CELL]


def _dots_plan(split: str, seed: int, index: int) -> tuple[int, str]:
    """The asked cell and answer colour of dots item ``index`` of ``split``.

    Indices come in blocks of 16 cells x 5 colours = 80; each block asks every (cell, colour)
    pair exactly once, in an order shuffled by ``seed``, ``split`` and the block number.
    """
    pairs = DOT_GRID ** 2 * len(COLORS)
    block, position = divmod(index, pairs)
    order = np.random.default_rng([seed, _DOTS_PLAN_STREAM[split], block]).permutation(pairs)
    cell, color = divmod(int(order[position]), len(COLORS))
    return cell, list(COLORS)[color]


def _draw_dots(rng: np.random.Generator, asked_cell: int, asked_color: str) -> dict[str, Any]:
    """A random dots grid whose ``asked_cell`` holds an ``asked_color`` dot, and its question."""
    dots = []
    for cell in range(DOT_GRID ** 2):
        random_color = list(COLORS)[int(rng.integers(len(COLORS)))]
        x0, y0, _, _ = dot_cell_box(cell)
        dots.append({"color": asked_color if cell == asked_cell else random_color,
                     "x": x0 + DOT_CELL // 2 + int(rng.integers(-DOT_MAX_OFFSET, DOT_MAX_OFFSET + 1)),
                     "y": y0 + DOT_CELL // 2 + int(rng.integers(-DOT_MAX_OFFSET, DOT_MAX_OFFSET + 1)),
                     "r": int(rng.integers(DOT_RADII[0], DOT_RADII[1] + 1))})
    bbox = dot_cell_box(asked_cell)
    question = "What color is the dot inside [{}, {}, {}, {}]?".format(*bbox)
    return {"scene": {"dots": dots}, "question": question, "answer": asked_color,
            "qtype": "dots", "bbox": bbox}


def render_dots(scene: dict[str, Any]) -> Image.Image:
    """Draw a dots grid (faint grid lines, one filled dot per cell) as a 448x448 RGB image."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for k in range(1, DOT_GRID):
        draw.line([(k * DOT_CELL, 0), (k * DOT_CELL, SIZE - 1)], fill=GRID_LINE, width=1)
        draw.line([(0, k * DOT_CELL), (SIZE - 1, k * DOT_CELL)], fill=GRID_LINE, width=1)
    for d in scene["dots"]:
        x, y, r = d["x"], d["y"], d["r"]
        draw.ellipse([x - r, y - r, x + r, y + r], fill=COLORS[d["color"]])
    return image


def check_level(level: str) -> str:
    """``level`` itself when it is a known level of generated items.

    Raises:
        ValueError: an unknown level; the message lists the allowed ones.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown visual_qa level {level!r}; allowed levels: {', '.join(LEVELS)}")
    return level


def _item_key(item: dict[str, Any]) -> str:
    """The text identifying a generated item, hashed to choose its split."""
    return json.dumps([item["scene"], item["question"]])


def make_item(split: str, index: int, *, seed: int = 0, level: str = "scenes") -> dict[str, Any]:
    """Generated item ``index`` of ``split`` at ``level`` (``"scenes"`` or ``"dots"``).

    Returns:
        ``{"scene", "question", "answer", "qtype", "bbox", "image"}`` (``image`` rendered).

    Raises:
        ValueError: an unknown level.
    """
    if check_level(level) == "dots":
        cell, color = _dots_plan(split, seed, index)
        item = draw_for_split(split, seed, index, lambda rng: _draw_dots(rng, cell, color),
                              key=_item_key)
        return {**item, "image": render_dots(item["scene"])}
    item = draw_for_split(split, seed, index, _draw_scene, key=_item_key)
    return {**item, "image": render_scene(item["scene"])}


def load_items(path: str | Path) -> list[dict[str, Any]]:
    """Items from a user's JSON Lines file of ``{"image", "question", "answer", "bbox"?}``.

    Image paths are relative to the file; images are opened when an item is played.

    Raises:
        TaskDataError: a missing file or a bad line (the message names the line).
    """
    path = Path(path)
    rows = read_jsonl(path, {"image": str, "question": str, "answer": (str, int, float)})
    return [{**row, "image_path": str(path.parent / row["image"]), "answer": str(row["answer"])}
            for row in rows]


def open_image(item: dict[str, Any]) -> Image.Image:
    """The item's image as RGB (rendered, given, or opened from ``image_path``)."""
    if isinstance(item.get("image"), Image.Image):
        return item["image"].convert("RGB")
    return Image.open(item.get("image_path") or item["image"]).convert("RGB")


def zoom(image: Image.Image, bbox: list[float], scale: float | None = None
         ) -> tuple[Image.Image, str]:
    """Crop ``bbox`` (pixels, clipped to the image) and enlarge it.

    Args:
        image: the full image.
        bbox: ``[x0, y0, x1, y1]`` with x0 < x1 and y0 < y1.
        scale: enlargement factor in [1, 8]; default fits the longest side to 448 px.

    Returns:
        The zoomed image and a one-line description.

    Raises:
        ValueError: an empty or inverted box, or a scale outside [1, 8].
    """
    w, h = image.size
    if not all(math.isfinite(v) for v in bbox):
        raise ValueError(f"bbox values must be finite numbers, got {list(bbox)}")
    x0, y0, x1, y1 = (int(round(v)) for v in bbox)
    x0, x1 = max(0, min(w, x0)), max(0, min(w, x1))
    y0, y1 = max(0, min(h, y0)), max(0, min(h, y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {list(bbox)} is empty inside the {w}x{h} image; "
                         "use [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
    if scale is None:
        scale = max(1.0, min(MAX_ZOOM, SIZE / max(x1 - x0, y1 - y0)))
    if not 1.0 <= scale <= MAX_ZOOM:
        raise ValueError(f"scale must be between 1 and {MAX_ZOOM:g}, got {scale}")
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    out = image.crop((x0, y0, x1, y1)).resize(size, Image.Resampling.BICUBIC)
    return out, f"Zoomed into [{x0}, {y0}, {x1}, {y1}] at {scale:.2f}x ({size[0]}x{size[1]} px)."


def prompt_messages(item: dict[str, Any]) -> list[dict[str, Any]]:
    """System message, then a user message with the image and the question."""
    image = open_image(item)
    text = f"{item['question']} (The image is {image.width}x{image.height} pixels.)"
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": text}]}]


def verify(item: dict[str, Any], text: str) -> Verdict:
    """1.0 when the last ``\\boxed{}`` matches the answer (numbers numerically), else 0.0."""
    boxed = extract_boxed(text)
    if boxed is None:
        return Verdict(0.0, None, "no \\boxed{} answer")
    ok = answers_match(boxed, item["answer"])
    return Verdict(1.0 if ok else 0.0, boxed, "correct" if ok else "wrong answer")


def gold_turns(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The gold continuation: zoom into ``bbox``, see the crop, answer in ``\\boxed{}``.

    Items without ``bbox`` (user data) get the final answer only.
    """
    final = {"role": "assistant", "content": f"\\boxed{{{item['answer']}}}"}
    if not item.get("bbox"):
        return [final]
    zoomed, note = zoom(open_image(item), item["bbox"])
    return [tool_call_message("", [("zoom", {"bbox": list(item["bbox"])})]),
            {"role": "tool", "name": "zoom",
             "content": [{"type": "image", "image": zoomed}, {"type": "text", "text": note}]},
            final]


def alignment_conversation(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A one-turn image-to-answer conversation for the vision-alignment stage of a tiny model.

    The zoomed answer region (exactly what the gold zoom call returns) and a short question,
    answered with the bare answer. Vision-language models are first aligned on such
    caption-like pairs before they learn multi-turn tool use; a tiny model trained only on the
    full tool conversations, where the answer is one token in forty, does not learn to read the
    image at all (measured: chance accuracy after 800 steps).

    Raises:
        ValueError: the item has no ``bbox`` to zoom into.
    """
    if not item.get("bbox"):
        raise ValueError("an alignment conversation needs an item with a bbox")
    zoomed, _ = zoom(open_image(item), item["bbox"])
    question = "What color is the dot?" if item.get("qtype") == "dots" else "What is the answer?"
    return [{"role": "user", "content": [{"type": "image", "image": zoomed}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": item["answer"]}]
