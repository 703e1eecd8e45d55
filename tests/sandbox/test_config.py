"""SandboxConfig: defaults and validation messages that name the bad field."""

from __future__ import annotations

import pytest

from reopold_agent.sandbox import SandboxConfig


def test_defaults():
    config = SandboxConfig()
    assert (config.backend, config.timeout_s, config.memory_mb, config.max_output_bytes) == (
        "local", 10.0, 1024, 16384)
    assert config.allow_unisolated is False and config.python_executable is None
    assert config.warm_workers == 4


@pytest.mark.parametrize(("field", "value"), [
    ("backend", "docker"),
    ("timeout_s", 0),
    ("timeout_s", float("inf")),
    ("timeout_s", True),
    ("cpu_time_s", 0),
    ("cpu_time_s", 1.5),
    ("memory_mb", 10),
    ("file_size_mb", -1),
    ("workdir_mb", 0),
    ("max_open_files", 3),
    ("max_processes", 0),
    ("max_output_bytes", 0),
    ("warm_workers", -1),
    ("warm_workers", 1.5),
    ("warm_workers", True),
    ("allow_unisolated", "yes"),
    ("python_executable", "python3"),
    ("uid_base", 0),
    ("uid_count", 2**32),
    ("hide_paths", ["home"]),
    ("hide_paths", "/home"),
    ("hide_paths", ("/",)),
    ("e2b_template", ""),
    ("e2b_api_key", ""),
])
def test_bad_field_is_named(field, value):
    with pytest.raises(ValueError, match=rf"SandboxConfig\.{field} "):
        SandboxConfig(**{field: value})


def test_api_key_is_not_in_repr():
    assert "sekrit" not in repr(SandboxConfig(backend="e2b", e2b_api_key="sekrit"))


def test_with_overrides_validates():
    assert SandboxConfig().with_overrides(timeout_s=2.5).timeout_s == 2.5
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig().with_overrides(timeout_s=-1)


def test_the_whole_config_round_trips_through_yaml():
    """config.yaml holds hide_paths as a YAML list; reading it back gives the same config."""
    import yaml

    from reopold_agent.config_loading import from_dict, to_dict

    config = SandboxConfig(timeout_s=3.5, cpu_time_s=3, memory_mb=512, file_size_mb=2,
                           workdir_mb=8, max_open_files=32, max_processes=4,
                           max_output_bytes=100, warm_workers=0, python_executable="/usr/bin/python3",
                           uid_base=2_000_000_000, uid_count=10, hide_paths=("~", "/run", "/data"),
                           e2b_template="tpl")
    text = yaml.safe_dump(to_dict(config))
    assert "hide_paths:\n- '~'\n- /run\n- /data\n" in text
    data = yaml.safe_load(text)
    assert from_dict(SandboxConfig, data) == config
    assert SandboxConfig(**data) == config  # a list is accepted directly, kept as a tuple


def test_default_hide_paths_cover_private_places():
    hidden = SandboxConfig().hide_paths
    for path in ("~", "/home", "/root", "/run", "/var/tmp", "/dev/shm"):
        assert path in hidden
