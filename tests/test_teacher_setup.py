"""``reopold-agent train --set teacher.backend=server`` end to end against a real local HTTP server
speaking vLLM's JSON with the teacher's real weights (tests/teacher_http.py): the same training as
the in-process teacher, a server killed mid-run, resume, and the refusals before training."""

from __future__ import annotations

import pytest

from reopold_agent.cli import main
from reopold_agent.config_loading import ConfigError, from_dict
from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
from reopold_agent.run_logging import read_metrics
from reopold_agent.demo.tiny_models import build_causal_lm
from reopold_agent.train_config import TrainConfig
from tests.teacher_http import ScoringServer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = task_tokenizer(gold_conversations("tool_math", count=40))
    teacher = None
    for name, spec, seed in (("student", "nano", 0), ("teacher", "micro", 1)):
        model = build_causal_lm(tok, spec, seed=seed)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        teacher = model
    return root / "student", root / "teacher", teacher, tok


@pytest.fixture()
def server(models):
    srv = ScoringServer(models[2], models[3])
    yield srv
    srv.close()


def _args(models, out, steps, *extra):
    return ["train", "--task", "tool_math", "--student", str(models[0]), "--teacher", str(models[1]),
            "--steps", str(steps), "--output-dir", str(out),
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=24", "--set", "rollout.max_episode_tokens=200",
            "--set", "eval.num_problems=2", "--set", "eval.samples=1", "--set", "eval.every=0",
            "--set", "train.torch_threads=1", "--set", "train.save_every=1", "--set", "train.lr=1e-3", *extra]


def _served(url, *extra):
    return ("--set", "teacher.backend=server", "--set", f"teacher.server.url={url}", "--set", "eval.teacher=false",
            "--set", "teacher.server.timeout_s=5",
            "--set", "teacher.server.max_retries=2", "--set", "teacher.server.backoff_s=0.05", *extra)


def _training(run):
    return {r["step"]: r for r in read_metrics(run) if "objective/loss" in r}


def _same(a, b, names):
    for name in names:
        assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), name


LEARNING = ("objective/loss", "rollout/reward_mean", "rollout/model_tokens_mean")


def test_a_served_teacher_trains_like_the_in_process_one_and_logs_its_cost(models, server, tmp_path):
    assert main(_args(models, tmp_path / "hf", 2)) == 0
    assert main(_args(models, tmp_path / "served", 2, *_served(server.url))) == 0
    hf, served = _training(tmp_path / "hf"), _training(tmp_path / "served")
    assert hf.keys() == served.keys() == {0, 1}
    for step in (0, 1):
        _same(hf[step], served[step], LEARNING)
        assert served[step]["time/teacher_s"] > 0 and served[step]["throughput/teacher_tokens_per_s"] > 0
        assert served[step]["teacher/retries"] == 0.0
        assert hf[step]["teacher/retries"] == 0.0  # every backend logs the same keys
    assert any(path == "/tokenize" for path, _, _ in server.requests), "the tokenizer was probed"


def test_a_server_killed_mid_run_stops_clearly_leaves_no_half_step_and_the_run_resumes(models, server, tmp_path,
                                                                                      capsys):
    assert main(_args(models, tmp_path / "straight", 3, *_served(server.url))) == 0
    run = tmp_path / "broken"
    server.revive()
    server.die_after = 4  # step 0's four trajectories, then the server is gone
    capsys.readouterr()
    assert main(_args(models, run, 3, *_served(server.url))) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "connection failed" in err[0] and "gave up after 2 retries" in err[0]
    assert "step 1 was not applied" in err[0] and "step_000001, is intact: continue with --resume" in err[0]
    assert list(_training(run)) == [0]
    assert not (run / "trajectories" / "step_000001.jsonl").exists()
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step_000001"
    assert not (run / "checkpoints" / "step_000002").exists()

    server.revive()  # the server is back
    assert main(_args(models, run, 3, "--resume", *_served(server.url))) == 0
    straight, resumed = _training(tmp_path / "straight"), _training(run)
    assert straight.keys() == resumed.keys() == {0, 1, 2}
    for step in (1, 2):
        _same(straight[step], resumed[step], LEARNING)


