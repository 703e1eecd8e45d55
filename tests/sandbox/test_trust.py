"""looser_settings / no_looser_than: what an untrusted sandbox section may change."""

from __future__ import annotations

from reopold_agent.sandbox import SandboxConfig
from reopold_agent.sandbox.trust import looser_settings, no_looser_than

REFERENCE = SandboxConfig()


def test_each_way_of_isolating_less_is_named():
    config = SandboxConfig(allow_unisolated=True, memory_mb=2048, timeout_s=5.0,
                           python_executable="/opt/py/bin/python3", uid_base=1000, uid_count=1,
                           hide_paths=("/run",))
    found = looser_settings(config, REFERENCE)
    assert found[0].startswith("allow_unisolated=True")
    assert "memory_mb=2048 (more than 1024)" in found
    assert "python_executable='/opt/py/bin/python3' (instead of None)" in found
    assert "uid_base=1000 (instead of 1500000000)" in found
    assert not any(item.startswith("timeout_s") for item in found)  # 5 s is stricter
    assert found[-1].startswith("hide_paths without ~, /home, /root, /var/tmp")


def test_the_api_key_is_never_shown():
    found = looser_settings(SandboxConfig(backend="e2b", e2b_api_key="sekrit"), REFERENCE)
    assert "sekrit" not in " ".join(found) and "e2b_api_key=<set>" in " ".join(found)


def test_stricter_settings_are_taken_and_looser_ones_ignored():
    config, ignored = no_looser_than({"memory_mb": 128, "max_processes": 1000,
                                      "allow_unisolated": True, "hide_paths": ["/srv/x"]},
                                     REFERENCE)
    assert config.memory_mb == 128 and config.max_processes == REFERENCE.max_processes
    assert not config.allow_unisolated
    assert config.hide_paths == (*REFERENCE.hide_paths, "/srv/x")
    assert [note.split(":")[0] for note in ignored] == ["max_processes", "allow_unisolated"]


def test_a_section_that_is_not_a_mapping_changes_nothing():
    config, ignored = no_looser_than(["allow_unisolated"], REFERENCE)
    assert config == REFERENCE and "not a mapping" in ignored[0]
