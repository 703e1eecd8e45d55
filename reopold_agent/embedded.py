"""The embedded offline default: a tiny teacher and a weaker tiny student, built once and cached.

With no model named, ``reopold-agent train --task tool_math`` needs a teacher that solves the
task with its tool and a student that does not yet. Both are built here from nothing, offline and
deterministically: a byte-level BPE tokenizer trained on rendered gold conversations, then two
Qwen3-style models of different sizes (a real capacity gap, as in the paper) fine-tuned on gold
trajectories for different budgets. The result is cached under
``<cache_dir>/embedded/<task>-<hash of the recipe and library versions>/{teacher,student}``;
building happens once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .supervised import SupervisedConfig, supervised_train, tokenize_conversation
from .tiny_models import TINY_SPECS, TinyLMSpec, build_causal_lm, build_tokenizer
from .tool_protocol import assistant_text
from .vision.tiny import TinyVLSpec, build_tiny_vl, save_tiny_vl

RECIPE_VERSION = 1


@dataclass(frozen=True)
class EmbeddedRecipe:
    """How the embedded teacher and student of a task are built."""

    task: str
    teacher_spec: TinyLMSpec | TinyVLSpec
    student_spec: TinyLMSpec | TinyVLSpec
    """Text models (:class:`TinyLMSpec`) or vision-language ones (:class:`TinyVLSpec`); both roles
    are of the same kind."""
    teacher_sft: SupervisedConfig
    student_sft: SupervisedConfig
    num_conversations: int = 4000
    """Gold train conversations used for the tokenizer and for fine-tuning."""
    vocab_size: int = 512
    seed: int = 0
    image_pixels: int = 0
    """Vision-language recipes: every image is resized to about this many pixels (the saved
    processor's limits, and the preset's ``rollout.image_min_pixels`` / ``image_max_pixels``)."""
    alignment_sft: SupervisedConfig | None = None
    """Vision-language recipes: a first supervised stage, for both roles, on short
    image-to-answer conversations (:func:`alignment_conversations`); the task stage then trains on
    the task conversations mixed with as many alignment ones, so reading images is not unlearned."""

    @property
    def vision_language(self) -> bool:
        return isinstance(self.teacher_spec, TinyVLSpec)


RECIPES: dict[str, EmbeddedRecipe] = {
    # Measured on this project's 2-core reference machine: the teacher (0.46M parameters) solves
    # 100% of held-out problems greedily; the student (0.19M, untied, 2 layers) is stopped in the
    # middle of learning to copy numbers (20% greedy, 15% sampled at top-p 0.9). 50 more
    # supervised steps would take it past 90%: it has the capacity, it lacks training signal.
    "tool_math": EmbeddedRecipe(
        task="tool_math",
        teacher_spec=TINY_SPECS["micro"],
        student_spec=TinyLMSpec(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4,
                                num_kv_heads=2, tie_word_embeddings=False),
        teacher_sft=SupervisedConfig(steps=800, batch_size=32, lr=3e-3, warmup_steps=100, seed=1),
        student_sft=SupervisedConfig(steps=650, batch_size=32, lr=3e-3, warmup_steps=50, seed=2),
    ),
    # Tiny Qwen2.5-VL models on visual_qa "dots" (name the colour of the dot in a given cell,
    # zooming into it), every image at 56x56 pixels = 4 image tokens. Both are first aligned on
    # zoomed-cell -> colour pairs, then trained on the tool conversations (mixed with the pairs;
    # learning rates above ~5e-4 collapse the tiny vision tower to a constant, measured). The
    # teacher (0.6M) zooms and answers ~100% of held-out items greedily; the student (0.34M,
    # narrower language and vision towers) is the same recipe stopped half-way (250 of 500
    # steps): it zooms correctly but reads the zoomed colour only ~60% of the time greedily
    # and ~40% sampled.
    "visual_qa": EmbeddedRecipe(
        task="visual_qa",
        teacher_spec=TinyVLSpec(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                                vision_depth=2, vision_hidden_size=64, vision_num_heads=4,
                                vision_intermediate_size=128, fullatt_block_indexes=(1,)),
        student_spec=TinyVLSpec(hidden_size=96, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
                                vision_depth=1, vision_hidden_size=48, vision_num_heads=4,
                                vision_intermediate_size=96),
        alignment_sft=SupervisedConfig(steps=800, batch_size=32, lr=5e-4, warmup_steps=30, seed=1),
        teacher_sft=SupervisedConfig(steps=600, batch_size=32, lr=5e-4, warmup_steps=30, seed=2),
        student_sft=SupervisedConfig(steps=500, batch_size=32, lr=5e-4, warmup_steps=30, seed=2, stop_after=250),
        num_conversations=2000,
        image_pixels=56 * 56,
    ),
}


@dataclass(frozen=True)
class EmbeddedModels:
    teacher: Path
    student: Path


def gold_conversations(task: str, *, count: int, seed: int = 0, split: str = "train") -> list[list[dict]]:
    """``count`` gold conversations (system, user, assistant turns as raw text, tool results).

    ``visual_qa`` conversations use the easy ``"dots"`` level (a tiny vision-language model can
    learn it); their user message and zoom result hold PIL images.
    """
    from .tasks import tool_math, visual_qa

    makers = {
        "tool_math": (tool_math, lambda index: tool_math.make_item(split, index, seed=seed)),
        "visual_qa": (visual_qa, lambda index: visual_qa.make_item(split, index, seed=seed, level="dots")),
    }
    if task not in makers:
        raise ValueError(f"no gold conversation generator wired for task {task!r}")
    module, make_item = makers[task]
    out = []
    for index in range(count):
        item = make_item(index)
        turns = [
            {"role": "assistant", "content": assistant_text(m)} if m["role"] == "assistant" else m
            for m in module.gold_turns(item)
        ]
        out.append(module.prompt_messages(item) + turns)
    return out


def alignment_conversations(task: str, *, count: int, seed: int = 0, split: str = "train") -> list[list[dict]]:
    """``count`` image-to-answer conversations for the vision-alignment stage (visual_qa dots)."""
    if task != "visual_qa":
        raise ValueError(f"no alignment conversations for task {task!r}")
    from .tasks import visual_qa

    return [visual_qa.alignment_conversation(visual_qa.make_item(split, index, seed=seed, level="dots"))
            for index in range(count)]


def task_tokenizer(conversations: list[list[dict]], *, vocab_size: int = 512, seed: int = 0):
    """Byte-level BPE tokenizer (with the tool chat template) trained on rendered conversations."""
    probe = build_tokenizer([""], vocab_size=vocab_size)
    corpus = [probe.apply_chat_template(c, tokenize=False) for c in conversations]
    return build_tokenizer(corpus, vocab_size=vocab_size, seed=seed)


def ensure_embedded_models(task: str, cache_dir: str | Path, *,
                           log: Callable[[str], None] = print) -> EmbeddedModels:
    """Paths of the task's embedded teacher and student, building them on first use."""
    if task not in RECIPES:
        raise ValueError(f"task {task!r} has no embedded default models; name them with --student and --teacher "
                         f"(embedded defaults exist for: {', '.join(sorted(RECIPES))})")
    recipe = RECIPES[task]
    folder = Path(cache_dir) / "embedded" / f"{task}-{recipe_key(recipe)}"
    models = EmbeddedModels(folder / "teacher", folder / "student")
    if (folder / "COMPLETE").exists():
        return models
    log(f"building the embedded {task} teacher and student once (cached in {folder}) ...")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        report = build_embedded(recipe, tmp, log=log)
        (tmp / "build.json").write_text(json.dumps(report, indent=2))
        (tmp / "COMPLETE").write_text("")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache is shared like any model folder
        if (folder / "COMPLETE").exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return models


