"""Tests of envs/registry.py: built-ins, the three ways to add an env, and error messages."""

import sys
import textwrap
import warnings

import gymnasium
import pytest

from reopold_agent.envs import (
    ToolEnv,
    UnknownEnvError,
    check_tool_env,
    list_envs,
    load_plugin_envs,
    make_env,
    register_builtin_envs,
)
from reopold_agent.tasks import TASKS


@pytest.fixture
def clean_registry():
    """Remove ids a test registers, so gymnasium's global registry is left as found."""
    before = set(gymnasium.registry)
    yield
    for env_id in set(gymnasium.registry) - before:
        del gymnasium.registry[env_id]


@pytest.mark.parametrize("task", list(TASKS.values()), ids=list(TASKS))
def test_make_env_builds_every_builtin(task, sandbox):
    env = make_env(task.env_id, sandbox=sandbox, split="eval")
    assert isinstance(env, ToolEnv) and env.split == "eval" and env.task_name == task.name
    assert env.spec.id == task.env_id


def test_plain_gymnasium_make_works_without_warnings(sandbox):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gymnasium.make("reopold_agent/ToolMath-v0", sandbox=sandbox)
        obs, info = env.reset(seed=0)
        _, reward, terminated, _, _ = env.step(f"\\boxed{{{info['answer']}}}")
    assert reward == 1.0 and terminated and isinstance(env.unwrapped, ToolEnv)


def test_builtin_registration_is_idempotent():
    register_builtin_envs()
    register_builtin_envs()
    assert all(task.env_id in gymnasium.registry for task in TASKS.values())


def test_way_a_gymnasium_register(clean_registry):
    gymnasium.register(id="test_local/Units-v0", entry_point="tests.envs.example_env:UnitsEnv")
    env = make_env("test_local/Units-v0", max_tool_rounds=2)
    check_tool_env(env)
    assert env.max_tool_rounds == 2


def test_way_b_module_prefix(clean_registry, monkeypatch):
    monkeypatch.delitem(sys.modules, "tests.envs.example_env", raising=False)  # import it afresh
    monkeypatch.delitem(gymnasium.registry, "example/Units-v0", raising=False)
    env = make_env("tests.envs.example_env:example/Units-v0")
    check_tool_env(env)
    assert "example/Units-v0" in [info.env_id for info in list_envs()]


def _write_plugin(root):
    dist = root / "fake_units_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-units-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [reopold_agent.envs]
        plugin/Units-v0 = tests.envs.example_env:UnitsEnv
        units_hook = fake_units_hooks:register
        broken_one = no_such_module_xyz:Thing
        """))
    (root / "fake_units_hooks.py").write_text(textwrap.dedent("""\
        import gymnasium

        def register():
            if "plugin/Hook-v0" not in gymnasium.registry:
                gymnasium.register(id="plugin/Hook-v0",
                                   entry_point="tests.envs.example_env:UnitsEnv")
        """))


def _write_other_plugin(root):
    """Another installed package's plugin, as a user may have: the tests must not mind it."""
    dist = root / "someone_elses_plugin-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: someone-elses-plugin\n"
                                   "Version: 2.0\n")
    (dist / "entry_points.txt").write_text("[reopold_agent.envs]\n"
                                          "other/Units-v0 = tests.envs.example_env:UnitsEnv\n")


def test_way_c_entry_point_plugin(tmp_path, monkeypatch, clean_registry):
    _write_plugin(tmp_path)
    _write_other_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match="skipping reopold_agent.envs plugin 'broken_one' = "
                                            "'no_such_module_xyz:Thing' from fake-units-plugin"):
        env = make_env("plugin/Units-v0")
    check_tool_env(env)
    assert isinstance(make_env("plugin/Hook-v0"), ToolEnv)  # registered by the hook above
    with pytest.warns(RuntimeWarning, match="broken_one"):
        loaded = set(load_plugin_envs())
    with pytest.warns(RuntimeWarning, match="broken_one"):
        listed = {info.env_id for info in list_envs()}
    # Other installed plugins may load too: check ours and the built-ins, not the exact set.
    assert {"plugin/Units-v0", "units_hook"} <= loaded and "broken_one" not in loaded
    assert {task.env_id for task in TASKS.values()} <= listed
    assert {"plugin/Units-v0", "plugin/Hook-v0"} <= listed


def test_unknown_id_lists_available_envs_and_suggests():
    with pytest.raises(KeyError) as err:  # UnknownEnvError is a KeyError with a plain message
        make_env("reopold_agent/ToolMath-v9")
    message = str(err.value)
    assert isinstance(err.value, UnknownEnvError)
    assert message.startswith("unknown tool environment 'reopold_agent/ToolMath-v9'. Did you "
                              "mean 'reopold_agent/ToolMath-v0'? Available: ")
    assert all(task.env_id in message for task in TASKS.values())
    assert "entry-point group" in message


def test_non_tool_env_and_bad_module_are_clear_errors():
    with pytest.raises(UnknownEnvError, match="'CartPole-v1' is one of gymnasium's own environments, "
                                              "not a tool environment"):
        make_env("CartPole-v1")
    with pytest.raises(UnknownEnvError, match="cannot import module 'no_such_mod_q'"):
        make_env("no_such_mod_q:Thing-v0")


def test_wrapped_specs_are_refused(clean_registry):
    gymnasium.register(id="test_local/Timed-v0", entry_point="tests.envs.example_env:UnitsEnv",
                       max_episode_steps=5)
    with pytest.raises(ValueError, match="max_tool_rounds instead"):
        make_env("test_local/Timed-v0")


def test_list_envs_describes_builtin_tools():
    infos = {info.env_id: info for info in list_envs()}
    assert [t.name for t in infos["reopold_agent/ToolMath-v0"].tools] == ["python"]
    assert [t.name for t in infos["reopold_agent/VisualQA-v0"].tools] == ["zoom"]
    assert str(infos["reopold_agent/VisualQA-v0"].tools[0]).startswith("zoom: Crop the region")
    assert infos["reopold_agent/Code-v0"].entry_point == "reopold_agent.envs.code:CodeEnv"
    assert infos["reopold_agent/Code-v0"].description.startswith("Programming problems")
