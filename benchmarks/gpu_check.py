"""Shared parts of the GPU step checks (``gpu_reopold_step.py``, ``gpu_vl_reopold_step.py``).

Their stand-in generation backend, :class:`GoldFirstTurn`: a model with random weights never calls a tool, so the checks script the first assistant turn
of every episode: the gold tool call, scored by the student in one teacher-forced forward (about
the cost of the prefill it replaces; the few dozen decode steps of a sampled call are not
timed), so its behaviour log-probs and entropies are the student's own. Later turns are sampled
by the real :class:`HFGenerationBackend` decode loop. And the rest they share: the timed step
(:func:`timed_step`, :func:`timed_steps`), the shared options with their profile defaults
(:func:`check_parser`, :func:`parse_with_profile`) and the device check.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from reopold_agent.batching import collate, pad_right
from reopold_agent.commands import avoid_cudnn_attention
from reopold_agent.policy_update import policy_update
from reopold_agent.rollout.backend import Generation, GenerationBackend
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from reopold_agent.sequence_scoring import SequenceScorer, sequence_logprobs
from reopold_agent.teacher import TeacherScorer
from reopold_agent.train_config import ObjectiveConfig, TrainLoopConfig


class GoldFirstTurn(GenerationBackend):
    """Turn 1: ``gold_text(prompt_text)``, scored by the student; later turns: the real decode loop.

    Args:
        then: the student's :class:`HFGenerationBackend` (its model, and vision processor for
            a vision-language student, score the scripted turn).
        tokenizer: decodes prompts and encodes the gold turn.
        turn_tokens: budget of a sampled turn (a row cut there ends its episode, as any turn
            that reaches its budget); the engine's ``max_turn_tokens`` only has to fit the call.
        gold_text: the gold first turn of the episode whose prompt (decoded, special tokens kept)
            is given.
        chunk_rows: rows of the vocabulary projection computed at once.
    """

    def __init__(self, then: HFGenerationBackend, tokenizer, turn_tokens: int, gold_text: Callable[[str], str],
                 chunk_rows: int = 1024) -> None:
        self.then, self.tokenizer, self.turn_tokens = then, tokenizer, turn_tokens
        self.gold_text, self.chunk_rows = gold_text, chunk_rows

    def generate(self, prompts, max_new_tokens, params, *, seeds, extra_inputs=None, on_row_done=None):
        """The engine treats every row once this returns (no row is handed over early)."""
        rows = list(extra_inputs) if extra_inputs is not None else [None] * len(prompts)
        texts = [self.tokenizer.decode(p, skip_special_tokens=False) for p in prompts]
        first = [i for i, text in enumerate(texts) if text.count("<|im_start|>assistant") == 1]
        rest = [i for i in range(len(prompts)) if i not in set(first)]
        out: list[Generation | None] = [None] * len(prompts)
        if first:
            calls = [self._gold_call(texts[i], max_new_tokens[i]) for i in first]
            for i, gen in zip(first, self._score([prompts[i] for i in first], calls, [rows[i] for i in first])):
                out[i] = gen
        if rest:
            budgets = [min(max_new_tokens[i], self.turn_tokens) for i in rest]
            gens = self.then.generate([prompts[i] for i in rest], budgets, params, seeds=[seeds[i] for i in rest],
                                      extra_inputs=[rows[i] for i in rest] if extra_inputs is not None else None)
            for i, gen in zip(rest, gens):
                out[i] = gen
        return out

    def _gold_call(self, prompt_text: str, budget: int) -> tuple[list[int], bool]:
        ids = self.tokenizer(self.gold_text(prompt_text), add_special_tokens=False)["input_ids"]
        return ids[:budget], len(ids) <= budget

    @torch.no_grad()
    def _score(self, prompts, calls, rows) -> list[Generation]:
        model, vision = self.then.model, self.then.vision
        device = next(model.parameters()).device
        ids_BT, attn_BT = pad_right([p + c for p, (c, _) in zip(prompts, calls)], self.then.pad_token_id)
        ids_BT, attn_BT = ids_BT.to(device), attn_BT.to(device)
        extra = None if vision is None else vision.forward_inputs([(r or {}).get("vision") for r in rows], ids_BT,
                                                                   attn_BT)
        was_training = model.training
        model.eval()
        try:
            logp_BT, ent_BT = sequence_logprobs(model, ids_BT, attn_BT, with_entropy=True, chunk_rows=self.chunk_rows,
                                                extra_inputs=extra)
        finally:
            model.train(was_training)
        out = []
        for b, (prompt, (call, complete)) in enumerate(zip(prompts, calls)):
            cols = slice(len(prompt), len(prompt) + len(call))
            out.append(Generation(call, logp_BT[b, cols].tolist(), ent_BT[b, cols].tolist(),
                                  "stop" if complete else "length"))
        return out


def check_parser(description: str, tiny_help: str) -> argparse.ArgumentParser:
    """A parser holding the options both GPU checks share; each check adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    p.add_argument("--tiny", action="store_true", help=tiny_help)
    p.add_argument("--episodes", type=int)
    p.add_argument("--group-size", type=int, help="rollouts per prompt")
    p.add_argument("--turn-tokens", type=int, help="budget of the sampled (second) assistant turn")
    p.add_argument("--micro-batch", type=int, help="trajectories per forward/backward of the update")
    p.add_argument("--teacher-rows", type=int, help="trajectories per teacher forward")
    p.add_argument("--steps", type=int, default=2,
                   help="steps on the same models (each samples anew); figures of the last (default 2)")
    p.add_argument("--cudnn-attention", action="store_true",
                   help="let PyTorch pick cuDNN attention (training turns it off), to compare the two")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_with_profile(parser: argparse.ArgumentParser, argv: list[str] | None,
                       profiles: dict[str, dict]) -> argparse.Namespace:
    """Parse ``argv``; every option left at None takes its value from ``profiles["tiny"]`` with
    ``--tiny``, else from ``profiles["full"]``."""
    args = parser.parse_args(argv)
    for key, value in profiles["tiny" if args.tiny else "full"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def check_device(args: argparse.Namespace) -> torch.device:
    """The device to run on; a GPU check runs on the CPU only as the ``--tiny`` smoke test.

    Attention avoids cuDNN, as in training (:func:`reopold_agent.commands.avoid_cudnn_attention`),
    unless ``args.cudnn_attention`` asks for PyTorch's default choice (to compare the two).
    """
    if args.cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(True)
    else:
        avoid_cudnn_attention()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU (or --device cpu --tiny for the smoke test)")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("on the CPU only the --tiny smoke test runs")
    return device


@dataclass
class StepTimes:
    """One timed step: its trajectories, the update's statistics and seconds per phase."""

    trajectories: list
    stats: dict[str, float]
    rollout_s: float
    teacher_s: float
    update_s: float


def timed_step(play: Callable[[], list], scorer: TeacherScorer, student: Any, *, pad_token_id: int, micro_batch: int,
               device: torch.device, autocast: bool, vision: Any = None, packed: bool = False) -> StepTimes:
    """Rollout (``play()``), teacher scoring and one REOPOLD update (AdamW, lr 1e-6), each timed.

    Under bf16 autocast if ``autocast``; on a GPU, each phase ends with a synchronisation and
    the peak memory statistics are reset first. ``packed``: teacher and update run on packed
    sequences.
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        t0 = time.perf_counter()
        trajs = play()
        _sync(device)
        rollout_s = time.perf_counter() - t0
    teacher_s, update_s, stats = timed_teacher_and_update(trajs, scorer, student, pad_token_id=pad_token_id,
                                                          micro_batch=micro_batch, device=device, autocast=autocast,
                                                          vision=vision, packed=packed)
    return StepTimes(trajs, stats, rollout_s, teacher_s, update_s)


def timed_teacher_and_update(trajs: list, scorer: TeacherScorer, student: Any, *, pad_token_id: int, micro_batch: int,
                             device: torch.device, autocast: bool, vision: Any = None,
                             packed: bool = False) -> tuple[float, float, dict[str, float]]:
    """Seconds of teacher scoring and of one REOPOLD update (AdamW, lr 1e-6) of ``trajs``, and
    the update's statistics; ``packed`` as in :func:`timed_step`."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scorer.packed = packed
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        t1 = time.perf_counter()
        scorer.score(trajs)
        _sync(device)
        t2 = time.perf_counter()
        batch = collate(trajs, pad_token_id=pad_token_id)
        stats = policy_update(SequenceScorer(student, packed=packed), optimizer, scheduler, batch, step=10,
                              settings=ObjectiveConfig(), optim=TrainLoopConfig(micro_batch_rows=micro_batch),
                              total_steps=300, backward=lambda loss: loss.backward(),
                              clip_grad=lambda m: torch.nn.utils.clip_grad_norm_(student.parameters(), m),
                              vision=vision)
        _sync(device)
        t3 = time.perf_counter()
    return t2 - t1, t3 - t2, stats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(count: int, play: Callable[[int], list], scorer: TeacherScorer, student: Any,
                **step_options: Any) -> StepTimes:
    """``count`` :func:`timed_step` calls on the same models, step ``i`` playing ``play(i)``.

    Prints each step's phases and returns the last step. The first step also pays one-time
    costs (kernel choices, attention plans, the allocator's growth), so a later step tells what
    a training step costs.
    """
    if count < 1:
        raise ValueError(f"steps must be >= 1, got {count}")
    for i in range(count):
        step = timed_step(lambda: play(i), scorer, student, **step_options)
        print(f"step {i + 1}/{count}: rollout {step.rollout_s:.2f} s, teacher {step.teacher_s:.2f} s, "
              f"update {step.update_s:.2f} s")
    return step
