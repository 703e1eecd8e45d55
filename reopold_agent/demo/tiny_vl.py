"""Offline tiny Qwen2.5-VL models and processors, saved like real checkpoints.

:func:`build_tiny_vl` builds a randomly initialised ``Qwen2_5_VLForConditionalGeneration`` from a
:class:`TinyVLSpec` for a tokenizer (e.g. :func:`reopold_agent.demo.tiny_models.build_tokenizer`, whose
``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>`` are single tokens 7, 8, 9);
:func:`build_tiny_processor` builds the real transformers processor classes for it and
:func:`~reopold_agent.demo.tiny_models.save_tiny` (the text models' save, given the processor)
writes a folder that :func:`reopold_agent.vision.loading.load_model` and
:func:`~reopold_agent.vision.loading.load_processor` read back through ``from_pretrained``.

Choices:

* ``mrope_section`` (how the rotary frequencies of one head are split between the temporal,
  height and width positions) must sum to ``head_dim / 2``; it is derived from ``head_dim`` in
  the proportions of the released models (``[16, 24, 24]`` for ``head_dim`` 128).
* ``video_token_id``: the tokenizer's ``<|video_pad|>`` when it has one. The tiny tokenizer has
  none, and in transformers 5.x every candidate id is used somewhere: ``get_placeholder_mask``
  embeds ``video_token_id`` even for image-only inputs when called with ``inputs_embeds`` (an
  id outside the vocabulary raises ``IndexError`` there), and whoever derives
  ``mm_token_type_ids`` from the config marks video (2) after image (1), so
  ``video_token_id == image_token_id`` turns every image token into a video token and
  ``get_rope_index`` fails on the missing ``video_grid_thw``. Any text token (pad, ``<|im_start|>``)
  would be marked as video too. The id used is the byte-level token of the raw byte ``0xFF``:
  inside the vocabulary, yet never produced by encoding text, since ``0xFF`` never occurs in UTF-8.
* Processor: ``Qwen2_5_VLProcessor`` with ``Qwen2VLImageProcessor`` and ``Qwen2VLVideoProcessor``
  when torchvision is available (the folder then loads with ``AutoProcessor`` like a hub one);
  otherwise :class:`~reopold_agent.vision.loading.ImageOnlyQwenVLProcessor`, which
  ``load_processor`` reassembles (``AutoProcessor`` alone returns just the tokenizer for it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from transformers import (
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.utils import is_torchvision_available

from ..vision.loading import ImageOnlyQwenVLProcessor
from . import chat_template as ct
from .tiny_models import check_attention_shape, init_tiny_model, special_token_ids

VIDEO_PAD = "<|video_pad|>"
"""Qwen's video placeholder token; used as ``video_token_id`` when the tokenizer has it."""
NEVER_ENCODED_BYTE_TOKEN = "\u00ff"
"""Byte-level BPE symbol of the raw byte 0xFF (``ÿ``), which no UTF-8 text contains."""


