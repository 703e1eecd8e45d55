"""ChatML chat template with tool calls, tool responses and image placeholders.

:data:`CHATML_TOOL_TEMPLATE` is the Jinja template attached to the offline tiny tokenizer
(:mod:`reopold_agent.demo.tiny_models`). It follows the Qwen2.5 / Hermes layout::

    <|im_start|>system
    You are a helpful assistant.

    # Tools
    python(code: string) - Run Python code and return what it prints.
    Call a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>
    <|im_start|>user
    What is 2+3?<|im_end|>
    <|im_start|>assistant
    <tool_call>{"name": "python", "arguments": {"code": "print(2+3)"}}</tool_call><|im_end|>
    <|im_start|>user
    <tool_response>
    5
    </tool_response><|im_end|>
    <|im_start|>assistant
    The answer is 5.<|im_end|>

Accepted input:

* roles ``system``, ``user``, ``assistant``, ``tool``; any other role raises;
* ``content`` a string, ``None``, or a list of parts ``{"type": "text", "text": ...}`` /
  ``{"type": "image", ...}`` (also ``"image_url"``, or a part with an ``image`` key); an image
  part renders :data:`IMAGE_PLACEHOLDER`, which a vision processor expands later;
* assistant ``tool_calls`` in OpenAI format (``{"type": "function", "function": {"name": ...,
  "arguments": dict or JSON string}}``; the ``function`` wrapper may be omitted). A string
  ``arguments`` is written verbatim, a dict with ``json.dumps`` defaults (``", "``/``": "``);
* ``tools``: OpenAI function schemas (or bare ``{"name", "description", "parameters"}``).

Deliberate departures from Qwen2.5's template:

* Tools are listed one line each as ``name(arg: type, opt?: type) - description`` instead of a
  JSON schema dump (the dump doubled a tool_math prompt and slowed training ~1.5x). An argument
  gets ``?`` when the schema has a ``required`` list that does not name it.
* A default system message (:data:`DEFAULT_SYSTEM_PROMPT`) is inserted only when tools are
  given and the conversation has no system message; without tools nothing is inserted.
* Tool calls are written ``<tool_call>{json}</tool_call>`` without inner newlines, one per line.
* Consecutive ``tool`` messages share one ``user`` turn, but that turn is closed lazily: its
  ``<|im_end|>\\n`` is written by the next non-tool message or by ``add_generation_prompt``. A
  conversation that ends with tool messages therefore renders an open turn when
  ``add_generation_prompt=False``. This keeps the template append-only (rendering
  ``messages[:k]`` is a prefix of rendering ``messages[:k + 1]``), which Qwen2.5's template is
  not between two tool messages.

``{% generation %}`` wraps what the assistant generates: its content, its tool calls and the
closing ``<|im_end|>``; the ``\\n`` after ``<|im_end|>`` is template text, outside the mask.
"""

from __future__ import annotations

IM_START = "<|im_start|>"
"""Opens a turn; followed by the role name and a newline."""
IM_END = "<|im_end|>"
"""Closes a turn; the end-of-sequence token of assistant turns."""
ENDOFTEXT = "<|endoftext|>"
"""Document separator; the padding token of the tiny tokenizer."""
TOOL_CALL_START = "<tool_call>"
"""Opens a JSON tool call inside an assistant turn."""
TOOL_CALL_END = "</tool_call>"
"""Closes a JSON tool call."""
TOOL_RESPONSE_START = "<tool_response>"
"""Opens one tool result inside the user turn that carries tool results."""
TOOL_RESPONSE_END = "</tool_response>"
"""Closes one tool result."""
VISION_START = "<|vision_start|>"
"""Opens an image placeholder (Qwen2-VL convention)."""
VISION_END = "<|vision_end|>"
"""Closes an image placeholder."""
IMAGE_PAD = "<|image_pad|>"
"""Stands for the image's visual tokens; a processor repeats it once per visual token."""
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
"""What one image part renders to before a processor expands it."""
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
"""System text inserted when tools are given and the conversation has no system message."""