def build_embedded(recipe: EmbeddedRecipe, out_dir: Path, *, log: Callable[[str], None] = print) -> dict:
    """Build tokenizer, teacher and student into ``out_dir``; returns timings and losses."""
    conversations = gold_conversations(recipe.task, count=recipe.num_conversations, seed=recipe.seed)
    alignment = []
    if recipe.alignment_sft is not None:
        alignment = alignment_conversations(recipe.task, count=recipe.num_conversations, seed=recipe.seed)
    tokenizer = task_tokenizer(conversations + alignment, vocab_size=recipe.vocab_size, seed=recipe.seed)
    processor = vision = None
    if recipe.vision_language:
        processor, vision = _tiny_processor(recipe, tokenizer)
    examples = [tokenize_conversation(tokenizer, c, vision=vision) for c in conversations]
    aligned = [tokenize_conversation(tokenizer, c, vision=vision) for c in alignment]
    report: dict = {"recipe": _recipe_dict(recipe), "vocab": len(tokenizer)}
    threads = torch.get_num_threads()
    try:
        _build_models(recipe, tokenizer, examples, aligned, out_dir, report, log, processor, vision)
    finally:
        torch.set_num_threads(threads)
    return report


def _tiny_processor(recipe: EmbeddedRecipe, tokenizer):
    """The tiny VL processor of a recipe and the VisionProcessor that prepares its SFT images."""
    from .vision import VisionProcessor
    from .vision.tiny import build_tiny_processor, vision_token_ids

    spec = recipe.teacher_spec
    processor = build_tiny_processor(tokenizer, min_pixels=recipe.image_pixels, max_pixels=recipe.image_pixels,
                                     spec=spec)
    vision = VisionProcessor(processor.image_processor, image_token_id=vision_token_ids(tokenizer)["image_token_id"],
                             patch_size=spec.patch_size, spatial_merge_size=spec.spatial_merge_size,
                             min_pixels=recipe.image_pixels, max_pixels=recipe.image_pixels)
    return processor, vision