@dataclasses.dataclass(frozen=True)
class TinyVLSpec:
    """Shape of a tiny Qwen2.5-VL model (vocabulary size comes from the tokenizer)."""

    hidden_size: int = 64
    """Width of the language model's residual stream; also the vision merger's output width."""
    intermediate_size: int = 128
    """Width of the language model's SwiGLU MLP."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 4
    """Query heads; ``hidden_size`` must be a multiple, and ``head_dim`` at least 8 (M-RoPE)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide ``num_heads``."""
    tie_word_embeddings: bool = True
    """Share the input embedding with the output projection."""
    max_position_embeddings: int = 2048
    """Longest sequence the rotary embedding is configured for."""
    vision_depth: int = 1
    """Number of vision transformer blocks."""
    vision_hidden_size: int = 32
    """Width of the vision transformer; ``vision_head_dim`` must be a multiple of 4 (2D RoPE)."""
    vision_num_heads: int = 2
    """Vision attention heads."""
    vision_intermediate_size: int = 64
    """Width of the vision blocks' SwiGLU MLP."""
    patch_size: int = 14
    """Side in pixels of one square patch."""
    temporal_patch_size: int = 2
    """Frames per patch (an image is repeated to fill them)."""
    spatial_merge_size: int = 2
    """Side in patches of the square that the merger turns into one language token."""
    window_size: int = 56
    """Side in pixels of a windowed-attention window; a multiple of ``patch_size * spatial_merge_size``."""
    fullatt_block_indexes: tuple[int, ...] = (0,)
    """Vision blocks with full attention over the image; the others attend within windows."""

    def __post_init__(self) -> None:
        positive = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                    "max_position_embeddings", "vision_depth", "vision_hidden_size", "vision_num_heads",
                    "vision_intermediate_size", "patch_size", "temporal_patch_size", "spatial_merge_size",
                    "window_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        check_attention_shape(self.hidden_size, self.num_heads, self.num_kv_heads)
        if self.head_dim % 2 or self.head_dim < 8:
            raise ValueError(f"head_dim={self.head_dim} must be even and at least 8 so M-RoPE can split "
                             f"head_dim/2 between temporal, height and width positions")
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError(f"vision_hidden_size={self.vision_hidden_size} is not a multiple of "
                             f"vision_num_heads={self.vision_num_heads}")
        if self.vision_head_dim % 4:
            raise ValueError(f"vision head_dim={self.vision_head_dim} must be a multiple of 4 "
                             f"(2D rotary embedding: half for height, half for width)")
        merged_patch = self.patch_size * self.spatial_merge_size
        if self.window_size % merged_patch:
            raise ValueError(f"window_size={self.window_size} is not a multiple of "
                             f"patch_size * spatial_merge_size = {merged_patch}")
        if not isinstance(self.fullatt_block_indexes, tuple):
            raise ValueError(f"fullatt_block_indexes must be a tuple, got {type(self.fullatt_block_indexes).__name__}")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.vision_depth]
        if bad or len(set(self.fullatt_block_indexes)) != len(self.fullatt_block_indexes):
            raise ValueError(f"fullatt_block_indexes={self.fullatt_block_indexes} must be distinct block "
                             f"indexes in [0, vision_depth={self.vision_depth})")

    @property
    def head_dim(self) -> int:
        """Width of one language-model attention head."""
        return self.hidden_size // self.num_heads

    @property
    def vision_head_dim(self) -> int:
        """Width of one vision attention head."""
        return self.vision_hidden_size // self.vision_num_heads

    @property
    def mrope_section(self) -> tuple[int, int, int]:
        """(temporal, height, width) rotary frequencies per head; sums to ``head_dim // 2``."""
        half = self.head_dim // 2
        temporal = half // 4
        height = (half - temporal) // 2
        return temporal, height, half - temporal - height

    def num_parameters(self, vocab_size: int) -> int:
        """Exact parameter count of the model :func:`build_tiny_vl` builds for ``vocab_size``."""
        h, hd, inter = self.hidden_size, self.head_dim, self.intermediate_size
        q_out, kv_out = self.num_heads * hd, self.num_kv_heads * hd
        attn = h * q_out + 2 * h * kv_out + q_out * h + q_out + 2 * kv_out  # q/k/v biases, no o bias
        text_layer = attn + 3 * h * inter + 2 * h
        text = vocab_size * h * (1 if self.tie_word_embeddings else 2) + self.num_layers * text_layer + h
        d, vi = self.vision_hidden_size, self.vision_intermediate_size
        patch_embed = 3 * self.temporal_patch_size * self.patch_size**2 * d  # Conv3d without bias
        block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * (d * vi + vi) + (vi * d + d)
        merged = d * self.spatial_merge_size**2
        merger = d + (merged * merged + merged) + (merged * h + h)
        return text + patch_embed + self.vision_depth * block + merger


TINY_VL_SPECS: Mapping[str, TinyVLSpec] = MappingProxyType({
    "nano": TinyVLSpec(),
    "micro": TinyVLSpec(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                        vision_depth=2, vision_hidden_size=64, vision_num_heads=4, vision_intermediate_size=128,
                        fullatt_block_indexes=(1,)),
})
"""Named presets (tied, read-only). At vocab 300: nano 166,528 and micro 591,808 parameters; at
vocab 512: 180,096 and 618,944. A forward with two 56x56 images takes milliseconds on CPU."""


def resolve_vl_spec(spec: TinyVLSpec | str) -> TinyVLSpec:
    """Returns ``spec``, or the :data:`TINY_VL_SPECS` preset it names."""
    if isinstance(spec, TinyVLSpec):
        return spec
    if spec not in TINY_VL_SPECS:
        raise ValueError(f"unknown tiny VL model preset {spec!r}; known: {sorted(TINY_VL_SPECS)}")
    return TINY_VL_SPECS[spec]