def test_refusals_before_training_are_one_line_and_exit_2(models, server, tmp_path, capsys):
    cases = [
        (("--set", "teacher.backend=server", "--set", "eval.teacher=false"),
         "teacher.server.url must be set with teacher.backend=server"),
        (_served("http://127.0.0.1:9"), "connection failed"),
        (_served(server.url, "--set", "teacher.server.api_key_env=REOPOLD_TEST_NO_SUCH_KEY"),
         "teacher.server.api_key_env names REOPOLD_TEST_NO_SUCH_KEY, which is not set"),
        (_served(server.url, "--set", "teacher.server.model=other"), "does not serve 'other'"),
        (_served(server.url, "--set", "rollout.max_episode_tokens=600"), "takes at most 512 tokens"),
        (_served(server.url, "--set", "eval.teacher=true"), "eval.teacher plays episodes with the teacher"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(_args(models, tmp_path / "refused", 1, *extra)) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)
        assert not (tmp_path / "refused" / "metrics.jsonl").exists()


@pytest.mark.parametrize("settings, message", [
    ({"teacher": {"server": {"url": "localhost:8000"}}}, "teacher.server.url must be an http(s) URL"),
    ({"teacher": {"server": {"timeout_s": 0}}}, "teacher.server.timeout_s must be > 0"),
    ({"teacher": {"server": {"max_concurrency": 0}}}, "teacher.server.max_concurrency must be >= 1"),
    ({"teacher": {"server": {"max_retries": -1}}}, "teacher.server.max_retries must be >= 0"),
    ({"teacher": {"vllm": {"gpu_memory_utilization": 1.5}}}, "teacher.vllm.gpu_memory_utilization must be in (0, 1]"),
    ({"teacher": {"backend": "tgi"}}, "teacher.backend: expected one of 'hf', 'vllm', 'server'"),
    ({"teacher": {"backend": "vllm"}, "rollout": {"backend": "vllm"}}, "would start two vLLM engines in one process"),
    ({"teacher": {"backend": "vllm"}, "objective": {"name": "sft"}}, "objective sft plays the training episodes"),
])
def test_teacher_settings_are_validated_when_the_config_is_read(settings, message):
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, settings)
    assert message in str(info.value)


def test_the_placement_checks_leave_teacherless_objectives_alone():
    config = from_dict(TrainConfig, {"teacher": {"backend": "vllm"}, "rollout": {"backend": "vllm"},
                                     "objective": {"name": "grpo"}})
    assert config.teacher.backend == "vllm"


def test_vllm_and_server_teachers_refuse_images_and_other_tokenizers_before_training(models, tmp_path, capsys):
    """Checked before vLLM is imported or a server is asked, so this runs without vLLM."""
    from tests import tiny

    vl_student = tiny.vl_checkpoint(tmp_path / "vl_student", seed=0)
    vl_teacher = tiny.vl_checkpoint(tmp_path / "vl_teacher", seed=1)
    stranger = tmp_path / "stranger"  # a text teacher with another tokenizer
    build_causal_lm(tiny.tokenizer(), "nano", seed=2).save_pretrained(stranger)
    tiny.tokenizer().save_pretrained(stranger)
    vl_args = ["train", "--task", "visual_qa", "--student", str(vl_student), "--teacher", str(vl_teacher),
               "--steps", "1", "--output-dir", str(tmp_path / "refused"), "--set", "eval.teacher=false",
               "--set", "eval.every=0", "--set", "train.torch_threads=1"]

    def text_args(teacher):
        return ["train", "--task", "tool_math", "--student", str(models[0]), "--teacher", str(teacher),
                "--steps", "1", "--output-dir", str(tmp_path / "refused"), "--set", "eval.teacher=false",
                "--set", "eval.every=0", "--set", "train.torch_threads=1", "--set", "teacher.backend=vllm"]

    cases = [
        (vl_args + ["--set", "teacher.backend=server", "--set", "teacher.server.url=http://127.0.0.1:9"],
         "teacher.backend=server scores text only (vision-language teachers through vLLM are not implemented"),
        (vl_args + ["--set", "teacher.backend=vllm"], "teacher.backend=vllm scores text only"),
        (text_args(vl_teacher), f"teacher.backend=vllm scores text only, and {vl_teacher} is a vision-language model"),
        (text_args(stranger), "teacher and student tokenizers differ"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
        assert not (tmp_path / "refused" / "metrics.jsonl").exists()
