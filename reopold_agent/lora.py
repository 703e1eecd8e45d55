"""LoRA students: a ``peft`` adapter on the student, trained while the base weights stay frozen.

:func:`attach_lora` wraps the loaded student in a ``peft.PeftModel`` before the optimiser is
made; only the adapter's parameters require gradients (:func:`trainable_parameters`). The
wrapped student is what checkpoints save (its ``save_pretrained`` writes the adapter alone:
``adapter_model.safetensors`` and ``adapter_config.json``); sampling and scoring go through
:func:`adapted_model`, the base model with the adapter layers injected and active, which is
an ordinary ``*ForCausalLM`` to the rollout backend and the chunked scorer. At the end of a run
:func:`save_merged` writes the adapter folded into the base weights, a folder that loads with
``from_pretrained``. A checkpoint's adapter folder loads as a student or teacher too
(:func:`load_merged_adapter`: the base its ``adapter_config.json`` names, adapter folded in).

``peft`` is imported only when a run asks for an adapter (``pip install 'reopold-agent[lora]'``);
:func:`is_lora_model` and the checkpoint helpers work without it installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .lora_config import LoraSettings


class LoraUnavailable(RuntimeError):
    """``model.lora`` is set and the ``peft`` library is not installed."""


def require_peft() -> Any:
    """The ``peft`` module.

    Raises:
        LoraUnavailable: it is not installed (the message says how to install it).
    """
    try:
        import peft
    except ImportError:
        raise LoraUnavailable("model.lora needs the peft library: pip install 'reopold-agent[lora]' "
                              "(or pip install peft)") from None
    return peft


def attach_lora(model: Any, settings: LoraSettings, *, seed: int = 0) -> Any:
    """``model`` wrapped in a fresh LoRA adapter; the base weights no longer require gradients.

    The adapter's random initialisation draws from torch's CPU RNG seeded with ``seed`` inside
    a fork (the global RNG state is restored after), so a run and its repetition start from
    the same adapter.

    A student with activation checkpointing turned on gets gradients on its input embeddings'
    output, so that checkpointed blocks whose own weights are frozen still pass gradients back
    to the adapters before them.

    Raises:
        LoraUnavailable: ``peft`` is not installed.
        ValueError: no module of ``model`` matches ``settings.target_modules``.
    """
    peft = require_peft()
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=settings.target_modules, bias="none")
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    if getattr(model, flag, False):
        model.enable_input_require_grads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def is_lora_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (False whenever ``peft`` was never imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def adapted_model(model: Any) -> Any:
    """The causal LM that samples and scores: for a LoRA student its base model with the adapter
    layers injected (and active); any other model as it is. Both share ``model``'s parameters."""
    return model.get_base_model() if is_lora_model(model) else model


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    """The parameters the optimiser updates: the adapter's for a LoRA student, else all."""
    return [p for p in model.parameters() if p.requires_grad]


def checkpoint_weights(model: Any) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of ``model`` holds, by the names its ``save_pretrained`` writes:
    the adapter's alone for a LoRA student (the base is the student's folder), else the full
    state dict."""
    if not is_lora_model(model):
        return model.state_dict()
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_checkpoint_weights(model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` (named as :func:`checkpoint_weights` names them) into ``model``."""
    if not is_lora_model(model):
        model.load_state_dict(weights, strict=False)
        return
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise ValueError(f"adapter weights {result.unexpected_keys[:3]} have no place in the student")


def save_merged(model: Any, out: str | Path, *, tokenizer: Any = None, image_processor: Any = None) -> Path:
    """Fold the adapter of the LoRA student ``model`` into its base weights and save the result
    to ``out`` as a plain model folder (with the tokenizer and image processor when given).

    The merge happens in place: ``model`` is spent afterwards (call it when training is over).
    """
    out = Path(out)
    merged = model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    for part in (tokenizer, image_processor):
        if part is not None:
            part.save_pretrained(out)
    return out


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a saved adapter (a LoRA run's checkpoint) rather than a model folder."""
    folder = Path(path)
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter folder was trained on: ``base_model_name_or_path`` of its
    ``adapter_config.json`` (the student's path as the run named it).

    Raises:
        ValueError: the config cannot be read or names no base model.
    """
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the adapter config ({type(exc).__name__})") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path} names no base model (base_model_name_or_path)")
    return base


def load_merged_adapter(adapter_dir: str | Path, load_base: Callable[[str], Any]) -> Any:
    """The base model the adapter in ``adapter_dir`` names, loaded with ``load_base(path)``, with
    the adapter folded into its weights: a plain model to sample, score or train.

    Raises:
        LoraUnavailable: ``peft`` is not installed.
        ValueError: the adapter config names no base model.
    """
    peft = require_peft()
    base = load_base(adapter_base(adapter_dir))
    return peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
