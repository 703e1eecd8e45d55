"""Stopping a model's supervised training by measured accuracy rather than a step count.

Learning on the embedded tasks is abrupt (a few dozen steps take a model from 10% to 80%), so a
fixed step count lands at very different accuracies on CPUs whose floating-point results
differ. :func:`train_to_target` instead advances a :class:`~reopold_agent.supervised.SupervisedRun`
until the greedy accuracy that :func:`probe_accuracy` measures lands in an
:class:`AccuracyTarget` band, going back to a snapshot when a jump skips the band.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..rollout.config import RolloutConfig
from ..supervised import SupervisedRun


class EmbeddedBuildError(RuntimeError):
    """A role's measured accuracy did not land inside its target band."""


@dataclass(frozen=True)
class AccuracyTarget:
    """Where a role's supervised training stops: its greedy accuracy on probe problems.

    Training runs to ``first_check``, then measures every ``every`` steps and stops at the first
    measurement at or above ``low``. If that one is also above ``high`` (the accuracy jumped over
    the band between two measurements), training goes back to the previous measurement and
    advances ``fine_every`` steps at a time instead. A role that never reaches ``low`` by
    ``max_steps``, or jumps over the band even at the fine spacing, fails the build with
    :class:`EmbeddedBuildError`.
    """

    low: float
    high: float = 1.0
    first_check: int = 100
    every: int = 25
    fine_every: int = 5
    max_steps: int = 2000

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= 1:
            raise ValueError(f"accuracy band must satisfy 0 <= low <= high <= 1, got [{self.low}, {self.high}]")
        if not (1 <= self.fine_every <= self.every and 1 <= self.first_check <= self.max_steps):
            raise ValueError("need 1 <= fine_every <= every and 1 <= first_check <= max_steps")


@dataclass(frozen=True)
class AccuracyProbe:
    """The held-out problems a build measures its models on (never the reported eval split)."""

    env_kwargs: dict
    """Environment settings of the probe episodes (split ``train``)."""
    first_index: int = 50_000
    """Train-split items from here on: beyond the gold conversations the models imitate."""
    num_problems: int = 200
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(temperature=0.0))
    """Budgets of the probe episodes (greedy)."""


def train_to_target(run: SupervisedRun, target: AccuracyTarget, measure: Callable[[], float], *,
                    on_step: Callable[[int, float], None] | None = None,
                    log: Callable[[str], None] = print, role: str = "model") -> dict:
    """Advance ``run`` until ``measure()`` lands in ``target``'s band (see :class:`AccuracyTarget`).

    Returns:
        ``{"steps": steps trained, "accuracy": the accuracy reached, "measurements": [[step,
        accuracy], ...] in the order taken}``.

    Raises:
        EmbeddedBuildError: the band was not reached by ``max_steps`` or was jumped over.
    """
    measurements: list[list[float]] = []
    spacing, previous = target.every, None
    next_check = target.first_check
    while True:
        run.advance(next_check - run.step, on_step=on_step)
        accuracy = measure()
        measurements.append([run.step, accuracy])
        log(f"step {run.step}: {100 * accuracy:.1f}% of the probe problems solved greedily")
        if accuracy >= target.low:
            if accuracy <= target.high:
                return {"steps": run.step, "accuracy": accuracy, "measurements": measurements}
            if previous is None or spacing == target.fine_every:
                raise EmbeddedBuildError(
                    f"the embedded {role} jumped past its accuracy band [{100 * target.low:.0f}%, "
                    f"{100 * target.high:.0f}%] to {100 * accuracy:.1f}% at step {run.step} "
                    f"(measurements: {_measurement_text(measurements)})")
            run.restore(previous)
            spacing, previous = target.fine_every, None
            log(f"past the band; back to step {run.step}, measuring every {spacing} steps")
        elif run.step >= target.max_steps:
            raise EmbeddedBuildError(
                f"the embedded {role} reached only {100 * accuracy:.1f}% greedy accuracy after {run.step} steps "
                f"(needs {100 * target.low:.0f}%; measurements: {_measurement_text(measurements)})")
        elif spacing == target.every:
            previous = run.snapshot()
        next_check = min(run.step + spacing, target.max_steps)


def _measurement_text(measurements: list[list[float]]) -> str:
    return ", ".join(f"{int(step)}: {100 * acc:.1f}%" for step, acc in measurements)


def probe_accuracy(task: str, probe: AccuracyProbe, model: Any, tokenizer: Any, *, sandbox: Any,
                   vision: Any = None, seed: int = 0) -> Callable[[], float]:
    """A function returning the greedy accuracy of ``model`` (as it is when called) on the
    probe problems of ``task``, played through its environment with tool calls in ``sandbox``."""
    from ..envs.registry import make_env
    from ..evaluation import evaluate
    from ..rollout.engine import RolloutEngine
    from ..rollout.hf_backend import HFGenerationBackend
    from ..tasks.spec import TASKS

    env_id = TASKS[task].env_id
    backend = HFGenerationBackend(model, pad_token_id=tokenizer.pad_token_id, vision=vision)
    engine = RolloutEngine(backend, tokenizer, probe.rollout, vision=vision)
    indices = list(range(probe.first_index, probe.first_index + probe.num_problems))

    def make_probe_env():
        return make_env(env_id, **probe.env_kwargs, split="train", sandbox=sandbox)

    def measure() -> float:
        metrics, _ = evaluate(engine, make_probe_env, indices, samples=0, greedy=True,
                              batch_episodes=probe.num_problems, seed=seed)
        return metrics["eval/greedy_accuracy"]

    return measure
