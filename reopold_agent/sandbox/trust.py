"""Sandbox settings from a source that is not trusted (a run directory someone shared).

A run's ``config.yaml`` says how its programs ran, but whoever wrote the file chose it: a
``sandbox:`` section with ``allow_unisolated: true`` and an interpreter that makes the
isolation self-test fail would run recorded programs directly on the host. So a setting
read from such a file is taken only when it isolates at least as much as a trusted
reference (the defaults): a limit no higher, the same interpreter and uid range, every
reference path still hidden (extra hidden paths are welcome), never ``allow_unisolated``,
the local backend. :func:`looser_settings` says in which ways one configuration isolates
less than another; only the user's own choices (command-line flags) may do so, and the
caller warns about each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from reopold_agent.sandbox.config import SandboxConfig

LIMIT_FIELDS = ("timeout_s", "cpu_time_s", "memory_mb", "file_size_mb", "workdir_mb",
                "max_open_files", "max_processes", "max_output_bytes")
"""Numeric limits: a higher value isolates less."""
FIXED_FIELDS = ("backend", "python_executable", "uid_base", "uid_count", "e2b_template",
                "e2b_api_key")
"""Settings that must equal the reference's: any other value is the chooser's machinery
(an interpreter, a uid range that may be a real user's, a cloud account)."""


def looser_settings(config: SandboxConfig, reference: SandboxConfig) -> list[str]:
    """The ways ``config`` isolates less than ``reference``, one readable item each.

    Returns:
        e.g. ``["allow_unisolated=True", "memory_mb=4096 (more than 1024)"]``; empty when
        ``config`` is at least as strict.
    """
    out = []
    if config.allow_unisolated and not reference.allow_unisolated:
        out.append("allow_unisolated=True (runs code on the host if isolation fails)")
    for name in LIMIT_FIELDS:
        value, limit = getattr(config, name), getattr(reference, name)
        if value > limit:
            out.append(f"{name}={value!r} (more than {limit!r})")
    for name in FIXED_FIELDS:
        value = getattr(config, name)
        if value != getattr(reference, name):
            shown = "<set>" if name == "e2b_api_key" and value else repr(value)
            out.append(f"{name}={shown} (instead of {getattr(reference, name)!r})")
    uncovered = [p for p in reference.hide_paths if p not in config.hide_paths]
    if uncovered:
        out.append(f"hide_paths without {', '.join(uncovered)}")
    return out


def no_looser_than(section: Mapping[str, Any] | None, reference: SandboxConfig
                   ) -> tuple[SandboxConfig, list[str]]:
    """Take from an untrusted ``sandbox:`` section what keeps isolation at ``reference``'s.

    Each known key is tried on its own: kept if the result is valid and not looser than
    ``reference`` (``hide_paths`` adds to the reference's list), otherwise ignored with a
    note. Unknown keys are ignored silently (an older or newer version wrote them).

    Returns:
        The configuration, and one note per setting that was ignored.
    """
    names = {f.name for f in dataclasses.fields(SandboxConfig)}
    config, ignored = reference, []
    if section is not None and not isinstance(section, Mapping):
        return reference, [f"the sandbox section is not a mapping: {section!r}"]
    for key, value in (section or {}).items():
        if key not in names:
            continue
        if key == "hide_paths" and isinstance(value, (list, tuple)):
            value = [*config.hide_paths, *(p for p in value if p not in config.hide_paths)]
        try:
            candidate = config.with_overrides(**{key: value})
        except (TypeError, ValueError) as exc:
            ignored.append(f"{key}: {exc}")
            continue
        looser = looser_settings(candidate, reference)
        if looser:
            ignored.append(f"{key}: {'; '.join(looser)}")
        else:
            config = candidate
    return config, ignored
