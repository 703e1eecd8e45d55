"""End to end: ``reopold-agent train`` on tiny offline models, its run directory, and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reopold_agent.cli import main
from reopold_agent.commands import rollout_engine
from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
from reopold_agent.rollout.config import RolloutConfig
from reopold_agent.run_logging import read_metrics
from reopold_agent.demo.tiny_models import build_causal_lm
from reopold_agent.train_config import TrainConfig
from reopold_agent.trajectory_io import read_trajectories
from tests import tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    convs = gold_conversations("tool_math", count=40)
    tok = task_tokenizer(convs)
    for name, spec, seed in (("student", "nano", 0), ("teacher", "micro", 1)):
        model = build_causal_lm(tok, spec, seed=seed)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "student", root / "teacher"


def _args(models, out, steps=2, extra=()):
    student, teacher = models
    return ["train", "--task", "tool_math", "--student", str(student), "--teacher", str(teacher),
            "--steps", str(steps), "--output-dir", str(out),
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=24", "--set", "rollout.max_episode_tokens=200",
            "--set", "eval.num_problems=3", "--set", "eval.samples=1", "--set", "eval.every=0",
            "--set", "train.torch_threads=1", "--set", "train.save_every=2", "--set", "eval.teacher=true", *extra]


def _params(path):
    from safetensors.torch import load_file

    return load_file(str(next(Path(path).glob("*.safetensors"))))


def test_two_step_run_trains_and_leaves_a_complete_run_directory(tiny_models, tmp_path):
    out = tmp_path / "run"
    assert main(_args(tiny_models, out)) == 0
    for name in ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints/LATEST",
                 "trajectories/step_000000.jsonl", "trajectories/step_000001.jsonl", "trajectories/eval_000002.jsonl",
                 "trajectories/eval_teacher_000000.jsonl"):
        assert (out / name).exists(), name
    # parameters moved
    before, after = _params(tiny_models[0]), _params(out / "checkpoints" / "step_000002")
    moved = [k for k in before if not (before[k] == after[k]).all()]
    assert len(moved) == len(before), f"unchanged parameters: {set(before) - set(moved)}"
    # saved trajectories: no tool/prompt token carries loss, teacher scored exactly the ids
    trajs, errors = read_trajectories(out / "trajectories" / "step_000001.jsonl")
    assert not errors and len(trajs) == 4
    # step 1 plays stream positions 2 and 3 of the seeded shuffle (not items 2 and 3)
    from reopold_agent.data_order import train_item_index

    played = sorted({t.info["index"] for t in trajs})
    assert played == sorted(train_item_index(k, 100_000, seed=0) for k in (2, 3)) and played != [2, 3]
    from reopold_agent.sequence_scoring import sequence_logprobs
    from transformers import AutoModelForCausalLM
    import torch

    teacher = AutoModelForCausalLM.from_pretrained(tiny_models[1])
    for t in trajs:
        assert all(m == (s == "model") for m, s in zip(t.loss_mask, t.source))
        assert len(t.teacher_logprobs) == t.num_tokens and t.teacher_logprobs[0] is None
        ids = torch.tensor([t.token_ids])
        ref, _ = sequence_logprobs(teacher, ids, torch.ones_like(ids))
        torch.testing.assert_close(torch.tensor(t.teacher_logprobs[1:]), ref[0, 1:], atol=1e-5, rtol=0)
    metrics = read_metrics(out)
    keys = set().union(*metrics)
    for key in ("objective/loss", "objective/selected_ratio", "objective/below_floor_frac", "objective/entropy_mean",
                "train/grad_norm", "rollout/tool_error_rate", "eval/greedy_accuracy", "time/rollout_s",
                "time/teacher_s", "time/update_s", "throughput/model_tokens_per_s", "eval/teacher_greedy_accuracy"):
        assert key in keys, key


def _comparable(record):
    """A metrics row without its wall-clock measurements (which differ between any two runs)."""
    return {k: v for k, v in record.items() if not k.startswith(("time/", "throughput/"))
            and not k.endswith(("tokens_per_second", "seconds_per_token", "seconds", "_s", "_per_s"))}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tiny_models, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_args(tiny_models, straight, steps=4)) == 0
    cmd = [sys.executable, "-m", "reopold_agent.cli", *_args(tiny_models, broken, steps=4)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    latest = broken / "checkpoints" / "LATEST"
    deadline = time.time() + 240
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() == "step_000002"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.read_text().strip() == "step_000002"
    assert main(_args(tiny_models, broken, steps=4, extra=["--resume"])) == 0
    a = {(r["step"], tuple(sorted(r))): _comparable(r) for r in read_metrics(straight)}
    b = {(r["step"], tuple(sorted(r))): _comparable(r) for r in read_metrics(broken)}
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            other = b[key][name]
            assert (value is None and other is None) or other == pytest.approx(value, rel=1e-6, abs=1e-7), (key[0], name)


def test_bad_input_exits_2_with_one_line(tiny_models, tmp_path, capsys):
    cases = [
        (["train", "--set", "train.stepz=3"], "unknown config key 'train.stepz'"),
        (["train", "--set", "train.steps=ten"], "train.steps: expected int"),
        (["train", "--config", str(tmp_path / "missing.yaml")], "config file not found"),
        (["train", "--task", "nope"], "no preset for task 'nope'"),
        (["train", "--task", "code"], "has no embedded default models"),
        (["train", "--student", str(tmp_path / "no_model"), "--teacher", str(tiny_models[1])], "model.student: no such folder"),
        (["train", "--env", "no_such_module:Env-v0", "--student", str(tiny_models[0]), "--teacher",
          str(tiny_models[1]), "--output-dir", str(tmp_path / "x")], "cannot make environment"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as info:
        main(["train", "--steps", "x"])
    assert info.value.code == 2


def test_user_registered_environment_trains_for_a_step(tiny_models, tmp_path):
    out = tmp_path / "units"
    argv = _args(tiny_models, out, steps=1) + ["--env", "tests.envs.example_env:example/Units-v0",
                                                "--set", "eval.num_problems=2"]
    assert main(argv) == 0
    trajs, _ = read_trajectories(out / "trajectories" / "step_000000.jsonl")
    assert len(trajs) == 4 and all(t.task == "units" for t in trajs)
    assert "convert" in trajs[0].messages[0]["content"] or trajs[0].messages[0]["role"] == "system"


def test_sft_objective_learns_from_the_teachers_rollouts(tiny_models, tmp_path):
    """``--objective sft`` is supervised training on teacher-generated tokens: the training
    episodes are the teacher's, so their behaviour log-probs are the teacher's own scores."""
    out = tmp_path / "sft_objective"
    assert main(_args(tiny_models, out, steps=1, extra=["--objective", "sft", "--set", "eval.teacher=false"])) == 0
    trajs, errors = read_trajectories(out / "trajectories" / "step_000000.jsonl")
    assert not errors and len(trajs) == 4
    for t in trajs:
        pairs = [(b, s) for b, s, m in zip(t.logprobs, t.teacher_logprobs, t.loss_mask) if m]
        assert pairs
        for behaviour, teacher in pairs:
            assert abs(behaviour - teacher) < 1e-4
    before, after = _params(tiny_models[0]), _params(out / "checkpoints" / "step_000001")
    assert any(not (before[k] == after[k]).all() for k in before)


def test_sft_and_eval_commands(tiny_models, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["sft", "--task", "tool_math", "--student", str(tiny_models[0]), "--steps", "3",
                 "--output-dir", str(out)]) == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    capsys.readouterr()
    assert main(["eval", "--task", "tool_math", "--student", str(out), "--num-problems", "2", "--samples", "2",
                 "--set", "rollout.max_turn_tokens=16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["eval/num_problems"] == 2.0 and "eval/pass@2" in report and "eval/maj@2" in report


@pytest.mark.slow
def test_two_processes_log_every_processes_trajectories_and_metrics(tiny_models, tmp_path):
    """Two processes (``torchrun``; on CPU ``accelerate launch`` starts one process without
    MPI): each plays half the prompts; the run directory and the rollout metrics hold all."""
    out = tmp_path / "run"
    cli = Path(sys.executable).with_name("reopold-agent")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(cli),
           *_args(tiny_models, out, steps=1, extra=("--set", "train.prompts_per_step=4", "--set", "eval.teacher=false"))]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    trajs, errors = read_trajectories(out / "trajectories" / "step_000000.jsonl")
    assert not errors and len(trajs) == 8  # 4 prompts x 2 rollouts, from both processes
    assert len({t.prompt_id for t in trajs}) == 4
    step = [m for m in read_metrics(out) if "rollout/episodes" in m][0]
    assert step["rollout/episodes"] == 8.0


def test_cosine_lr_decay_reaches_its_final_ratio_on_the_last_step(tiny_models, tmp_path):
    out = tmp_path / "cosine"
    argv = _args(tiny_models, out, steps=2) + ["--set", "train.lr=1e-3", "--set", "train.lr_decay=cosine",
                                               "--set", "train.final_lr_ratio=0.5", "--set", "eval.num_problems=0",
                                               "--set", "train.warmup_steps=0", "--set", "train.mini_batches=1"]
    assert main(argv) == 0
    lrs = [r["train/lr"] for r in read_metrics(out) if "train/lr" in r]  # logged after each optimiser step
    assert lrs[0] == pytest.approx(0.75e-3) and lrs[-1] == pytest.approx(0.5e-3)


def test_bf16_run_samples_and_evaluates_under_the_updates_autocast_without_cudnn_attention(tiny_models, tmp_path,
                                                                                            monkeypatch):
    """model.dtype=bfloat16 on the CPU: accelerate's bf16 autocast, as on a GPU."""
    import torch
    from accelerate.state import AcceleratorState

    from reopold_agent.rollout.hf_backend import HFGenerationBackend

    under_autocast = []
    generate = HFGenerationBackend.generate

    def recording_generate(self, *args, **kwargs):
        under_autocast.append(torch.is_autocast_enabled("cpu"))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(HFGenerationBackend, "generate", recording_generate)
    cudnn_before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    AcceleratorState._reset_state(True)  # accelerate keeps one state per process; earlier runs chose "no"
    try:
        argv = _args(tiny_models, tmp_path / "bf16", steps=1, extra=["--set", "model.dtype=bfloat16"])
        assert main(argv) == 0
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_before)
        AcceleratorState._reset_state(True)
    rows = read_metrics(tmp_path / "bf16")
    assert any("eval/teacher_greedy_accuracy" in r for r in rows) and any("eval/greedy_accuracy" in r for r in rows)
    assert len(under_autocast) >= 3 and all(under_autocast)  # teacher eval, student evals, the training rollout


def test_train_and_eval_engines_generate_with_the_configured_threads():
    tok, model = tiny.tokenizer(), tiny.model("micro")
    config = TrainConfig(rollout=RolloutConfig(torch_threads=1, tool_batch_wait_s=0.5))
    engine = rollout_engine(model, tok, config)
    assert engine.backend.cpu_threads == 1 and engine.backend.model is model
    assert engine.config.tool_batch_wait_s == 0.5
    assert rollout_engine(model, tok, TrainConfig()).backend.cpu_threads is None
