"""Multimodal rotary position ids (Qwen2-VL / Qwen2.5-VL "mrope"), computed statelessly.

Qwen-VL language models rotate queries and keys by three position ids per token (temporal,
height, width). A text token has the same value on all three axes and advances by one. The
``t*h*w / merge**2`` placeholder tokens of an image get the coordinates of their merged patch
on the image grid, offset by the position where the image starts; the text after an image
resumes at ``start + max(t, h/merge, w/merge)``.

Why here rather than inside the model: the model infers these ids only when given exactly the
right extra inputs (which differ between transformers versions) and caches ``rope_deltas`` on
the module between calls, which goes stale between generation and training forwards. Passing
explicit ``position_ids`` computed by one pure function makes generation, teacher scoring and
training agree by construction (tested against the installed model's own ``get_rope_index``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def mrope_position_ids(
    input_ids_BT: Tensor,
    attention_mask_BT: Tensor,
    image_grid_thw_N3: Tensor | None,
    *,
    image_token_id: int,
    spatial_merge_size: int,
) -> Tensor:
    """3D position ids of a padded batch holding image placeholder tokens.

    Args:
        input_ids_BT: [B, T] token ids, left or right padded.
        attention_mask_BT: [B, T] 1 on real tokens.
        image_grid_thw_N3: [N, 3] (temporal, height, width) patch grid of every image of the
            batch, in reading order (row by row, left to right), or None for text only.
        image_token_id: id of the placeholder token the vision features replace.
        spatial_merge_size: patches merged per side into one language-model token.

    Returns:
        [3, B, T] long position ids; padding positions hold 0.

    Raises:
        ValueError: the placeholder tokens do not match the grids (count or split).
    """
    B, T = input_ids_BT.shape
    out = torch.zeros((3, B, T), dtype=torch.long)
    grids = [] if image_grid_thw_N3 is None else [tuple(int(v) for v in g) for g in image_grid_thw_N3.tolist()]
    next_grid = 0
    ids_cpu, mask_cpu = input_ids_BT.cpu(), attention_mask_BT.cpu().bool()
    for b in range(B):
        real = mask_cpu[b].nonzero().flatten()
        is_image = (ids_cpu[b, real] == image_token_id).tolist()
        row = torch.zeros((3, len(is_image)), dtype=torch.long)
        pos, i = 0, 0
        while i < len(is_image):
            if not is_image[i]:
                row[:, i] = pos
                pos, i = pos + 1, i + 1
                continue
            if next_grid >= len(grids):
                raise ValueError(f"row {b} has more image placeholder tokens than the {len(grids)} image grids describe")
            t, h, w = grids[next_grid]
            next_grid += 1
            gh, gw = h // spatial_merge_size, w // spatial_merge_size
            n = t * gh * gw
            if i + n > len(is_image) or not all(is_image[i:i + n]):
                raise ValueError(f"row {b}: an image with grid {(t, h, w)} needs {n} consecutive placeholder "
                                 f"tokens at position {i}, which the sequence does not have")
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
            row[:, i:i + n] = torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]) + pos
            pos += max(t, gh, gw)
            i += n
        out[:, b, real] = row
    if next_grid != len(grids):
        raise ValueError(f"{len(grids)} image grids given but the batch holds placeholders for {next_grid}")
    return out.to(input_ids_BT.device)


def next_positions(position_ids_3BT: Tensor, attention_mask_BT: Tensor) -> Tensor:
    """[B] the position id of the token that would follow each row (max real position + 1)."""
    masked = position_ids_3BT.masked_fill(~attention_mask_BT.bool()[None], -1)
    return masked.amax(dim=(0, 2)) + 1
