"""The embedded offline default: a tiny teacher and a weaker tiny student, built once and cached.

With no model named, ``reopold-agent train --task tool_math`` needs a teacher that solves the
task with its tool and a student that does not yet. Both are built here from nothing, offline and
deterministically: a byte-level BPE tokenizer trained on rendered gold conversations, then two
Qwen3-style models of different sizes (a real capacity gap, as in the paper) fine-tuned on gold
trajectories. Where a role's training stops is decided by a measurement, not a step count: every
so many steps the model plays held-out problems greedily (through the real environment and
sandbox) and stops once its accuracy is inside the role's :class:`AccuracyTarget` band. Learning
on these tasks is abrupt (a few dozen steps take a model from 10% to 80%), so a fixed step count
lands at very different accuracies on CPUs whose floating-point results differ; a measured stop
does not. ``build.json`` records every measurement and what was reached. The result is cached
under ``<cache_dir>/embedded/<task>-<hash of the recipe and library versions>/{teacher,student}``;
building happens once per machine. A build holds the recipe's lock file (``.<folder>.lock``): a
second process asking for the same recipe waits for it and then uses its result, and the
temporary folder of a build that was killed is removed by the next build.
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
from typing import Any, Callable

import torch

from ..file_lock import FileLock
from .measured_stop import AccuracyProbe, AccuracyTarget, probe_accuracy, train_to_target
from ..rollout.config import RolloutConfig
from ..supervised import SupervisedConfig, SupervisedRun, tokenize_conversation
from .tiny_models import TINY_SPECS, TinyLMSpec, build_causal_lm, build_tokenizer, save_tiny
from ..tool_protocol import assistant_text
from .tiny_vl import TinyVLSpec, build_tiny_vl

RECIPE_VERSION = 2


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
    teacher_target: AccuracyTarget | None = None
    """When the teacher's training stops (None: after ``teacher_sft.steps``)."""
    student_target: AccuracyTarget | None = None
    """When the student's training stops (None: after ``student_sft.stop_after or steps``)."""
    probe: AccuracyProbe | None = None
    """Problems the targets are measured on; required when a target is set."""
    build_threads: tuple[int, int] = (1, 1)
    """Torch threads of the teacher's and the student's training and measurements. One thread
    each: the build then gives the same models whatever the run's thread settings, and a second
    busy core does not slow it several-fold (two threads then wait on each other)."""

    def __post_init__(self) -> None:
        if (self.teacher_target or self.student_target) and self.probe is None:
            raise ValueError("an embedded recipe with an accuracy target needs a probe")

    @property
    def vision_language(self) -> bool:
        return isinstance(self.teacher_spec, TinyVLSpec)


