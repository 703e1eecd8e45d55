"""Token-in, token-out chat templating: template only what is appended, never the history.

Chat templates are not append-only in general (some drop past reasoning, some re-render tool
calls), so re-templating a whole conversation after each turn can change tokens the student
already sampled. The engine therefore keeps the sampled ids untouched and asks this module for
the ids of what comes *after* them:

* the prompt of an episode (system + user messages, with the generation prompt), templated once;
* after an assistant turn that called tools: the rest of the assistant turn's closing boundary
  (e.g. ``<|im_end|>\\n`` when generation stopped at ``</tool_call>``, or just ``\\n`` when it
  stopped at ``<|im_end|>``), the tool messages, and the next generation prompt.

The suffix is found by rendering a fixed probe conversation with and without the appended
messages and taking the difference, so it depends only on the template, not on the history.
Message text (prompts and tool outputs) is tokenised as text, so only the template itself
produces control tokens (:mod:`.plain_text`). Tool turns of the same shape (same roles and fields, other text contents) are rendered once:
the rendering with a marker in place of each content is split around the markers, and later
turns fill in their contents. That is exact only for templates that insert a tool message's
text verbatim, which the templater checks on its first tool turn (full renderings against
filled skeletons, on contents with spaces at the ends, newlines, quotes, JSON, markup and an
empty one); for any other template, and for contents that are not plain text (images), every
tool turn is rendered in full.
"""

from __future__ import annotations

import json
from typing import Any

from .plain_text import PlainText

_PROMPT_CACHE_SIZE = 4096
_SKELETON_CACHE_SIZE = 1024
_CONTENT_MARK = "\x00reopold-tool-content-{}\x00"
_VERBATIM_PROBES = ("", "7", " 42 \n", "\n\nline\n\n", "a\tb  ", '{"x": "y\\n", "z": [1, 2]}',
                    "</tool_response><|im_end|>\n<tool_call>", "'\"\\ & <b>", "Traceback:\n  x\u00fc\u20ac")
_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "PROBE_ASSISTANT_TEXT"},
]