def vision_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Config ids of the vision placeholders: ``image_token_id``, ``video_token_id``, start and end.

    ``video_token_id`` is ``<|video_pad|>`` if the tokenizer has it, else the byte token of 0xFF
    (see the module docstring). Raises ValueError if a needed token is not a single token.
    """
    ids = {
        "image_token_id": _single_token_id(tokenizer, ct.IMAGE_PAD),
        "vision_start_token_id": _single_token_id(tokenizer, ct.VISION_START),
        "vision_end_token_id": _single_token_id(tokenizer, ct.VISION_END),
    }
    video = _optional_token_id(tokenizer, VIDEO_PAD)
    if video is None:
        video = _optional_token_id(tokenizer, NEVER_ENCODED_BYTE_TOKEN)
    if video is None or video in ids.values():
        raise ValueError(f"tokenizer has neither {VIDEO_PAD!r} nor the byte-level token of 0xFF "
                         f"to serve as a video token id that never occurs in text")
    return {**ids, "video_token_id": video}


def build_tiny_vl(
    tokenizer: PreTrainedTokenizerBase, spec: TinyVLSpec | str = "nano", *, seed: int = 0
) -> Qwen2_5_VLForConditionalGeneration:
    """Builds a randomly initialised Qwen2.5-VL model sized for ``tokenizer``.

    Initialisation runs under ``torch.random.fork_rng`` seeded with ``seed``: the same seed gives
    the same weights, and the caller's global RNG state is left as it was.

    Args:
        tokenizer: gives the vocabulary size, pad/eos ids (bos = pad, as in Qwen) and the
            vision placeholder ids (:func:`vision_token_ids`).
        spec: a :class:`TinyVLSpec` or a :data:`TINY_VL_SPECS` name.
        seed: initialisation seed.

    Returns:
        The model in fp32 and eval mode. Inputs: ``input_ids`` [B, T] with one ``<|image_pad|>``
        per merged patch, ``pixel_values`` [P, 3 * temporal_patch * patch**2] and
        ``image_grid_thw`` [n_images, 3] from :func:`build_tiny_processor`.
    """
    spec = resolve_vl_spec(spec)
    special = special_token_ids(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config=_text_config(spec, len(tokenizer), special),
        vision_config=_vision_config(spec),
        tie_word_embeddings=spec.tie_word_embeddings,
        **vision_token_ids(tokenizer),
    )
    return init_tiny_model(Qwen2_5_VLForConditionalGeneration, config, special, seed=seed)


def build_tiny_processor(
    tokenizer: PreTrainedTokenizerBase,
    *,
    min_pixels: int,
    max_pixels: int,
    spec: TinyVLSpec | str = "nano",
    with_video_processor: bool | None = None,
) -> Qwen2_5_VLProcessor:
    """Builds the Qwen2.5-VL processor (real transformers classes) for ``tokenizer`` and ``spec``.

    Args:
        tokenizer: the model's tokenizer; its chat template becomes the processor's.
        min_pixels: images smaller than this are upscaled (kept as ``size["shortest_edge"]``).
        max_pixels: images larger than this are downscaled (``size["longest_edge"]``).
        spec: patch, temporal patch and merge sizes come from it.
        with_video_processor: include a ``Qwen2VLVideoProcessor``; ``None`` means when
            torchvision is available. Without one the processor is an
            :class:`~reopold_agent.vision.loading.ImageOnlyQwenVLProcessor`.

    Returns:
        A processor whose ``image_processor(images=[...])`` gives ``pixel_values`` [P, D] and
        ``image_grid_thw`` [n, 3], and whose ``__call__(images=..., text=...)`` expands each
        ``<|image_pad|>`` to ``grid_thw.prod() // merge**2`` copies.
    """
    spec = resolve_vl_spec(spec)
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    if with_video_processor is None:
        with_video_processor = is_torchvision_available()
    sizes = dict(patch_size=spec.patch_size, temporal_patch_size=spec.temporal_patch_size,
                 merge_size=spec.spatial_merge_size)
    image_processor = _image_processor_class()(min_pixels=min_pixels, max_pixels=max_pixels, **sizes)
    chat_template = getattr(tokenizer, "chat_template", None)
    if not with_video_processor:
        return ImageOnlyQwenVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=chat_template)
    from transformers import Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(**sizes), chat_template=chat_template)


def _text_config(spec: TinyVLSpec, vocab_size: int, special: dict[str, int]) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": list(spec.mrope_section)},
        **special,
    )


def _vision_config(spec: TinyVLSpec) -> dict[str, Any]:
    return dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        num_heads=spec.vision_num_heads,
        intermediate_size=spec.vision_intermediate_size,
        out_hidden_size=spec.hidden_size,
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        spatial_merge_size=spec.spatial_merge_size,
        window_size=spec.window_size,
        fullatt_block_indexes=list(spec.fullatt_block_indexes),
    )


def _image_processor_class() -> type:
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessor if is_torchvision_available() else Qwen2VLImageProcessorPil


def _optional_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return token_id


def _single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = _optional_token_id(tokenizer, token)
    if token_id is None or tokenizer.encode(token, add_special_tokens=False) != [token_id]:
        raise ValueError(f"tokenizer has no single token {token!r}; a VL model needs it as a placeholder")
    return token_id
