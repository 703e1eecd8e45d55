"""Offline tokenizer and tiny Qwen-family causal LMs, saved like real checkpoints.

Nothing here downloads anything. :func:`build_tokenizer` trains a byte-level BPE on a corpus
in about a second, :func:`build_causal_lm` builds a randomly initialised ``Qwen2ForCausalLM``
or ``Qwen3ForCausalLM`` from a :class:`TinyLMSpec`, and :func:`save_tiny` /
:func:`build_tiny_checkpoint` / :func:`cached_tiny_checkpoint` write a folder that
``AutoTokenizer.from_pretrained`` and ``AutoModelForCausalLM.from_pretrained`` load, the same
path a real model takes.

Tokenizer choices:

* Byte-level BPE: every byte is in the vocabulary, so any text encodes and
  ``decode(encode(text)) == text`` (no normaliser, no prefix space, no cleanup of spaces).
* Digits are split into single-digit pre-tokens (Qwen2's regex with ``\\p{N}`` instead of
  ``\\p{N}{1,3}``): copying a number is then copying digits, not learning a mapping between
  multi-digit tokens.
* Ids ``0..9`` are :data:`CONTROL_TOKENS` in order; each is one token. ``<|endoftext|>`` is the
  padding token, ``<|im_end|>`` the end-of-sequence token (pad != eos). As in Qwen2.5, the tool
  tags (``<tool_call>``, ``</tool_call>``, ``<tool_response>``, ``</tool_response>``) are added
  tokens with ``special=False``: they stay single tokens and survive
  ``decode(..., skip_special_tokens=True)``, which drops only the ChatML and vision tokens.
* Padding side is ``left`` by default (batched ``generate`` needs it); pass
  ``padding_side="right"`` or set ``tokenizer.padding_side`` for training batches.

Deliberate departure: the tokenizer's ``seed`` argument changes nothing (BPE training has no
randomness); it is accepted so every builder takes one and it is part of the cache key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from . import chat_template as ct

CONTROL_TOKENS = (
    ct.ENDOFTEXT,
    ct.IM_START,
    ct.IM_END,
    ct.TOOL_CALL_START,
    ct.TOOL_CALL_END,
    ct.TOOL_RESPONSE_START,
    ct.TOOL_RESPONSE_END,
    ct.VISION_START,
    ct.VISION_END,
    ct.IMAGE_PAD,
)
"""Single-token strings of the tiny tokenizer; their ids are their positions (0..9)."""
NON_SPECIAL_CONTROL_TOKENS = frozenset(
    {ct.TOOL_CALL_START, ct.TOOL_CALL_END, ct.TOOL_RESPONSE_START, ct.TOOL_RESPONSE_END}
)
"""Control tokens added with ``special=False`` so ``skip_special_tokens`` keeps them."""
DIGIT_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Pre-tokenizer regex: words with one leading non-letter, single digits, punctuation runs, spaces."""
MARKER_FILE = "reopold_tiny.json"
"""Written last into a checkpoint folder; its presence means the folder is complete."""
FACTORY_VERSION = 1
"""Bumped whenever this module would build different files from the same inputs."""
_CONTROL_SPLIT_RE = re.compile("|".join(re.escape(t) for t in CONTROL_TOKENS))


def _training_pieces(texts: list[str]) -> Iterator[str]:
    # Control tokens are never BPE-merged at encode time, so keep them out of merge statistics.
    for text in texts:
        for piece in _CONTROL_SPLIT_RE.split(text):
            if piece:
                yield piece


