"""A plain ``gymnasium.Env`` (no ToolEnv, nothing imported from reopold_agent) that follows the
tool-environment contract: reset gives chat messages and ``info["tools"]``, step takes the
assistant's text and gives tool messages, or verifies a final answer. ``train --env`` trains it."""

import json
import re

import gymnasium

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}


class AdderEnv(gymnasium.Env):
    """What is a + b? An `add` tool; the answer in \\boxed{}. The reset seed picks a and b."""

    metadata = {"render_modes": []}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.a, self.b = (int(x) for x in self.np_random.integers(0, 100, size=2))
        self.rounds = 0
        return ([{"role": "system", "content": "Use the add tool, then answer in \\boxed{}."},
                 {"role": "user", "content": f"What is {self.a} + {self.b}?"}],
                {"tools": [ADD], "question": f"{self.a}+{self.b}"})

    def step(self, action):
        calls = re.findall(r"<tool_call>(.*?)</tool_call>", action, re.S)
        if not calls:
            found = re.search(r"\\boxed\{(-?\d+)\}", action)
            reward = float(found is not None and int(found.group(1)) == self.a + self.b)
            return [], reward, True, False, {"extracted": found and found.group(1), "correct": reward == 1.0}
        self.rounds += 1
        replies = []
        for call in calls:
            try:
                arguments = json.loads(call)["arguments"]
                content = str(arguments["a"] + arguments["b"])
            except (ValueError, KeyError, TypeError) as exc:
                content = f"error: {type(exc).__name__}: {exc}"
            replies.append({"role": "tool", "name": "add", "content": content})
        return replies, 0.0, False, self.rounds >= 3, {}


gymnasium.register(id="plain/Adder-v0", entry_point=AdderEnv)


class NoToolsEnv(AdderEnv):
    """Breaks the contract: its reset info does not declare the tools."""

    def reset(self, *, seed=None, options=None):
        messages, _ = super().reset(seed=seed, options=options)
        return messages, {}


gymnasium.register(id="plain/NoTools-v0", entry_point=NoToolsEnv)