RECIPES: dict[str, EmbeddedRecipe] = {
    # The teacher (0.46M parameters) trains until it solves at least 95% of the probe problems
    # greedily. The student (0.19M, untied, 2 layers; head_dim 32, which vLLM's CPU attention
    # accepts) follows a longer schedule and is stopped once it solves 15-35% greedily: in the
    # middle of learning to copy numbers into its tool call and answer. It has the capacity to
    # solve the task; what it lacks is training signal.
    "tool_math": EmbeddedRecipe(
        task="tool_math",
        teacher_spec=TINY_SPECS["micro"],
        student_spec=TinyLMSpec(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=2,
                                num_kv_heads=1, tie_word_embeddings=False),
        teacher_sft=SupervisedConfig(steps=800, batch_size=32, lr=3e-3, warmup_steps=100, seed=1),
        student_sft=SupervisedConfig(steps=1500, batch_size=32, lr=3e-3, warmup_steps=50, seed=2),
        teacher_target=AccuracyTarget(low=0.95, first_check=800, every=100, fine_every=100, max_steps=1600),
        student_target=AccuracyTarget(low=0.15, high=0.35, first_check=300, every=25, fine_every=5,
                                      max_steps=1500),
        probe=AccuracyProbe(env_kwargs={"max_tool_rounds": 1},
                            rollout=RolloutConfig(max_turn_tokens=48, max_episode_tokens=256, max_turns=3,
                                                  temperature=0.0)),
    ),
    # Tiny Qwen2.5-VL models on visual_qa "dots" (name the colour of the dot in a given cell,
    # zooming into it), every image at 56x56 pixels = 4 image tokens. Both are first aligned on
    # zoomed-cell -> colour pairs, then trained on the tool conversations (mixed with the pairs;
    # learning rates above ~5e-4 collapse the tiny vision tower to a constant, measured). The
    # teacher (0.6M) trains until it zooms and answers at least 95% of the probe items greedily.
    # The student (0.34M, narrower language and vision towers) follows the same schedule and is
    # stopped once it solves 40-70% greedily: past copying the cell's box into its zoom call,
    # not yet reading the zoomed colour reliably. Its accuracy climbs in steps (20-35% for 100
    # steps, then 55% 25 steps later, in one build), so a fixed step count lands below or above
    # that stage on another CPU or library version.
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
        student_sft=SupervisedConfig(steps=500, batch_size=32, lr=5e-4, warmup_steps=30, seed=2),
        teacher_target=AccuracyTarget(low=0.95, first_check=600, every=100, fine_every=100, max_steps=1200),
        student_target=AccuracyTarget(low=0.40, high=0.70, first_check=250, every=25, fine_every=5,
                                      max_steps=500),
        probe=AccuracyProbe(env_kwargs={"level": "dots", "max_tool_rounds": 1},
                            rollout=RolloutConfig(max_turn_tokens=48, max_episode_tokens=320, max_turns=3,
                                                  temperature=0.0)),
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
    from ..tasks import tool_math, visual_qa

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
    from ..tasks import visual_qa

    return [visual_qa.alignment_conversation(visual_qa.make_item(split, index, seed=seed, level="dots"))
            for index in range(count)]


def task_tokenizer(conversations: list[list[dict]], *, vocab_size: int = 512, seed: int = 0):
    """Byte-level BPE tokenizer (with the tool chat template) trained on rendered conversations."""
    probe = build_tokenizer([""], vocab_size=vocab_size)
    corpus = [probe.apply_chat_template(c, tokenize=False) for c in conversations]
    return build_tokenizer(corpus, vocab_size=vocab_size, seed=seed)


def embedded_folder(task: str, cache_dir: str | Path) -> Path:
    """The cache folder of a task's embedded models (built or not)."""
    return Path(cache_dir) / "embedded" / f"{task}-{recipe_key(RECIPES[task])}"


def is_built(task: str, cache_dir: str | Path) -> bool:
    """Whether the task's embedded models are already in the cache."""
    return task in RECIPES and (embedded_folder(task, cache_dir) / "COMPLETE").exists()


def ensure_embedded_models(task: str, cache_dir: str | Path, *, sandbox: Any = None,
                           log: Callable[[str], None] = print) -> EmbeddedModels:
    """Paths of the task's embedded teacher and student, building them on first use.

    ``sandbox`` runs the tool calls of the probe episodes that decide where training stops
    (needed only to build, and only for recipes with accuracy targets).

    Raises:
        :class:`~reopold_agent.demo.measured_stop.EmbeddedBuildError`: a role's measured accuracy
            missed its band (nothing is cached).
    """
    if task not in RECIPES:
        raise ValueError(f"task {task!r} has no embedded default models; name them with --student and --teacher "
                         f"(embedded defaults exist for: {', '.join(sorted(RECIPES))})")
    recipe = RECIPES[task]
    folder = embedded_folder(task, cache_dir)
    models = EmbeddedModels(folder / "teacher", folder / "student")
    if (folder / "COMPLETE").exists():
        return models
    if recipe.probe is not None and sandbox is None:
        raise ValueError(f"building the embedded {task} models measures them on probe episodes; pass a sandbox")
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder.parent / f".{folder.name}.lock")
    lock.acquire(wait=True, on_wait=lambda holder: log(
        f"another build of the embedded {task} models ({holder}) is running; waiting for it to finish ..."))
    try:
        if (folder / "COMPLETE").exists():  # the build we waited for finished
            return models
        _remove_unfinished_builds(folder)
        log(f"building the embedded {task} teacher and student once (cached in {folder}) ...")
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            report = build_embedded(recipe, tmp, sandbox=sandbox, log=log)
            (tmp / "build.json").write_text(json.dumps(report, indent=2))
            (tmp / "COMPLETE").write_text("")
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache is shared like any model folder
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return models