def _train_backend(texts: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    """Byte-level BPE with the digit-splitting pre-tokenizer and ids 0..9 = CONTROL_TOKENS."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(DIGIT_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(CONTROL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_pieces(texts), trainer=trainer)
    special = [t for t in CONTROL_TOKENS if t not in NON_SPECIAL_CONTROL_TOKENS]
    plain = [t for t in CONTROL_TOKENS if t in NON_SPECIAL_CONTROL_TOKENS]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    return backend


def build_tokenizer(
    corpus: Iterable[str], *, vocab_size: int = 512, seed: int = 0, padding_side: str = "left"
) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer with ChatML control tokens and the tool chat template.

    Args:
        corpus: texts to learn merges from (rendered conversations work well). Same corpus,
            same vocabulary and merges.
        vocab_size: upper bound on ``len(tokenizer)``; at least 256 bytes + 10 control tokens.
            Training stops early when no pair occurs twice.
        seed: has no effect (BPE training is deterministic); see the module docstring.
        padding_side: ``"left"`` (for batched generation) or ``"right"``.

    Returns:
        A fast tokenizer with ``pad_token="<|endoftext|>"``, ``eos_token="<|im_end|>"``, no
        BOS, and :data:`reopold_agent.demo.chat_template.CHATML_TOOL_TEMPLATE` attached.
    """
    del seed
    texts = _materialize(corpus)
    min_vocab = 256 + len(CONTROL_TOKENS)
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size={vocab_size} is below {min_vocab} (256 bytes + control tokens)")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

    backend = _train_backend(texts, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=ct.IM_END,
        pad_token=ct.ENDOFTEXT,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        padding_side=padding_side,
        extra_special_tokens=[ct.IM_START, ct.VISION_START, ct.VISION_END, ct.IMAGE_PAD],
    )
    tokenizer.chat_template = ct.CHATML_TOOL_TEMPLATE
    for i, token in enumerate(CONTROL_TOKENS):
        if tokenizer.convert_tokens_to_ids(token) != i:
            raise RuntimeError(f"control token {token!r} did not get id {i}")
    return tokenizer


def check_attention_shape(hidden_size: int, num_heads: int, num_kv_heads: int) -> None:
    """Raise ValueError unless the heads split ``hidden_size`` and the kv heads group the heads."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={num_heads}")


@dataclasses.dataclass(frozen=True)
class TinyLMSpec:
    """Shape of a tiny Qwen-family causal LM (vocabulary size comes from the tokenizer)."""

    family: str = "qwen3"
    """``"qwen2"`` (q/k/v biases) or ``"qwen3"`` (q/k RMS norms, no biases)."""
    hidden_size: int = 128
    """Width of the residual stream."""
    intermediate_size: int = 384
    """Width of the SwiGLU MLP."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 4
    """Query heads; ``hidden_size`` must be a multiple."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide ``num_heads``."""
    max_position_embeddings: int = 2048
    """Longest sequence the rotary embedding is configured for."""
    tie_word_embeddings: bool = True
    """Share the input embedding with the output projection."""

    def __post_init__(self) -> None:
        if self.family not in ("qwen2", "qwen3"):
            raise ValueError(f"family must be 'qwen2' or 'qwen3', got {self.family!r}")
        check_attention_shape(self.hidden_size, self.num_heads, self.num_kv_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("intermediate_size", "num_layers", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def num_parameters(self, vocab_size: int) -> int:
        """Exact parameter count of the model :func:`build_causal_lm` builds for ``vocab_size``."""
        h, hd = self.hidden_size, self.head_dim
        q_out, kv_out = self.num_heads * hd, self.num_kv_heads * hd
        attn = h * q_out + 2 * h * kv_out + q_out * h
        attn += q_out + 2 * kv_out if self.family == "qwen2" else 2 * hd
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        embed = vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_layers * layer + h


TINY_SPECS: Mapping[str, TinyLMSpec] = MappingProxyType({
    "nano": TinyLMSpec(hidden_size=64, intermediate_size=256, num_layers=1, num_heads=4, num_kv_heads=2),
    "micro": TinyLMSpec(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4, num_kv_heads=2),
    "small": TinyLMSpec(hidden_size=256, intermediate_size=512, num_layers=3, num_heads=4, num_kv_heads=2),
})
"""Named presets (all Qwen3, tied, read-only). At vocab 512: nano 94,432, micro 459,520, small
1,902,720 parameters; micro is the field notes' 0.46M-parameter teacher shape."""


def resolve_spec(spec: TinyLMSpec | str) -> TinyLMSpec:
    """Returns ``spec``, or the :data:`TINY_SPECS` preset it names."""
    if isinstance(spec, TinyLMSpec):
        return spec
    if spec not in TINY_SPECS:
        raise ValueError(f"unknown tiny model preset {spec!r}; known: {sorted(TINY_SPECS)}")
    return TINY_SPECS[spec]


def build_causal_lm(
    tokenizer: PreTrainedTokenizerFast, spec: TinyLMSpec | str, *, seed: int = 0
) -> PreTrainedModel:
    """Builds a randomly initialised Qwen2/Qwen3 causal LM sized for ``tokenizer``.

    Initialisation runs under ``torch.random.fork_rng`` seeded with ``seed``: the same seed
    gives the same weights, and the caller's global RNG state is left as it was.

    Args:
        tokenizer: gives the vocabulary size and the pad/eos ids (bos = pad, as in Qwen).
        spec: a :class:`TinyLMSpec` or a :data:`TINY_SPECS` name.
        seed: initialisation seed.

    Returns:
        The model in fp32 and eval mode, with ``generation_config`` carrying the eos/pad ids.
    """
    spec = resolve_spec(spec)
    ids = special_token_ids(tokenizer)
    config_cls, model_cls = (
        (Qwen2Config, Qwen2ForCausalLM) if spec.family == "qwen2" else (Qwen3Config, Qwen3ForCausalLM)
    )
    extra = {"head_dim": spec.head_dim} if spec.family == "qwen3" else {}
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        **extra,
        **ids,
    )
    return init_tiny_model(model_cls, config, ids, seed=seed)


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """pad, bos and eos ids of a tiny model (bos = pad, as in Qwen).

    Raises:
        ValueError: the tokenizer lacks an eos or pad token.
    """
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("tokenizer needs both eos_token and pad_token set")
    return dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id)


def init_tiny_model(model_cls: type, config: object, ids: dict[str, int], *, seed: int) -> PreTrainedModel:
    """``model_cls(config)`` randomly initialised under ``torch.random.fork_rng`` seeded with
    ``seed`` (the caller's RNG state is untouched), in fp32 and eval mode, with a
    ``generation_config`` carrying ``ids`` (:func:`special_token_ids`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.to(torch.float32)
    model.generation_config = GenerationConfig(**ids)
    return model.eval()


def save_tiny(model: PreTrainedModel, tokenizer_or_processor: Any, path: str | os.PathLike) -> Path:
    """Saves a tiny model, text or vision-language, into ``path`` (created if missing).

    Args:
        model: from :func:`build_causal_lm` or :func:`~reopold_agent.demo.tiny_vl.build_tiny_vl`.
        tokenizer_or_processor: the text model's tokenizer, or the VL model's processor
            (:func:`~reopold_agent.demo.tiny_vl.build_tiny_processor`), which saves its
            ``processor_config.json``, the tokenizer files and the chat template.
        path: the checkpoint folder.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if model.generation_config.eos_token_id is None:
        tokenizer = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer_or_processor.save_pretrained(path)
    return path


def checkpoint_key(corpus: Iterable[str], spec: TinyLMSpec | str, seed: int, vocab_size: int = 512) -> str:
    """Content hash naming the checkpoint built from these inputs with these library versions."""
    return _key_and_manifest(_materialize(corpus), resolve_spec(spec), seed, vocab_size)[0]


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a checkpoint whose marker file was written (the last step)."""
    return (Path(path) / MARKER_FILE).is_file()


def build_tiny_checkpoint(
    path: str | os.PathLike,
    corpus: Iterable[str],
    spec: TinyLMSpec | str,
    seed: int = 0,
    *,
    vocab_size: int = 512,
) -> Path:
    """Builds tokenizer and model and saves them into ``path``, which must not exist yet.

    The folder is written under a temporary name beside ``path`` and renamed into place, with
    :data:`MARKER_FILE` (inputs, versions, parameter count) written last.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; refusing to overwrite it")
    texts, spec = _materialize(corpus), resolve_spec(spec)
    key, manifest = _key_and_manifest(texts, spec, seed, vocab_size)
    if not _write_atomically(path, texts, spec, seed, vocab_size, {"key": key, **manifest}):
        raise FileExistsError(f"{path} was created by someone else while building")
    return path


def cached_tiny_checkpoint(
    cache_dir: str | os.PathLike,
    corpus: Iterable[str],
    spec: TinyLMSpec | str,
    seed: int = 0,
    *,
    vocab_size: int = 512,
) -> Path:
    """Returns ``cache_dir/<key>``, building it only if no complete checkpoint is there.

    The key hashes the corpus, spec, seed, vocabulary size, :data:`FACTORY_VERSION` and the
    torch/transformers/tokenizers versions. An incomplete folder (no marker) is rebuilt;
    two processes racing on one key both succeed and one copy is kept.
    """
    texts, spec = _materialize(corpus), resolve_spec(spec)
    key, manifest = _key_and_manifest(texts, spec, seed, vocab_size)
    path = Path(cache_dir) / key
    if is_complete_checkpoint(path):
        return path
    if path.exists() and not is_complete_checkpoint(path):  # left by a non-atomic writer
        shutil.rmtree(path)
    _write_atomically(path, texts, spec, seed, vocab_size, {"key": key, **manifest})
    return path


def _materialize(corpus: Iterable[str]) -> list[str]:
    if isinstance(corpus, str):
        raise TypeError("corpus must be an iterable of strings, not a single string")
    texts = list(corpus)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"corpus[{i}] is {type(text).__name__}, expected str")
    return texts