def _build_models(recipe, tokenizer, examples, aligned, out_dir: Path, report: dict, log, processor=None,
                  vision=None) -> None:
    # A fixed thread count per role gives the same floating-point results on any machine. The
    # student is stopped in the middle of a sharp transition, so it is built on one thread.
    for role, spec, sft, seed, threads in (
        ("teacher", recipe.teacher_spec, recipe.teacher_sft, recipe.seed + 11, 2),
        ("student", recipe.student_spec, recipe.student_sft, recipe.seed + 23, 1),
    ):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build_tiny_vl(tokenizer, spec, seed=seed) if vision else build_causal_lm(tokenizer, spec, seed=seed)
            stages = [("sft", examples, sft)]
            if aligned:
                stages = [("alignment", aligned, recipe.alignment_sft), ("sft", examples + aligned, sft)]
            for stage, data, config in stages:
                every = max(config.steps // 5, 1)
                loss = supervised_train(
                    model, data, config, pad_token_id=tokenizer.pad_token_id, vision=vision,
                    on_step=lambda s, l, stage=stage, role=role, n=config.steps:
                    log(f"  {role} {stage} {s + 1}/{n} loss {l:.3f}") if (s + 1) % every == 0 else None,
                )
        if processor is not None:
            save_tiny_vl(model, processor, out_dir / role)
        else:
            model.save_pretrained(out_dir / role)
            tokenizer.save_pretrained(out_dir / role)
        seconds = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        report[role] = {"params": params, "final_loss": loss, "seconds": seconds}
        log(f"  {role}: {params:,} parameters, final loss {loss:.3f}, {seconds:.0f} s")


def recipe_key(recipe: EmbeddedRecipe) -> str:
    import tokenizers
    import transformers

    blob = json.dumps({"recipe": _recipe_dict(recipe), "version": RECIPE_VERSION,
                       "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                       "tokenizers": tokenizers.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _recipe_dict(recipe: EmbeddedRecipe) -> dict:
    return json.loads(json.dumps(asdict(recipe), default=str))
