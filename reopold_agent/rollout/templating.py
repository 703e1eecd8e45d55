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
"""

from __future__ import annotations

import json
from typing import Any

_PROMPT_CACHE_SIZE = 4096
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
        self._prompts: dict[str, list[int]] = {}

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
        ids = self.encode(self._render(messages, add_generation_prompt=True, tools=tools))
        if key is not None:
            if len(self._prompts) >= _PROMPT_CACHE_SIZE:
                self._prompts.clear()
            self._prompts[key] = list(ids)
        return ids

    def tool_turn_ids(self, generated_text: str, tool_messages: list[dict[str, Any]]) -> list[int]:
        """Ids to append after an assistant turn whose decoded text is ``generated_text``.

        Covers the unfinished part of the assistant closer, the tool messages and the next
        generation prompt.
        """
        full = self._render(_PROBE + tool_messages, add_generation_prompt=True)
        if not full.startswith(self._probe_text):
            raise ValueError("chat template is not append-only for tool messages; cannot template tool turns")
        return self.encode(self.closer_remainder(generated_text) + full[len(self._probe_text):])

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