def _key_and_manifest(texts: list[str], spec: TinyLMSpec, seed: int, vocab_size: int) -> tuple[str, dict]:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    manifest = {
        "corpus_sha256": digest.hexdigest(),
        "num_texts": len(texts),
        "spec": dataclasses.asdict(spec),
        "seed": seed,
        "vocab_size": vocab_size,
        "factory_version": FACTORY_VERSION,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    blob = json.dumps(manifest, sort_keys=True).encode("utf-8")
    return f"{spec.family}-{hashlib.sha256(blob).hexdigest()[:20]}", manifest


def _write_atomically(
    path: Path, texts: list[str], spec: TinyLMSpec, seed: int, vocab_size: int, manifest: dict
) -> bool:
    """Builds into a temporary sibling and renames it to ``path``; False if ``path`` appeared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the checkpoint should be as readable as a plain mkdir
    try:
        tokenizer = build_tokenizer(texts, vocab_size=vocab_size, seed=seed)
        model = build_causal_lm(tokenizer, spec, seed=seed)
        save_tiny(model, tokenizer, tmp)
        manifest = {**manifest, "num_parameters": model.num_parameters(), "len_tokenizer": len(tokenizer)}
        (tmp / MARKER_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(tmp, path)
        except OSError:
            if is_complete_checkpoint(path):
                return False
            raise
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
