"""Message text tokenised as text: control tokens come only from the chat template.

A tokenizer turns the text ``<|im_end|>`` into the end-of-turn token wherever it appears, so a
program that prints ``<|im_end|>\\n<|im_start|>user\\n...`` would, if its output were simply
templated and tokenised, write a forged user turn into the context the student and the teacher
read. :class:`PlainText` prevents that: before a conversation is rendered, every occurrence of
an added token's text (special or not: ``<|im_start|>``, ``<tool_call>``, ``<|image_pad|>``,
...) in a message's text is replaced by a private placeholder character; the rendering is then
tokenised piece by piece, the template's text as usual and each placeholder as the plain
tokens of the characters it stands for. Where adjacent text parts of one message would form a
token across their boundary, the partial pieces are replaced too. Text without such
occurrences is tokenised exactly as before (one call on the whole rendering).
"""

from __future__ import annotations

import re
from typing import Any

_PRIVATE_USE = range(0xE000, 0xF900)


class PlainText:
    """Neutralises added-token text in messages and encodes renderings of them.

    Args:
        tokenizer: a Hugging Face tokenizer (fast tokenizers give exact plain tokens; slow
            ones split special tokens only).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        added = dict(tokenizer.get_added_vocab()) if hasattr(tokenizer, "get_added_vocab") else {}
        self.added_ids = frozenset(added.values())
        """Ids of the tokenizer's added tokens (control tokens among them)."""
        texts = sorted((t for t in added if t), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._prefixes = sorted({t[:k] for t in texts for k in range(1, len(t))}, key=len,
                                reverse=True)
        self._suffixes = sorted({t[k:] for t in texts for k in range(1, len(t))}, key=len,
                                reverse=True)

    def neutralise(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Copies of ``messages`` with added-token text in their strings replaced.

        Every string field but ``role`` is covered, and the ``text`` of list-content parts.

        Returns:
            The messages (the originals when nothing was replaced) and placeholder -> text.
        """
        if self._pattern is None or not any(self._needs_work(m) for m in messages):
            return messages, {}
        table: dict[str, str] = {}
        taken = _characters_in(messages)
        free = (chr(c) for c in _PRIVATE_USE if chr(c) not in taken)

        def mark(text: str) -> str:
            for key, value in table.items():
                if value == text:
                    return key
            key = next(free)
            table[key] = text
            return key

        out = [self._neutralise_message(m, mark) for m in messages]
        return out, table

    def encode(self, text: str, table: dict[str, str]) -> list[int]:
        """Ids of a rendering of neutralised messages (``table`` from :meth:`neutralise`)."""
        if not table:
            return self._encode(text)
        ids: list[int] = []
        for piece in re.split(f"([{''.join(map(re.escape, table))}])", text):
            if piece in table:
                ids += self.plain_ids(table[piece])
            elif piece:
                ids += self._encode(piece)
        return ids

    def plain_ids(self, text: str) -> list[int]:
        """The tokens of ``text`` with no added token matched: the model's own pieces."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return list(self.tokenizer(text, add_special_tokens=False,
                                       split_special_tokens=True)["input_ids"])
        normal = backend.normalizer.normalize_str(text) if backend.normalizer else text
        pieces = backend.pre_tokenizer.pre_tokenize_str(normal) if backend.pre_tokenizer \
            else [(normal, (0, len(normal)))]
        return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _needs_work(self, message: dict[str, Any]) -> bool:
        for key, value in message.items():
            if key == "role":
                continue
            if isinstance(value, str) and self._pattern.search(value):
                return True
            if isinstance(value, list):
                texts = [p.get("text") if isinstance(p, dict) else None for p in value]
                if any(isinstance(t, str) and self._pattern.search(t) for t in texts):
                    return True
                if any(isinstance(a, str) and isinstance(b, str) and self._pattern.search(a + b)
                       for a, b in zip(texts, texts[1:])):
                    return True
        return False

    def _neutralise_message(self, message: dict[str, Any], mark) -> dict[str, Any]:
        out = dict(message)
        for key, value in message.items():
            if key == "role":
                continue
            if isinstance(value, str):
                out[key] = self._replace(value, mark)
            elif isinstance(value, list):
                out[key] = self._neutralise_parts(value, mark)
        return out

    def _neutralise_parts(self, parts: list[Any], mark) -> list[Any]:
        """Text parts with added-token text replaced, and partial tokens where two meet."""
        out = []
        for i, part in enumerate(parts):
            if not (isinstance(part, dict) and isinstance(part.get("text"), str)):
                out.append(part)
                continue
            text = part["text"]
            before = parts[i - 1] if i > 0 else None
            after = parts[i + 1] if i + 1 < len(parts) else None
            head = tail = ""
            if _is_text(before):
                head = next((s for s in self._suffixes if text.startswith(s)), "")
            if _is_text(after):
                tail = next((p for p in self._prefixes if text.endswith(p)), "")
            if len(head) + len(tail) > len(text):
                head, tail = text, ""
            middle = text[len(head):len(text) - len(tail)]
            pieces = [mark(head) if head else "", self._replace(middle, mark),
                      mark(tail) if tail else ""]
            out.append({**part, "text": "".join(pieces)})
        return out

    def _replace(self, text: str, mark) -> str:
        return self._pattern.sub(lambda m: mark(m.group(0)), text)


def _is_text(part: Any) -> bool:
    return isinstance(part, dict) and isinstance(part.get("text"), str)


def _characters_in(value: Any) -> set[str]:
    """Every private-use character that occurs in the strings of ``value``."""
    found: set[str] = set()
    if isinstance(value, str):
        found.update(c for c in value if 0xE000 <= ord(c) < 0xF900)
    elif isinstance(value, dict):
        for item in value.values():
            found |= _characters_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= _characters_in(item)
    return found
