import pytest

from reopold_agent.replay.tool_rerun import (
    REPLAY_SANDBOX, max_output_chars_from_run, replay_sandbox_config, rerun_tool_call)
from reopold_agent.replay.turns import ToolCallView
from reopold_agent.sandbox import SandboxConfig, SandboxUnavailable, make_sandbox


@pytest.fixture(scope="module")
def sandbox():
    try:
        box = make_sandbox(replay_sandbox_config({"sandbox": {"timeout_s": 5.0, "bogus": 1}}).config)
        box.run("pass", timeout_s=5)
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox here: {exc}")
    return box


def _call(code, output, name="python"):
    return ToolCallView(1, 0, name, {"code": code}, None, output)


def test_same_program_matches_the_recording(sandbox):
    result = rerun_tool_call(_call("print(37*245)", "9065"), sandbox)
    assert (result.ran, result.matches, result.output) == (True, True, "9065")
    assert "MATCHES" in result.headline()


def test_changed_output_is_reported_with_a_diff(sandbox):
    result = rerun_tool_call(_call("print(37*245)", "9064"), sandbox)
    assert (result.ran, result.matches) == (True, False)
    assert "-9064" in result.diff and "+9065" in result.diff


def test_errors_are_formatted_like_the_environment(sandbox):
    result = rerun_tool_call(_call("raise SystemExit(3)", "exit code 3"), sandbox)
    assert result.matches and result.output == "exit code 3"


def test_calls_that_cannot_run():
    assert not rerun_tool_call(ToolCallView(1, 0, None, None, "bad_json", "x"), None).ran
    assert "only python" in rerun_tool_call(_call("1", "x", name="zoom"), None).output
    assert max_output_chars_from_run({"task": {"env_kwargs": {"max_tool_output_chars": 9}}}) == 9


# ---- the sandbox of replay: a run directory cannot weaken it --------------------------------

HOSTILE_SANDBOX = {"allow_unisolated": True, "python_executable": "/proc/self/exe",
                   "hide_paths": [], "memory_mb": 100_000, "uid_base": 1000, "uid_count": 1,
                   "timeout_s": 1e9, "backend": "e2b"}
"""A shared run's sandbox section that, taken as written, runs recorded programs on the host:
/proc/self/exe is unshare itself when unshare execs it, so the isolation self-test fails and
allow_unisolated lets the program run unisolated as the current user."""


def _run_with_program(root, sandbox_section, code):
    """A run directory whose one episode called python with ``code``."""
    import dataclasses
    import json

    import yaml

    from reopold_agent.trajectory_io import trajectory_to_json

    from .fixtures import CONFIG, tool_trajectory

    call = '<tool_call>\n' + json.dumps({"name": "python", "arguments": {"code": code}}) + \
        '\n</tool_call>'
    traj = tool_trajectory(0)
    messages = [dict(m) for m in traj.messages]
    messages[2]["content"] = call
    (root / "trajectories").mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "sandbox": sandbox_section}))
    line = trajectory_to_json(dataclasses.replace(traj, messages=messages))
    (root / "trajectories" / "step_000000.jsonl").write_text(line + "\n")
    return root


def _open(run_dir, *flags):
    from reopold_agent.replay.commands import _open_session

    from .test_commands import _args

    return _open_session(_args("replay", str(run_dir), "--no-tokenizer", *flags))


def test_a_run_directory_cannot_make_replay_run_code_on_the_host(tmp_path, capsys):
    marker = tmp_path / "marker"
    code = (f"import os\nopen({str(marker)!r}, 'w').write('escaped')\n"
            "print('uid', os.getuid(), sorted(os.listdir('/home')))")
    session = _open(_run_with_program(tmp_path / "run", HOSTILE_SANDBOX, code))
    notes = capsys.readouterr().err
    for key in ("allow_unisolated", "python_executable", "memory_mb", "uid_base",
                "timeout_s", "backend"):
        assert f"ignoring the run's sandbox setting {key}" in notes
    summary = session.select()[0]
    turn = session.open(summary).turns[1]
    [result] = session.rerun(turn)
    assert not marker.exists(), "the recorded program wrote on the host"
    if result.ran:  # isolated: the write failed inside the sandbox's private /tmp or read-only root
        assert "FileNotFoundError" in result.output or "Read-only file system" in result.output
        assert session._sandbox.isolated and session._sandbox.config == REPLAY_SANDBOX
    else:  # no isolation on this machine: refused, never run unisolated
        assert "sandbox unavailable" in result.output


def test_only_the_users_flags_weaken_the_replay_sandbox(tmp_path, capsys):
    run = _run_with_program(tmp_path / "run", {"memory_mb": 4096}, "print(1)")
    session = _open(run, "--sandbox", "memory_mb=4096", "--sandbox", "hide_paths=[/run]")
    err = capsys.readouterr().err
    assert "ignoring the run's sandbox setting memory_mb: memory_mb=4096 (more than 1024)" in err
    assert "WARNING: --sandbox weakens the sandbox that re-runs recorded programs: " \
           "memory_mb=4096 (more than 1024)" in err
    assert "WARNING: --sandbox weakens the sandbox that re-runs recorded programs: " \
           "hide_paths without ~, /home" in err
    assert session.sandbox_factory is not None


@pytest.mark.parametrize(("flag", "message"), [
    ("bogus=1", "unknown sandbox setting 'bogus'"),
    ("memory_mb=lots", "SandboxConfig.memory_mb must be an integer"),
    ("novalue", "must look like section.key=value"),
])
def test_bad_sandbox_flags_are_usage_errors(synthetic_run, flag, message):
    from reopold_agent.errors import UsageError

    with pytest.raises(UsageError, match=message):
        _open(synthetic_run, "--sandbox", flag)


def test_a_run_can_only_tighten_the_sandbox():
    section = {"timeout_s": 2.5, "memory_mb": 256, "max_output_bytes": 999_999,
               "hide_paths": ["/work"], "allow_unisolated": False, "warm_workers": 0,
               "python_executable": None, "cpu_time_s": "ten", "unknown_key": 1}
    chosen = replay_sandbox_config({"sandbox": section})
    config = chosen.config
    assert (config.timeout_s, config.memory_mb, config.warm_workers) == (2.5, 256, 0)
    assert config.max_output_bytes == REPLAY_SANDBOX.max_output_bytes
    assert config.hide_paths == (*REPLAY_SANDBOX.hide_paths, "/work")
    assert [n.split(":")[0] for n in chosen.ignored] == ["max_output_bytes", "cpu_time_s"]
    assert chosen.weakened == []
    tighter = replay_sandbox_config({"sandbox": section}, {"memory_mb": 512})
    assert tighter.config.memory_mb == 512 and tighter.weakened == []


def test_a_saved_run_config_round_trips_into_replay():
    """What the trainer writes (to_dict, a YAML list for hide_paths) comes back whole."""
    import yaml

    from reopold_agent.config_loading import to_dict

    saved = SandboxConfig(timeout_s=3.0, cpu_time_s=2, memory_mb=512, file_size_mb=4,
                          workdir_mb=16, max_open_files=32, max_processes=8,
                          max_output_bytes=2048, warm_workers=1,
                          hide_paths=(*REPLAY_SANDBOX.hide_paths, "/data"))
    section = yaml.safe_load(yaml.safe_dump({"sandbox": to_dict(saved)}))
    assert isinstance(section["sandbox"]["hide_paths"], list)
    chosen = replay_sandbox_config(section)
    assert chosen.config == saved and chosen.ignored == [] and chosen.weakened == []
