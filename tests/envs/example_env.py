"""A unit-conversion tool environment: the example of docs/environments.md and the README."""
import gymnasium

from reopold_agent.envs import Tool, ToolEnv, ToolOutput, Verdict
from reopold_agent.tasks.answers import extract_boxed, numbers_equal

METRES = {"km": 1000.0, "m": 1.0, "cm": 0.01, "mile": 1609.344, "foot": 0.3048}


class Convert(Tool):
    name = "convert"
    description = "Convert a length from one unit to another."
    parameters = {"type": "object", "required": ["value", "unit_from", "unit_to"],
                  "properties": {"value": {"type": "number"},
                                 "unit_from": {"type": "string", "enum": list(METRES)},
                                 "unit_to": {"type": "string", "enum": list(METRES)}}}

    def run(self, value, unit_from, unit_to):
        return ToolOutput(text=f"{value * METRES[unit_from] / METRES[unit_to]:.4g}")


class UnitsEnv(ToolEnv):
    """Length conversions with a `convert` tool; answers in \\boxed{}."""
    task_name = "units"
    items = [{"question": "How many metres are 3.5 miles?", "answer": "5633"},
             {"question": "How many feet are 12 metres?", "answer": "39.37"}]

    def __init__(self, **kwargs): super().__init__(tools=[Convert()], **kwargs)
    def num_items(self): return len(self.items)
    def load_item(self, index): return self.items[index]
    def prompt(self, item):
        return [{"role": "system", "content": "Use the convert tool. Answer in \\boxed{}."},
                {"role": "user", "content": item["question"]}]
    def verify(self, item, text):
        got = extract_boxed(text)
        return Verdict(float(got is not None and numbers_equal(got, item["answer"])), got)


gymnasium.register(id="example/Units-v0", entry_point=UnitsEnv)