def _remove_unfinished_builds(folder: Path) -> None:
    """Remove the temporary folders of builds of this recipe that were killed part-way.

    Called with the recipe's build lock held, so no live build owns any of them.
    """
    for stale in folder.parent.glob(f".{folder.name}-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def build_embedded(recipe: EmbeddedRecipe, out_dir: Path, *, sandbox: Any = None,
                   log: Callable[[str], None] = print) -> dict:
    """Build tokenizer, teacher and student into ``out_dir``; returns what was measured and reached."""
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
    report: dict = {"recipe": _recipe_dict(recipe), "vocab": len(tokenizer), "machine": _machine()}
    threads = torch.get_num_threads()
    try:
        for role, threads_of_role in zip(("teacher", "student"), recipe.build_threads):
            torch.set_num_threads(threads_of_role)
            report[role] = _build_role(recipe, role, tokenizer, examples, aligned, out_dir, log, processor, vision,
                                       sandbox)
            report[role]["threads"] = threads_of_role
    finally:
        torch.set_num_threads(threads)
    return report


def _tiny_processor(recipe: EmbeddedRecipe, tokenizer):
    """The tiny VL processor of a recipe and the VisionProcessor that prepares its SFT images."""
    from ..vision import VisionProcessor
    from .tiny_vl import build_tiny_processor, vision_token_ids

    spec = recipe.teacher_spec
    processor = build_tiny_processor(tokenizer, min_pixels=recipe.image_pixels, max_pixels=recipe.image_pixels,
                                     spec=spec)
    vision = VisionProcessor(processor.image_processor, image_token_id=vision_token_ids(tokenizer)["image_token_id"],
                             patch_size=spec.patch_size, spatial_merge_size=spec.spatial_merge_size,
                             min_pixels=recipe.image_pixels, max_pixels=recipe.image_pixels)
    return processor, vision


def _build_role(recipe: EmbeddedRecipe, role: str, tokenizer, examples, aligned, out_dir: Path, log,
                processor, vision, sandbox) -> dict:
    """Train and save one role; returns its entry of ``build.json``."""
    spec, sft, target = ((recipe.teacher_spec, recipe.teacher_sft, recipe.teacher_target) if role == "teacher"
                         else (recipe.student_spec, recipe.student_sft, recipe.student_target))
    seed = recipe.seed + (11 if role == "teacher" else 23)
    start = time.perf_counter()
    entry: dict = {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_tiny_vl(tokenizer, spec, seed=seed) if vision else build_causal_lm(tokenizer, spec, seed=seed)
        stages = [("sft", examples, sft)]
        if aligned:
            stages = [("alignment", aligned, recipe.alignment_sft), ("sft", examples + aligned, sft)]
        for stage, data, config in stages:
            run = SupervisedRun(model, data, config, pad_token_id=tokenizer.pad_token_id, vision=vision)
            every = max(config.steps // 5, 1)

            def on_step(s, loss, stage=stage, n=config.steps):
                if (s + 1) % every == 0:
                    log(f"  {role} {stage} {s + 1}/{n} loss {loss:.3f}")

            if stage == "sft" and target is not None:
                measure = probe_accuracy(recipe.task, recipe.probe, model, tokenizer, sandbox=sandbox,
                                         vision=vision, seed=recipe.seed)
                entry.update(train_to_target(run, target, measure, on_step=on_step,
                                             log=lambda line: log(f"  {role}: {line}"), role=role))
            else:
                run.advance((config.stop_after or config.steps) - run.step, on_step=on_step)
            entry["final_loss"] = run.finish()
    save_tiny(model, tokenizer if processor is None else processor, out_dir / role)
    entry["params"] = sum(p.numel() for p in model.parameters())
    entry["seconds"] = time.perf_counter() - start
    log(f"  {role}: {entry['params']:,} parameters, final loss {entry['final_loss']:.3f}, {entry['seconds']:.0f} s")
    return entry


def _machine() -> dict:
    """What the build ran on (floating-point results differ between CPUs and libraries)."""
    import platform

    import transformers

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__}


def recipe_key(recipe: EmbeddedRecipe) -> str:
    import tokenizers
    import transformers

    blob = json.dumps({"recipe": _recipe_dict(recipe), "version": RECIPE_VERSION,
                       "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                       "tokenizers": tokenizers.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _recipe_dict(recipe: EmbeddedRecipe) -> dict:
    return json.loads(json.dumps(asdict(recipe), default=str))
