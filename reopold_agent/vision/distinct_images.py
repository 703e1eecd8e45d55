"""Each distinct image of a batch through the vision encoder once.

A group's G rollouts of one prompt carry the prompt's images G times, and a batch's pixel
inputs list every row's images. Before a forward, :func:`encode_images_once` finds the images
whose patches are identical, runs the model's vision encoder on one copy of each, and hands the
language model every row's image embeddings through ``mm_encoder_outputs`` (the argument
transformers' vision-language models take for precomputed encoder outputs). The result is the
same forward: the same embeddings in the same places, and in backward the copies' gradients
add up on the one encoding, as they add up on the encoder's weights when each copy is encoded.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor


def distinct_images(pixel_values_PD: Tensor, grid_N3: Tensor) -> tuple[Tensor, Tensor, list[int]]:
    """The distinct images of a batch's pixel inputs.

    Args:
        pixel_values_PD: [P, D] patches of N images, concatenated in order.
        grid_N3: [N, 3] long patch grid (t, h, w) of each image; image i has ``t*h*w`` patches.

    Returns:
        (``[P', D]`` patches of the distinct images, their ``[N', 3]`` grids, and for each of the
        N images the index of its distinct image). Two images are the same when their grids and
        every patch value are equal.
    """
    sizes = grid_N3.prod(-1).tolist()
    blocks = pixel_values_PD.split(sizes)
    weights = torch.randn(pixel_values_PD.shape[-1], generator=torch.Generator().manual_seed(0))
    projected = (pixel_values_PD.float() @ weights.to(pixel_values_PD.device)).split(sizes)
    sums = torch.stack([torch.stack([f.sum(), (f * f).sum()]) for f in projected]).tolist()  # one sync
    keys = [(tuple(g), *s) for g, s in zip(grid_N3.tolist(), sums)]
    kept: list[int] = []
    candidates: dict[tuple, list[int]] = {}
    order: list[int] = []
    for i, key in enumerate(keys):
        same = next((u for u in candidates.get(key, []) if torch.equal(blocks[kept[u]], blocks[i])), None)
        if same is None:
            same = len(kept)
            kept.append(i)
            candidates.setdefault(key, []).append(same)
        order.append(same)
    if len(kept) == len(blocks):
        return pixel_values_PD, grid_N3, order
    return torch.cat([blocks[i] for i in kept]), grid_N3[kept], order


def takes_image_encodings(model: Any) -> bool:
    """Whether ``model`` can encode images by itself (``get_image_features``) and take the
    encodings in its forward (an ``mm_encoder_outputs`` argument; transformers versions before
    it have no such argument)."""
    return (hasattr(model, "get_image_features")
            and "mm_encoder_outputs" in inspect.signature(model.forward).parameters)


def encode_images_once(backbone: Any, extra_inputs: dict[str, Any] | None) -> dict[str, Any] | None:
    """``extra_inputs`` for ``backbone`` with each distinct image encoded once.

    Args:
        backbone: a vision-language model's backbone (or the whole model) with
            ``get_image_features`` and an ``mm_encoder_outputs`` argument, as transformers'
            Qwen2-VL family has.
        extra_inputs: forward keyword inputs holding ``pixel_values`` [P, D] and
            ``image_grid_thw`` [N, 3] (and e.g. ``position_ids``), or None.

    Returns:
        ``extra_inputs`` unchanged when it holds no repeated image (or the model cannot take
        precomputed encodings); otherwise the same inputs with ``pixel_values`` replaced by
        ``mm_encoder_outputs``: the N images' embeddings, each distinct image encoded once.
    """
    if not extra_inputs or extra_inputs.get("pixel_values") is None or not takes_image_encodings(backbone):
        return extra_inputs
    pixels, grid = extra_inputs["pixel_values"], extra_inputs["image_grid_thw"]
    unique_pixels, unique_grid, order = distinct_images(pixels, grid)
    if unique_grid.shape[0] == grid.shape[0]:
        return extra_inputs
    encoded = backbone.get_image_features(unique_pixels, unique_grid, return_dict=True)
    encoded.pooler_output = tuple(encoded.pooler_output[u] for u in order)
    rest = {k: v for k, v in extra_inputs.items() if k != "pixel_values"}
    return {**rest, "mm_encoder_outputs": {"image": encoded}}
