"""Loading text and vision-language (VL) checkpoints and their processors with one clear error.

:func:`load_model` picks ``AutoModelForImageTextToText`` for a config with a ``vision_config``
(Qwen2-VL, Qwen2.5-VL, ...) and ``AutoModelForCausalLM`` otherwise; :func:`load_processor`
returns an object with ``.image_processor`` and ``.tokenizer``. Both go through
``from_pretrained``, the path a hub model takes; any failure becomes a :class:`ModelLoadError`
whose message is one line naming what was being loaded and from where.

Processor quirks handled here (transformers 5.x):

* ``Qwen2_5_VLProcessor`` requires a video processor (``None`` is rejected), and Qwen2-VL video
  processors need torchvision. Without one, :class:`ImageOnlyQwenVLProcessor` drops the
  ``video_processor`` argument.
* ``AutoProcessor.from_pretrained`` cannot resolve such a subclass by the name saved in
  ``processor_config.json``; it then silently returns only the tokenizer. :func:`load_processor`
  notices the missing image processor and pairs ``AutoImageProcessor`` with ``AutoTokenizer``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PretrainedConfig,
    Qwen2_5_VLProcessor,
)

from ..errors import first_line


class ModelLoadError(ValueError):
    """A model, config or processor could not be loaded; the message is one line."""


class ImageOnlyQwenVLProcessor(Qwen2_5_VLProcessor):
    """Qwen2-VL / Qwen2.5-VL processor without a video processor (images and text only).

    The processor attributes are read from ``__init__``'s signature, so this one has exactly
    ``image_processor`` and ``tokenizer``; the parent's positional ``video_processor=None`` is
    dropped by ``ProcessorMixin.__init__``. Calls with ``images=`` and ``text=`` behave as the
    parent's (one ``<|image_pad|>`` becomes ``grid_thw.prod() // merge**2`` copies and
    ``mm_token_type_ids`` is returned); ``videos=`` is ignored.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


def is_vision_language(config_or_path: PretrainedConfig | str | os.PathLike) -> bool:
    """Whether a config (or the config saved at a path or hub id) has a ``vision_config``.

    Raises:
        ModelLoadError: ``config_or_path`` is a path whose config cannot be read.
    """
    config = config_or_path
    if not isinstance(config, PretrainedConfig):
        config = _load_config(str(config_or_path), what="the config of", trust_remote_code=False)
    return getattr(config, "vision_config", None) is not None


def load_model(
    path_or_id: str | os.PathLike, *, dtype: torch.dtype, role: str, trust_remote_code: bool = False
) -> Any:
    """Loads a causal LM or a VL model for conditional generation, by the kind of its config.

    Args:
        path_or_id: checkpoint folder or hub id.
        dtype: parameter dtype (e.g. ``torch.bfloat16``).
        role: what the model is for (``"student"``, ``"teacher"``); named in errors.
        trust_remote_code: passed to ``from_pretrained``.

    Returns:
        ``*ForConditionalGeneration`` (VL) or ``*ForCausalLM`` (text), with its weights.

    Raises:
        ModelLoadError: ``cannot load {role} model {path!r}: <first line of the cause>``.
    """
    path = str(path_or_id)
    config = _load_config(path, what=f"{role} model", trust_remote_code=trust_remote_code)
    auto_class = AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM
    try:
        return auto_class.from_pretrained(path, config=config, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming role and path
        raise ModelLoadError(f"cannot load {role} model {path!r}: {first_line(exc)}") from exc


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (``activation_checkpointing_enable`` in recent
    transformers 5.x, ``gradient_checkpointing_enable`` before the rename)."""
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()


def load_processor(path_or_id: str | os.PathLike) -> Any:
    """Loads the processor of a VL checkpoint: an object with ``.image_processor`` and ``.tokenizer``.

    ``AutoProcessor.from_pretrained`` first (hub Qwen2-VL / Qwen2.5-VL folders, with
    ``preprocessor_config.json`` or a ``processor_config.json`` holding an ``image_processor``).
    When it gives no image processor (an image-only processor saved by
    :mod:`reopold_agent.demo.tiny_vl`, or no torchvision for the video processor), a Qwen2-VL-family
    image processor from ``AutoImageProcessor`` is paired with ``AutoTokenizer``'s tokenizer in an
    :class:`ImageOnlyQwenVLProcessor`.

    Raises:
        ModelLoadError: the folder has no image processor config, or it is not a Qwen2-VL-family
            one that can be paired with the tokenizer, or the tokenizer cannot be loaded.
    """
    path = str(path_or_id)
    try:
        processor = AutoProcessor.from_pretrained(path)
    except Exception:  # noqa: BLE001 - e.g. a video processor without torchvision; fall back below
        processor = None
    if _has_image_processor_and_tokenizer(processor):
        return processor
    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"cannot load an image processor from {path!r} (no preprocessor_config.json or "
            f"processor_config.json with an image processor?): {first_line(exc)}"
        ) from exc
    if not hasattr(image_processor, "merge_size"):
        raise ModelLoadError(
            f"cannot load a processor from {path!r}: AutoProcessor gave {type(processor).__name__} and the image "
            f"processor {type(image_processor).__name__} is not a Qwen2-VL-family one (no merge_size)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load tokenizer from {path!r}: {first_line(exc)}") from exc
    return ImageOnlyQwenVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=getattr(tokenizer, "chat_template", None))


def _load_config(path: str, *, what: str, trust_remote_code: bool) -> PretrainedConfig:
    """``AutoConfig.from_pretrained``; failures read ``cannot load {what} {path!r}: ...``."""
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load {what} {path!r}: {first_line(exc)}") from exc


def _has_image_processor_and_tokenizer(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None and getattr(processor, "tokenizer", None) is not None