class ChatTemplater:
    """Renders prompts and appended tool turns to token ids with a tokenizer's chat template.

    Args:
        tokenizer: a Hugging Face tokenizer (or processor's tokenizer) with a chat template.
        render_tools: pass tool schemas to the template (``tools=``); turn off when the
            environment's system prompt already describes its tools briefly.
    """

    def __init__(self, tokenizer: Any, *, render_tools: bool = True) -> None:
        self.tokenizer = tokenizer
        self.render_tools = render_tools
        probe_text = self._render(_PROBE, add_generation_prompt=False)
        marker = _PROBE[-1]["content"]
        if marker not in probe_text:
            raise ValueError("chat template does not render assistant content verbatim; cannot template tool turns")
        self.assistant_closer = probe_text[probe_text.index(marker) + len(marker):]
        """Text the template puts after an assistant message's content (e.g. ``<|im_end|>\\n``)."""
        self._probe_text = probe_text
        self.plain = PlainText(tokenizer)
        """Keeps message text from producing control tokens (see :mod:`.plain_text`)."""
        self._prompts: dict[str, list[int]] = {}
        self._skeletons: dict[str, list[str] | None] = {}
        self._verbatim: bool | None = None

    @property
    def verbatim_tool_content(self) -> bool:
        """Whether tool turns are filled into cached skeletons (checked on first use; see the
        module docstring)."""
        if self._verbatim is None:
            self._verbatim = self._inserts_tool_content_verbatim()
        return self._verbatim

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> list[int]:
        """Token ids of the opening messages followed by the generation prompt.

        Text-only prompts are remembered (the G rollouts of a prompt share it): a repeat costs a
        JSON dump instead of a template render and a tokenisation.
        """
        tools = tools if self.render_tools else None
        try:
            key = json.dumps([messages, tools])  # key order kept: templates may render it
        except (TypeError, ValueError):  # images or other objects: render every time
            key = None
        if key is not None and key in self._prompts:
            return list(self._prompts[key])
        shown, table = self.plain.neutralise(messages)
        ids = self.plain.encode(self._render(shown, add_generation_prompt=True, tools=tools), table)
        if key is not None:
            if len(self._prompts) >= _PROMPT_CACHE_SIZE:
                self._prompts.clear()
            self._prompts[key] = list(ids)
        return ids

    def tool_turn_ids(self, generated_text: str, tool_messages: list[dict[str, Any]]) -> list[int]:
        """Ids to append after an assistant turn whose decoded text is ``generated_text``.

        Covers the unfinished part of the assistant closer, the tool messages and the next
        generation prompt. The messages' text is tokenised as text: a tool output holding
        ``<|im_end|>`` gets the tokens of those characters, never the control token.
        """
        shown, table = self.plain.neutralise(tool_messages)
        return self.plain.encode(self.closer_remainder(generated_text) + self._tool_turn_text(shown),
                                 table)

    def _tool_turn_text(self, tool_messages: list[dict[str, Any]]) -> str:
        """What the template appends after an assistant turn for ``tool_messages``, generation
        prompt included; from the cached skeleton of their shape when the template allows."""
        key = _shape_key(tool_messages) if self.verbatim_tool_content else None
        if key is None:
            return self._render_tool_turn(tool_messages)
        if key not in self._skeletons:
            if len(self._skeletons) >= _SKELETON_CACHE_SIZE:
                self._skeletons.clear()
            self._skeletons[key] = self._skeleton(tool_messages)
        pieces = self._skeletons[key]
        if pieces is None:  # the markers did not come out one each, in order
            return self._render_tool_turn(tool_messages)
        return _fill(pieces, tool_messages)

    def _render_tool_turn(self, tool_messages: list[dict[str, Any]]) -> str:
        full = self._render(_PROBE + tool_messages, add_generation_prompt=True)
        if not full.startswith(self._probe_text):
            raise ValueError("chat template is not append-only for tool messages; cannot template tool turns")
        return full[len(self._probe_text):]

    def _skeleton(self, tool_messages: list[dict[str, Any]]) -> list[str] | None:
        """The rendered tool turn split around each message's content (None if it cannot be)."""
        marks = [_CONTENT_MARK.format(i) for i in range(len(tool_messages))]
        text = self._render_tool_turn([dict(m, content=mark) for m, mark in zip(tool_messages, marks)])
        pieces = []
        for mark in marks:
            if text.count(mark) != 1:
                return None
            head, text = text.split(mark)
            pieces.append(head)
        return pieces + [text]

    def _inserts_tool_content_verbatim(self) -> bool:
        """Whether filling skeletons gives the full rendering on the probe contents."""
        try:
            for content in _VERBATIM_PROBES:
                for messages in ([{"role": "tool", "content": content}],
                                 [{"role": "tool", "content": "1"}, {"role": "tool", "content": content}]):
                    pieces = self._skeleton(messages)
                    if pieces is None or _fill(pieces, messages) != self._render_tool_turn(messages):
                        return False
        except Exception:  # noqa: BLE001 - e.g. a template without tool messages: render in full (and fail there)
            return False
        return True

    def closer_remainder(self, generated_text: str) -> str:
        """The part of the assistant closer that the generated text does not already end with."""
        closer = self.assistant_closer
        for k in range(len(closer), 0, -1):
            if generated_text.endswith(closer[:k]):
                return closer[k:]
        return closer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages, *, add_generation_prompt: bool, tools=None) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def _shape_key(tool_messages: list[dict[str, Any]]) -> str | None:
    """Everything of the messages but their text contents, as a key (None unless all are text)."""
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in tool_messages):
        return None
    try:
        return json.dumps([{k: v for k, v in m.items() if k != "content"} for m in tool_messages])
    except (TypeError, ValueError):
        return None


def _fill(pieces: list[str], tool_messages: list[dict[str, Any]]) -> str:
    """The skeleton ``pieces`` with each message's content between its two pieces."""
    return pieces[0] + "".join(m["content"] + piece for m, piece in zip(tool_messages, pieces[1:]))
