"""Images in, vision-encoder inputs out: resizing, pixel patches, placeholder expansion.

One :class:`VisionProcessor` per run turns every image an episode meets (the prompt's, and those
that tools return) into :class:`ImageFeatures`: the image resized by ``qwen_vl_utils`` to a
multiple of the patch grid within ``[min_pixels, max_pixels]``, its pixel patches from the
model's own Hugging Face image processor, and the number of placeholder tokens it takes in the
sequence. The chat template renders an image as a single ``<|image_pad|>``; the rollout engine
replaces it with ``num_tokens`` copies (:meth:`VisionProcessor.expand_placeholders`), so image
tokens and features are created together and appended together, or not at all.

The resized image is what gets stored in the run directory (PNG, lossless). Re-encoding it with
:meth:`VisionProcessor.encode_resized` gives bit-identical pixel values, so a saved trajectory
recomputes the exact forward pass.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from .positions import mrope_position_ids


@dataclass
class ImageFeatures:
    """One image ready for the vision encoder."""

    image: Image.Image
    """The resized RGB image the patches come from (stored as the run's PNG)."""
    pixel_values: Tensor
    """[P, D] float32 flattened patches (P = t*h*w, D = channels * temporal patch * patch**2)."""
    grid_thw: tuple[int, int, int]
    """Patch grid (temporal, height, width)."""
    num_tokens: int
    """Placeholder tokens the image takes in the sequence (t*h*w / merge**2)."""
    key: str
    """Content hash of the resized image; its file name in the run directory is ``<key>.png``."""


@dataclass
class VisionInputs:
    """Pixel inputs of one sequence's images, in order of appearance (n images, P patches).

    Kept in memory beside a trajectory from rollout to teacher to update; the trajectory's
    :class:`~reopold_agent.trajectory.ImageRecord` list says where each image is stored.
    """

    pixel_values: Tensor
    """[P, D] patches of all the sequence's images, concatenated."""
    image_grid_thw: Tensor
    """[n, 3] long patch grid of each image."""
    images: list[Image.Image]
    """[n] the resized images (written to the run directory with the trajectories)."""

    @classmethod
    def from_features(cls, features: list[ImageFeatures]) -> "VisionInputs | None":
        if not features:
            return None
        return cls(torch.cat([f.pixel_values for f in features]),
                   torch.tensor([f.grid_thw for f in features], dtype=torch.long),
                   [f.image for f in features])

    @property
    def num_images(self) -> int:
        return int(self.image_grid_thw.shape[0])


def message_images(messages: list[dict]) -> list[Any]:
    """The images of chat messages in reading order (PIL images or paths), one per image part
    the chat template renders."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            out += [part.get("image", part.get("image_url")) for part in content if is_image_part(part)]
    return out


def is_image_part(part: Any) -> bool:
    """Whether a message content part is an image (the chat template's rule)."""
    return isinstance(part, dict) and (part.get("type") in ("image", "image_url") or "image" in part)


class VisionProcessor:
    """Prepares images for one vision-language model family (Qwen2-VL, Qwen2.5-VL).

    Args:
        image_processor: the checkpoint's Hugging Face image processor (``processor.image_processor``).
        image_token_id: the placeholder token the vision features replace.
        patch_size: vision patch side in pixels.
        spatial_merge_size: patches merged per side into one language-model token.
        min_pixels: images smaller than this are enlarged (keeping the aspect ratio).
        max_pixels: images larger than this are shrunk; bounds the tokens one image takes.
        cache_bytes: pixel values of recently encoded images kept for reuse (the G rollouts of
            a prompt share its image, and often their tool crops); 0 turns the cache off.
    """

    def __init__(self, image_processor: Any, *, image_token_id: int, patch_size: int, spatial_merge_size: int,
                 min_pixels: int, max_pixels: int, cache_bytes: int = 256 << 20) -> None:
        factor = patch_size * spatial_merge_size
        if min_pixels < factor * factor or max_pixels < min_pixels:
            raise ValueError(f"image pixel limits need {factor * factor} <= min_pixels <= max_pixels "
                             f"(patch {patch_size} x merge {spatial_merge_size}); got {min_pixels}, {max_pixels}")
        self.image_processor = image_processor
        self.image_token_id = image_token_id
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[bytes, ImageFeatures] = OrderedDict()
        self._cached_bytes = 0

    @classmethod
    def for_model(cls, model_config: Any, image_processor: Any, *, min_pixels: int, max_pixels: int
                  ) -> "VisionProcessor":
        """The processor of a ``Qwen2VLConfig`` / ``Qwen2_5_VLConfig`` model."""
        vision = getattr(model_config, "vision_config", None)
        if vision is None or getattr(model_config, "image_token_id", None) is None:
            raise ValueError(f"{type(model_config).__name__} is not a vision-language model config "
                             "(no vision_config / image_token_id)")
        return cls(image_processor, image_token_id=int(model_config.image_token_id),
                   patch_size=int(vision.patch_size), spatial_merge_size=int(vision.spatial_merge_size),
                   min_pixels=min_pixels, max_pixels=max_pixels)

    def check_compatible(self, model_config: Any, role: str) -> None:
        """Raise ValueError unless ``model_config`` reads exactly these pixel inputs and tokens."""
        vision = getattr(model_config, "vision_config", None)
        if vision is None:
            raise ValueError(f"the {role} is a text-only model but the student is vision-language: "
                             "the teacher must see the same images")
        mine = (self.image_token_id, self.patch_size, self.spatial_merge_size)
        theirs = (getattr(model_config, "image_token_id", None), vision.patch_size, vision.spatial_merge_size)
        if mine != theirs:
            raise ValueError(f"the {role}'s vision settings (image token, patch, merge) = {theirs} differ from the "
                             f"student's {mine}; both must read the same pixel inputs")

    def encode(self, image: Image.Image | str) -> ImageFeatures:
        """Resize ``image`` (a PIL image or a file path) with ``qwen_vl_utils`` and compute its patches.

        Equal images (same mode, size and pixels) give the same, cached :class:`ImageFeatures`.
        """
        if image is None:
            raise ValueError("an image part carries no image data (saved trajectories' display messages hold only "
                             "the image size; use the images stored in the run directory)")
        if not isinstance(image, Image.Image):
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        key = hashlib.sha1(f"{image.mode}{image.size}".encode() + image.tobytes()).digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        features = self._encode_new(image)
        if self.cache_bytes:
            self._cache[key] = features
            self._cached_bytes += features.pixel_values.nbytes
            while self._cached_bytes > self.cache_bytes:
                self._cached_bytes -= self._cache.popitem(last=False)[1].pixel_values.nbytes
        return features

    def _encode_new(self, image: Image.Image) -> ImageFeatures:
        from qwen_vl_utils import fetch_image
        from qwen_vl_utils.vision_process import smart_resize

        # qwen_vl_utils rounds sides to image_patch_size * 2 (its fixed merge size); ask for the
        # multiple this model needs, patch_size * spatial_merge_size.
        factor = self.patch_size * self.spatial_merge_size
        try:
            height, width = smart_resize(image.height, image.width, factor, self.min_pixels, self.max_pixels)
        except ValueError:  # qwen_vl_utils refuses aspect ratios above 200
            height = width = 0
        if min(height, width) < factor:
            raise ValueError(f"a {image.width}x{image.height} image is too thin to resize into {factor}-pixel "
                             f"patches within {self.max_pixels} pixels")
        resized = fetch_image({"image": image.convert("RGB"), "min_pixels": self.min_pixels,
                               "max_pixels": self.max_pixels}, image_patch_size=factor / 2)
        return self.encode_resized(resized)

    def encode_resized(self, image: Image.Image) -> ImageFeatures:
        """Patches of an image already resized by :meth:`encode` (e.g. reloaded from a run)."""
        image = image.convert("RGB")
        out = self.image_processor(images=[image], do_resize=False, return_tensors="pt")
        grid = tuple(int(v) for v in out["image_grid_thw"][0].tolist())
        num_tokens = grid[0] * grid[1] * grid[2] // self.spatial_merge_size ** 2
        key = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()[:20]
        return ImageFeatures(image, out["pixel_values"].float(), grid, num_tokens, key)

    def expand_placeholders(self, ids: list[int], features: list[ImageFeatures]) -> tuple[list[int], list[bool]]:
        """Replace the k-th ``image_token_id`` of ``ids`` with ``features[k].num_tokens`` copies.

        Returns:
            (expanded ids, is_image flag per expanded id).

        Raises:
            ValueError: the ids hold a different number of placeholders than there are images
                (the chat template did not render an image, or rendered text as one).
        """
        count = sum(1 for t in ids if t == self.image_token_id)
        if count != len(features):
            raise ValueError(f"the chat template rendered {count} image placeholders for {len(features)} images; "
                             "the template must render every image part (including in tool messages) once")
        out_ids: list[int] = []
        is_image: list[bool] = []
        k = 0
        for t in ids:
            if t == self.image_token_id:
                n = features[k].num_tokens
                out_ids += [t] * n
                is_image += [True] * n
                k += 1
            else:
                out_ids.append(t)
                is_image.append(False)
        return out_ids, is_image

    def forward_inputs(self, rows: list[VisionInputs | None], input_ids_BT: Tensor, attention_mask_BT: Tensor
                       ) -> dict[str, Tensor]:
        """Model keyword inputs for a padded batch whose row b holds ``rows[b]``'s images.

        Returns ``position_ids`` [3, B, T] always (3D positions also for text-only rows), and
        ``pixel_values`` [P, D] / ``image_grid_thw`` [n, 3] when the batch holds images, on the
        device of ``input_ids_BT``.
        """
        present = [r for r in rows if r is not None and r.num_images]
        grid = torch.cat([r.image_grid_thw for r in present]) if present else None
        device = input_ids_BT.device
        out = {"position_ids": mrope_position_ids(
            input_ids_BT, attention_mask_BT, grid, image_token_id=self.image_token_id,
            spatial_merge_size=self.spatial_merge_size).to(device)}
        if present:
            out["pixel_values"] = torch.cat([r.pixel_values for r in present]).to(device)
            out["image_grid_thw"] = grid.to(device)
        return out
