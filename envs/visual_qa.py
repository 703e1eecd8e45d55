"""``reopold_agent/VisualQA-v0``: questions about an image, with a ``zoom`` tool.

Items, prompt, verifier and gold turns come from :mod:`reopold_agent.tasks.visual_qa`. The
zoom tool crops the current episode's image and returns the enlarged crop as an image part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from PIL import Image

from reopold_agent.sandbox.base import Sandbox
from reopold_agent.tasks import visual_qa
from reopold_agent.tasks.spec import Verdict

from .arguments import at_least
from .base import Message, ToolEnv
from .tools import Tool, ToolOutput


class ZoomTool(Tool):
    """Crops a box of the episode's image and enlarges it."""

    name = "zoom"
    description = ("Crop the region bbox = [x0, y0, x1, y1] (pixels of the original image) "
                   "and return it enlarged, to read small details.")
    parameters = {
        "type": "object",
        "properties": {
            "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4,
                     "maxItems": 4, "description": "[x0, y0, x1, y1] in pixels"},
            "scale": {"type": "number", "description": "enlargement factor, 1 to 8 "
                      "(default: fit the crop to 448 pixels)"},
        },
        "required": ["bbox"],
    }

    def __init__(self, get_image: Callable[[], Image.Image | None]) -> None:
        """Args:
            get_image: returns the current episode's image.
        """
        self.get_image = get_image

    def run(self, bbox: list[float], scale: float | None = None) -> ToolOutput:
        image = self.get_image()
        if image is None:
            return ToolOutput(text="there is no image in this episode", error_kind="no_image")
        try:
            zoomed, note = visual_qa.zoom(image, bbox, scale)
        except ValueError as exc:
            return ToolOutput(text=f"Error: {exc}", error_kind="bad_bbox")
        return ToolOutput(text=note, images=[zoomed])


class VisualQAEnv(ToolEnv):
    """Synthetic-image questions (counting shapes, reading small numbers, or dot colours)."""

    task_name = "visual_qa"

    def __init__(
        self,
        *,
        sandbox: Sandbox | None = None,
        split: str = "train",
        data_seed: int = 0,
        data_path: str | Path | None = None,
        train_size: int = 100_000,
        eval_size: int = 200,
        level: str = "scenes",
        **limits: Any,
    ) -> None:
        """Args:
            sandbox: the run's sandbox, kept by :class:`ToolEnv` (the zoom tool does not use it).
            split: ``"train"`` or ``"eval"``.
            data_seed: seed of the generated dataset.
            data_path: a JSON Lines file of ``{"image", "question", "answer", "bbox"?}``
                replacing generated items for this env's split.
            train_size: number of generated train items (indices).
            eval_size: number of generated eval items (indices).
            level: generated item level, ``"scenes"`` or the easy ``"dots"`` (see
                :mod:`reopold_agent.tasks.visual_qa`); ignored with ``data_path``.
            **limits: :class:`ToolEnv` limits (``max_tool_rounds``, ...).

        Raises:
            ValueError: an unknown ``level`` (the message lists the allowed ones).
        """
        self.level = visual_qa.check_level(level)
        train_size, eval_size = at_least("train_size", train_size, 1), at_least("eval_size", eval_size, 1)
        super().__init__(tools=[ZoomTool(self.current_image)], split=split, sandbox=sandbox, **limits)
        self.data_seed = data_seed
        self.data = visual_qa.load_items(data_path) if data_path is not None else None
        self.size = train_size if split == "train" else eval_size

    def num_items(self) -> int:
        return len(self.data) if self.data is not None else self.size

    def load_item(self, index: int) -> dict[str, Any]:
        if self.data is not None:
            return self.data[index]
        return visual_qa.make_item(self.split, index, seed=self.data_seed, level=self.level)

    def item_from_options(self, item: dict[str, Any]) -> dict[str, Any]:
        item = super().item_from_options(item)
        if "image" not in item and "image_path" not in item:
            raise ValueError('a visual_qa item needs an "image" (PIL image or path)')
        return {**item, "answer": str(item["answer"])}

    def item_info(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"qtype": item.get("qtype"), "bbox": item.get("bbox")}

    def current_image(self) -> Image.Image | None:
        """The image of the episode in progress (None before the first reset)."""
        return visual_qa.open_image(self.item) if self.item is not None else None

    def prompt(self, item: dict[str, Any]) -> list[Message]:
        return visual_qa.prompt_messages(item)

    def verify(self, item: dict[str, Any], text: str) -> Verdict:
        return visual_qa.verify(item, text)

    def gold_for_item(self, item: dict[str, Any]) -> list[Message]:
        return visual_qa.gold_turns(item)