CHATML_TOOL_TEMPLATE = (
    # Renders a string, None, or a list of text/image parts.
    "{%- macro render_content(content) -%}\n"
    "    {%- if content is string -%}\n"
    "        {{- content -}}\n"
    "    {%- elif content is not none -%}\n"
    "        {%- for part in content -%}\n"
    "            {%- if part is string -%}\n"
    "                {{- part -}}\n"
    "            {%- elif part.type == 'text' or (part.type is not defined and part.text is defined) -%}\n"
    "                {{- part.text -}}\n"
    "            {%- elif part.type in ['image', 'image_url'] or part.image is defined -%}\n"
    "                {{- '" + IMAGE_PLACEHOLDER + "' -}}\n"
    "            {%- else -%}\n"
    "                {{- raise_exception('Unsupported content part type: ' ~ part.type) -}}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- endif -%}\n"
    "{%- endmacro -%}\n"
    # One line per tool: name(arg: type, opt?: type) - description
    "{%- macro render_tools(tools) -%}\n"
    "    {{- '\\n\\n# Tools\\n' -}}\n"
    "    {%- for tool in tools -%}\n"
    "        {%- set fn = tool.function if tool.function is defined else tool -%}\n"
    "        {%- set params = fn.parameters if fn.parameters is defined and fn.parameters else {} -%}\n"
    "        {{- fn.name ~ '(' -}}\n"
    "        {%- if params.properties is defined and params.properties -%}\n"
    "            {%- for arg_name, arg in params.properties.items() -%}\n"
    "                {{- ', ' if not loop.first else '' -}}\n"
    "                {{- arg_name -}}\n"
    "                {%- if params.required is defined and arg_name not in params.required -%}\n"
    "                    {{- '?' -}}\n"
    "                {%- endif -%}\n"
    "                {%- if arg.type is not defined -%}\n"
    "                    {{- ': any' -}}\n"
    "                {%- elif arg.type is string -%}\n"
    "                    {{- ': ' ~ arg.type -}}\n"
    "                {%- else -%}\n"
    "                    {{- ': ' ~ (arg.type | join('|')) -}}\n"
    "                {%- endif -%}\n"
    "            {%- endfor -%}\n"
    "        {%- endif -%}\n"
    "        {{- ')' -}}\n"
    "        {%- if fn.description is defined and fn.description -%}\n"
    "            {{- ' - ' ~ fn.description -}}\n"
    "        {%- endif -%}\n"
    "        {{- '\\n' -}}\n"
    "    {%- endfor -%}\n"
    "    {{- 'Call a tool as " + TOOL_CALL_START + '{"name": ..., "arguments": {...}}'
    + TOOL_CALL_END + "' -}}\n"
    "{%- endmacro -%}\n"
    # System turn carrying the tools.
    "{%- set tools_in_system = tools is defined and tools is not none and tools | length > 0 -%}\n"
    "{%- if tools_in_system -%}\n"
    "    {{- '" + IM_START + "system\\n' -}}\n"
    "    {%- if messages | length > 0 and messages[0].role == 'system' -%}\n"
    "        {{- render_content(messages[0].content) -}}\n"
    "    {%- else -%}\n"
    "        {{- '" + DEFAULT_SYSTEM_PROMPT + "' -}}\n"
    "    {%- endif -%}\n"
    "    {{- render_tools(tools) -}}\n"
    "    {{- '" + IM_END + "\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- for message in messages -%}\n"
    "    {%- if not (loop.first and message.role == 'system' and tools_in_system) -%}\n"
    # The next non-tool message closes a run of tool messages.
    "        {%- if not loop.first and loop.previtem.role == 'tool' and message.role != 'tool' -%}\n"
    "            {{- '" + IM_END + "\\n' -}}\n"
    "        {%- endif -%}\n"
    "        {%- if message.role == 'tool' -%}\n"
    "            {%- if loop.first or loop.previtem.role != 'tool' -%}\n"
    "                {{- '" + IM_START + "user\\n' -}}\n"
    "            {%- else -%}\n"
    "                {{- '\\n' -}}\n"
    "            {%- endif -%}\n"
    "            {{- '" + TOOL_RESPONSE_START + "\\n' -}}\n"
    "            {{- render_content(message.content) -}}\n"
    "            {{- '\\n" + TOOL_RESPONSE_END + "' -}}\n"
    "        {%- elif message.role == 'assistant' -%}\n"
    "            {{- '" + IM_START + "assistant\\n' -}}\n"
    "            {%- generation -%}\n"
    "                {%- set text = render_content(message.content) -%}\n"
    "                {{- text -}}\n"
    "                {%- if message.tool_calls is defined and message.tool_calls -%}\n"
    "                    {%- for tool_call in message.tool_calls -%}\n"
    "                        {%- if text or not loop.first -%}\n"
    "                            {{- '\\n' -}}\n"
    "                        {%- endif -%}\n"
    "                        {%- set fn = tool_call.function if tool_call.function is defined"
    " else tool_call -%}\n"
    "                        {%- set args = fn.arguments if fn.arguments is defined"
    " and fn.arguments is not none else {} -%}\n"
    "                        {{- '" + TOOL_CALL_START + '{"name": \' ~ (fn.name | tojson)'
    " ~ ', \"arguments\": ' -}}\n"
    "                        {%- if args is string -%}\n"
    "                            {{- args -}}\n"
    "                        {%- else -%}\n"
    "                            {{- args | tojson -}}\n"
    "                        {%- endif -%}\n"
    "                        {{- '}" + TOOL_CALL_END + "' -}}\n"
    "                    {%- endfor -%}\n"
    "                {%- endif -%}\n"
    "                {{- '" + IM_END + "' -}}\n"
    "            {%- endgeneration -%}\n"
    "            {{- '\\n' -}}\n"
    "        {%- elif message.role in ['system', 'user'] -%}\n"
    "            {{- '" + IM_START + "' ~ message.role ~ '\\n' -}}\n"
    "            {{- render_content(message.content) -}}\n"
    "            {{- '" + IM_END + "\\n' -}}\n"
    "        {%- else -%}\n"
    "            {{- raise_exception('Unsupported message role: ' ~ message.role) -}}\n"
    "        {%- endif -%}\n"
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {%- if messages | length > 0 and messages[-1].role == 'tool' -%}\n"
    "        {{- '" + IM_END + "\\n' -}}\n"
    "    {%- endif -%}\n"
    "    {{- '" + IM_START + "assistant\\n' -}}\n"
    "{%- endif -%}\n"
)
"""Jinja chat template (ChatML + tools + images + ``{% generation %}``); see the module docstring."""
