"""Token text for display: the run's tokenizer, loaded on first use, or the bare ids.

The tokenizer is looked for, in order, at ``model.student`` of ``config.yaml`` (relative paths:
under the directory training ran in, the run directory and its parent), in the run's
checkpoints (trainers save the tokenizer there, newest first), at a relative ``model.student``
under the current directory and, when ``model.student`` is a hub id, in the local Hugging
Face cache (never over the network: an offline viewer must not stall on retries). When none
loads, tokens are shown as ``<id>`` and :attr:`note` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .loading import RunInfo


class TokenDecoder:
    """Decodes single token ids with the run's tokenizer, loading it lazily.

    Args:
        info: the run (for ``model.student`` and the checkpoints folder).
        tokenizer: an already loaded tokenizer (skips the search), or None.
        enabled: False to never load a tokenizer (ids only).
    """

    def __init__(self, info: RunInfo, tokenizer: Any = None, *, enabled: bool = True) -> None:
        self.info = info
        self._tokenizer = tokenizer
        self._tried = tokenizer is not None or not enabled
        self._cache: dict[int, str] = {}
        self.note = "" if enabled else "tokenizer disabled: showing token ids"

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer, or None (tries once)."""
        if not self._tried:
            self._tried = True
            self._tokenizer = self._load()
        return self._tokenizer

    def text(self, token_id: int) -> str:
        """Display text of one token (``<id>`` without a tokenizer)."""
        if token_id not in self._cache:
            tok = self.tokenizer
            if tok is None:
                self._cache[token_id] = f"<{token_id}>"
            else:
                try:
                    self._cache[token_id] = tok.decode([token_id])
                except Exception:  # a broken vocabulary entry must not stop the replay
                    self._cache[token_id] = f"<{token_id}>"
        return self._cache[token_id]

    def texts(self, token_ids: list[int]) -> list[str]:
        return [self.text(i) for i in token_ids]

    def candidates(self) -> list[tuple[str, bool]]:
        """(place, local_files_only) to try: local folders first, the hub cache last."""
        local: list[str] = []
        student, root = self.info.student, self.info.root
        relative = bool(student) and not Path(student).is_absolute()
        if student and root is not None and relative:
            local += [str(base / student) for base in _training_dirs(root, self.info)]
        elif student:
            local.append(str(student))
        if root is not None:
            latest = root / "checkpoints" / "LATEST"
            if latest.exists():
                local.append(str(root / "checkpoints" / latest.read_text().strip()))
            local += [str(p) for p in sorted((root / "checkpoints").glob("step_*"), reverse=True)]
        if relative:
            local.append(str(student))  # relative to the current directory: least certain
        out = [(p, True) for p in dict.fromkeys(local) if Path(p).is_dir()]
        if student and not Path(student).exists() and student.count("/") == 1:
            out.append((str(student), True))  # a hub id: only from the local cache, no network
        return out

    def _load(self) -> Any:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            self.note = "transformers is not installed: showing token ids"
            return None
        for where, local_only in self.candidates():
            try:
                tok = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
            except Exception:  # not a tokenizer folder, not cached, ...: try the next place
                continue
            self.note = f"tokenizer: {where}"
            return tok
        self.note = "no tokenizer could be loaded (model.student, checkpoints): showing token ids"
        return None


def _training_dirs(root: Path, info: RunInfo) -> list[Path]:
    """Where relative model paths of the config may have been relative to."""
    out = [root, root.parent]
    out_dir = info.config.get("output_dir")
    if isinstance(out_dir, str) and not Path(out_dir).is_absolute():
        parts = Path(out_dir).parts
        if parts and root.resolve().parts[-len(parts):] == parts:
            out.insert(0, Path(*root.resolve().parts[:-len(parts)]))
    return out
