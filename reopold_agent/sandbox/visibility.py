"""What of the host filesystem a local-sandbox program sees: hidden paths, exposed prefixes.

The launcher (or a warm worker's server) covers every directory of :func:`hidden_paths` with
an empty tmpfs, then binds back, read-only, the directories of :func:`exposed_paths`: the
prefixes of the sandbox's interpreter that lie under a hidden directory (a virtual
environment or a Python build in a home directory keeps working; the rest of that home stays
hidden). Everything is computed on the host, before any namespace exists.
"""

from __future__ import annotations

import os
import pwd

from reopold_agent.sandbox.config import HOME, SandboxConfig

_MAX_LINKS = 40


def home_directory() -> str | None:
    """The calling user's home directory from the password database (None if unknown or /)."""
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None
    home = os.path.normpath(home) if home and home.startswith("/") else ""
    return home if home not in ("", "/") else None


def hidden_paths(config: SandboxConfig) -> list[str]:
    """``config.hide_paths`` with ``~`` expanded and paths normalised, duplicates dropped."""
    out: list[str] = []
    for entry in config.hide_paths:
        path = home_directory() if entry == HOME else os.path.normpath(entry)
        if path is not None and path != "/" and path not in out:
            out.append(path)
    return out


def _symlink_chain(path: str) -> list[str]:
    """``path`` and every path its symbolic links lead to, the last one a real file."""
    chain = [os.path.normpath(path)]
    for _ in range(_MAX_LINKS):
        if not os.path.islink(chain[-1]):
            break
        target = os.readlink(chain[-1])
        chain.append(os.path.normpath(os.path.join(os.path.dirname(chain[-1]), target)))
    real = os.path.realpath(path)
    return chain if real in chain else [*chain, real]


def _venv_home(prefix: str) -> str | None:
    """The ``home`` of a virtual environment's ``pyvenv.cfg`` (the base interpreter's bin)."""
    try:
        with open(os.path.join(prefix, "pyvenv.cfg"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip().startswith("/"):
            return os.path.normpath(value.strip())
    return None


def interpreter_prefixes(python: str) -> list[str]:
    """Directories the interpreter ``python`` needs: for each path on its symlink chain the
    installation prefix (the parent of ``bin/``, else the file's own directory), and the base
    installation of a virtual environment."""
    out: list[str] = []
    for path in _symlink_chain(python):
        folder = os.path.dirname(path)
        prefix = os.path.dirname(folder) if os.path.basename(folder) == "bin" else folder
        home = _venv_home(prefix)
        for item in (prefix, *((os.path.dirname(home),) if home else ())):
            if item not in out and item != "/":
                out.append(item)
    return out


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def exposed_paths(hidden: list[str], python: str) -> list[str]:
    """The interpreter prefixes that a hidden directory would cover, to be bound back.

    A prefix that is itself a hidden directory (a ``bin/`` right in a home directory) is not
    exposed whole: only the interpreter's own directory is.
    """
    out: list[str] = []
    chain_dirs = {os.path.dirname(p) for p in _symlink_chain(python)}
    for prefix in interpreter_prefixes(python):
        if not any(_under(prefix, h) for h in hidden):
            continue
        if prefix in hidden:
            candidates = sorted(d for d in chain_dirs if _under(d, prefix) and d != prefix)
        else:
            candidates = [prefix]
        out += [c for c in candidates if c not in out and os.path.isdir(c)]
    return out
