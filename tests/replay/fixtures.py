"""Runs for the replay and plot tests: a hand-built run with known numbers, and a real one.

``write_synthetic_run`` writes trajectories whose per-token values are chosen so every number the
replay shows can be derived by hand (see the comments); ``real_run`` trains tiny random models
for 3 steps with the real trainer (cached once per test session, a few seconds).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path

import yaml

from reopold_agent.trajectory import ImageRecord, Trajectory
from reopold_agent.trajectory_io import trajectory_to_json

FLOOR = math.log(0.3) / 0.7
"""c for lam = 0.3: -1.7199611..."""

CONFIG = {
    "model": {"student": None},
    "objective": {"name": "reopold", "reopold": {"lam": 0.3, "beta": 0.2, "switch_step": 100},
                  "switch_fraction": 0.33},
    "train": {"steps": 3},  # switch step = round(0.33 * 3) = 1
    "sandbox": {"backend": "local", "timeout_s": 10.0},
}
TOOL_CALL = '<tool_call>\n{"name": "python", "arguments": {"code": "print(37*245)"}}\n</tool_call>'
MESSAGES = [
    {"role": "system", "content": "Use python."},
    {"role": "user", "content": "What is 37*245?"},
    {"role": "assistant", "content": TOOL_CALL},
    {"role": "tool", "name": "python", "content": "9065"},
    {"role": "assistant", "content": "\\boxed{9065}"},
]
# Tokens: 3 prompt (turn 0), 4 model + 2 tool (turn 1), 3 model (turn 2).
SOURCE = ["prompt"] * 3 + ["model"] * 4 + ["tool"] * 2 + ["model"] * 3
TURN = [0] * 3 + [1] * 6 + [2] * 3
LOGP = [None] * 3 + [-1.0, -0.5, -2.0, -0.25] + [None] * 2 + [-0.1, -3.0, -1.0]
TEACHER = [None, -2.0, -2.0] + [-1.5, -0.5, -5.0, -0.25] + [-2.0, -2.0] + [-0.2, -1.0, -4.0]
# R on model tokens: turn 1 [-0.5, 0, -3, 0]; turn 2 [-0.1, +2, -3].
# KL (mean logp - teacher): turn 1 (0.5+0+3+0)/4 = 0.875; turn 2 (0.1-2+3)/3 = 0.3666...
ENTROPY = [None] * 3 + [0.5, 1.0, 2.0, 0.1] + [None] * 2 + [3.0, 0.2, 1.5]


def tool_trajectory(step: int, **changes) -> Trajectory:
    """The python-tool episode above at ``step`` (fields overridable)."""
    base = Trajectory(
        token_ids=list(range(10, 22)), source=SOURCE, turn=TURN,
        loss_mask=[int(s == "model") for s in SOURCE], logprobs=LOGP, messages=MESSAGES,
        reward=1.0, truncated=False, end_reason="answered", tool_errors=0, tool_calls=1,
        task="tool_math", prompt_id="tool_math/train/7", sample_index=0, step=step,
        teacher_logprobs=TEACHER, entropy=ENTROPY, info={"answer": "9065"})
    return dataclasses.replace(base, **changes)


def image_trajectory(step: int) -> Trajectory:
    """2 prompt + 2 image tokens (turn 0), 3 model tokens with entropies 4.0, 0.3, 0.4."""
    source = ["prompt", "prompt", "image", "image", "model", "model", "model"]
    return Trajectory(
        token_ids=[1, 2, 3, 3, 40, 41, 42], source=source, turn=[0, 0, 0, 0, 1, 1, 1],
        loss_mask=[0, 0, 0, 0, 1, 1, 1], logprobs=[None] * 4 + [-0.3, -0.6, -0.9],
        messages=[{"role": "user", "content": [{"type": "image", "size": [8, 6]},
                                               {"type": "text", "text": "What colour?"}]},
                  {"role": "assistant", "content": "red"}],
        reward=0.0, truncated=True, end_reason="turn_limit", task="visual_qa",
        prompt_id="visual_qa/train/1", step=step,
        teacher_logprobs=[None, -1.0, -1.0, -1.0, -0.4, -0.6, -0.7],
        entropy=[None] * 4 + [4.0, 0.3, 0.4],
        images=[ImageRecord("images/x.png", 2, 4, [1, 2, 2])])


def write_synthetic_run(root: Path) -> Path:
    """A run directory with known numbers, a corrupt line and a line still being written.

    step_000000.jsonl: the tool episode (exploration).
    step_000001.jsonl: the tool episode, a corrupt line 2, the image episode (refinement).
      Valid entropies of the file: 0.5 1 2 0.1 3 0.2 1.5 4 0.3 0.4 (N=10), k = ceil(0.2*10) = 2,
      so tau_beta = 3.0: the tool episode keeps only its token with entropy 3 (turn 2, first).
    step_000002.jsonl: an unscored episode, an old line without optional keys, a cut last line.
    eval_000001.jsonl: one evaluation episode (no teacher scores).
    """
    from PIL import Image

    traj_dir = root / "trajectories"
    traj_dir.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    (root / "images").mkdir()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(root / "images" / "x.png")
    lines = {
        "step_000000": [trajectory_to_json(tool_trajectory(0))],
        "step_000001": [trajectory_to_json(tool_trajectory(1)), '{"token_ids": [1, 2',
                        trajectory_to_json(image_trajectory(1))],
        "step_000002": [trajectory_to_json(tool_trajectory(2, teacher_logprobs=None)),
                        _old_style_line(tool_trajectory(2, sample_index=1))],
        "eval_000001": [trajectory_to_json(tool_trajectory(1, teacher_logprobs=None))],
    }
    for name, rows in lines.items():
        (traj_dir / f"{name}.jsonl").write_text("".join(r + "\n" for r in rows))
    with open(traj_dir / "step_000002.jsonl", "a") as fh:
        fh.write(trajectory_to_json(tool_trajectory(2, sample_index=2))[:50])  # no newline
    metrics = [{"step": k, "objective/loss": 0.1 * k, "rollout/accuracy": 0.5,
                "objective/selected_ratio": 1.0 if k == 0 else 0.2} for k in range(3)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return root


def _old_style_line(traj: Trajectory) -> str:
    """A line written before the optional keys existed (keys in another order, none optional)."""
    record = json.loads(trajectory_to_json(traj))
    for key in ("teacher_logprobs", "entropy", "images", "info", "tool_calls", "schema_version"):
        record.pop(key)
    return json.dumps(dict(reversed(list(record.items()))))


@functools.lru_cache(maxsize=None)
def real_run() -> Path:
    """A 3-step REOPOLD run of tiny random models made by the real trainer (cached)."""
    import torch

    from reopold_agent.cli import main
    from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
    from reopold_agent.demo.tiny_models import build_causal_lm

    root = Path(tempfile.mkdtemp(prefix="replay_real_run_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    torch.set_num_threads(1)
    convs = gold_conversations("tool_math", count=20)
    tok = task_tokenizer(convs)
    for name, seed in (("student", 0), ("teacher", 1)):
        build_causal_lm(tok, "nano", seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    sets = ["rollout.group_size=2", "train.prompts_per_step=3", "rollout.max_turn_tokens=24",
            "eval.num_problems=2", "eval.every=1", "train.torch_threads=1", "train.save_every=100",
            "train.mini_batches=1", "train.micro_batch_rows=2"]  # step-level selection = the trainer's
    argv = ["train", "--task", "tool_math", "--student", str(root / "student"), "--teacher",
            str(root / "teacher"), "--steps", "3", "--output-dir", str(root / "run")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return root / "run"
