"""Per-token numbers of a trajectory and their colour scales (KL figures: :mod:`.teacher_kl`).

For every token t of an episode (T tokens) the replay shows:

* ``reward``: R_t = teacher_logprobs[t] - logprobs[t] (method section 1), model tokens only;
  for an episode another engine sampled (vLLM) the trainer's ``trainer_logprobs[t]`` stand for
  ``logprobs[t]`` here and in the selection, as they did in the update;
* ``clipped``: max(R_t, c) with c = log(lam) / (1 - lam) (section 2);
* ``logprob`` / ``teacher``: student (behaviour) and teacher log-probs;
* ``entropy``: student next-token entropy (recorded at sampling, or recomputed by the trainer);
* ``selection``: the REOPOLD keep mask M_t of the step's phase (section 4), recomputed with
  :func:`reopold_agent.objectives.reopold_keep_mask`; in refinement the threshold tau_beta is
  the top-beta entropy threshold over the valid tokens of the whole step file;
* ``loss_mask``;
* ``mismatch``: trainer_logprobs[t] - logprobs[t], log(pi_trainer / pi_sampler) at the model
  tokens of an episode vLLM sampled (absent otherwise).

Departure: the trainer's threshold covers one mini-batch (``selection_scope: minibatch``); with
``train.mini_batches: 1`` that is the whole step, as here; with more mini-batches the replayed
selection is an approximation. Values that are not recorded (no teacher scores yet) are None
and shown as absent.

Images (vision-language episodes): the placeholder tokens of each image (source ``image``, loss
mask 0, carrying no numbers) are drawn as one :class:`ImageSpan` marker, e.g.
``[image 1: 4 tokens, grid 1x4x4, images/<hash>.png]``; :func:`display_units` splits a token
range into single tokens and whole image spans for the terminal view and the HTML export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..objectives import ObjectiveInputs, entropy_threshold, reopold_keep_mask
from ..trajectory import Trajectory
from .fields import FIELD_LABELS, FIELDS
from .loading import RunInfo
from .teacher_kl import token_reward, trajectory_kl, turn_kl

__all__ = [
    "FIELDS", "FIELD_LABELS", "ColourScale", "ImageSpan", "TokenTable", "build_token_table",
    "colour_scale", "display_units", "fmt", "image_details", "image_spans", "step_entropy_threshold", "text_colour",
    "span_at", "token_details", "trajectory_kl", "turn_kl",
]

_DIVERGING = ((0.0, "#b2182b"), (0.25, "#ef8a62"), (0.5, "#f7f7f7"), (0.75, "#67a9cf"),
              (1.0, "#2166ac"))
_SEQUENTIAL = ((0.0, "#440154"), (0.25, "#3b528b"), (0.5, "#21918c"), (0.75, "#5ec962"),
               (1.0, "#fde725"))
_SELECTED, _DROPPED, _MASKED = "#1a9850", "#7f7f7f", "#3465a4"


@dataclass
class TokenTable:
    """Per-token fields of one trajectory (lists of length T; None = absent)."""

    traj: Trajectory
    reward: list[float | None]
    clipped: list[float | None]
    selection: list[bool | None]
    phase: str | None
    """``exploration``, ``refinement`` or None (evaluation episode, other objective)."""
    floor: float | None
    threshold: float | None
    """tau_beta used in refinement (None in exploration)."""
    note: str = ""
    """Why the selection is absent, if it is."""

    def values(self, name: str) -> list:
        """The per-token list of field ``name`` (one of :data:`FIELDS`)."""
        t = self.traj
        absent = [None] * t.num_tokens
        return {
            "reward": self.reward, "clipped": self.clipped, "selection": self.selection,
            "logprob": t.logprobs, "teacher": t.teacher_logprobs or absent,
            "entropy": t.entropy or absent, "loss_mask": t.loss_mask, "mismatch": _mismatch(t),
        }[name]


@dataclass(frozen=True)
class ColourScale:
    """Maps one field's values to hex colours; non-model tokens stay uncoloured."""

    field: str
    vmin: float = 0.0
    vmax: float = 1.0
    stops: tuple = _SEQUENTIAL
    marks: tuple = ()
    """Extra (label, value) legend entries, e.g. the reward floor c."""

    def colour(self, value) -> str | None:
        """Hex colour of ``value``, or None when absent."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if self.field == "selection":
            return _SELECTED if value else _DROPPED
        if self.field == "loss_mask":
            return _MASKED if value else None
        x = (float(value) - self.vmin) / (self.vmax - self.vmin)
        return _interpolate(self.stops, min(1.0, max(0.0, x)))

    def legend(self) -> list[tuple[str, str]]:
        """(label, colour) entries describing the scale."""
        if self.field == "selection":
            return [("selected (in loss)", _SELECTED), ("not selected", _DROPPED)]
        if self.field == "loss_mask":
            return [("1: model token", _MASKED)]
        out = []
        for i in range(5):
            v = self.vmin + (self.vmax - self.vmin) * i / 4
            prefix = "<=" if i == 0 else (">=" if i == 4 else "")
            out.append((f"{prefix}{v:+.2f}", self.colour(v)))
        return out + [(label, self.colour(v)) for label, v in self.marks]


@dataclass(frozen=True)
class ImageSpan:
    """The placeholder tokens of one image, shown as a single marker instead of N image tokens."""

    number: int
    """1-based position of the image in the episode (``traj.images`` order)."""
    start: int
    """First placeholder token."""
    end: int
    """One past the last placeholder token."""
    path: str
    """Path as recorded (relative to the run directory, ``images/<hash>.png``)."""
    grid_thw: tuple[int, ...] | None
    """Vision-encoder patch grid (temporal, height, width), when recorded."""
    file: Path | None
    """The stored PNG resolved against the run directory; None without a run directory."""
    exists: bool
    """Whether ``file`` was there when the trajectory was opened."""

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    def marker(self) -> str:
        """e.g. ``[image 1: 4 tokens, grid 1x4x4, images/ab12.png]`` (with a note when missing)."""
        grid = "x".join(str(v) for v in self.grid_thw) if self.grid_thw else "not recorded"
        return f"[image {self.number}: {self.num_tokens} tokens, grid {grid}, {self.path}{self.missing_note()}]"

    def missing_note(self) -> str:
        """``""``, or why the image cannot be shown (leading space included)."""
        if self.exists:
            return ""
        if self.file is None:
            return " (file not found: no run directory to look in)"
        return " (file missing from the run directory)"


def image_spans(traj: Trajectory, run_dir: Path | None) -> list[ImageSpan]:
    """The image spans of ``traj`` with their stored files resolved against ``run_dir``."""
    out = []
    for k, rec in enumerate(traj.images):
        file = Path(rec.path)
        if not file.is_absolute():
            file = run_dir / file if run_dir is not None else None
        grid = tuple(int(v) for v in rec.grid_thw) if rec.grid_thw else None
        out.append(ImageSpan(k + 1, rec.token_start, rec.token_end, rec.path, grid, file,
                             file is not None and file.is_file()))
    return out


def display_units(spans: list[ImageSpan], start: int, end: int) -> list[tuple[int, int, ImageSpan | None]]:
    """Tokens ``start:end`` as drawn: ``(t, t + 1, None)`` per token, ``(s, e, span)`` per image.

    An image span cut by ``start``/``end`` keeps the part inside (spans never cross turns, as
    the engine appends an image with the message that holds it).
    """
    by_start = {s.start: s for s in spans}
    inside = {t: s for s in spans for t in range(s.start, s.end)}
    out: list[tuple[int, int, ImageSpan | None]] = []
    t = start
    while t < end:
        span = by_start.get(t) or (inside.get(t) if t == start else None)
        if span is None:
            out.append((t, t + 1, None))
            t += 1
        else:
            stop = min(span.end, end)
            out.append((t, stop, span))
            t = stop
    return out


def span_at(spans: list[ImageSpan], t: int) -> ImageSpan | None:
    """The image span holding token ``t``, or None."""
    return next((s for s in spans if s.start <= t < s.end), None)


def colour_scale(name: str, table: TokenTable) -> ColourScale:
    """The colour scale of field ``name`` for ``table`` (reward scales are fixed across runs)."""
    if name in ("reward", "clipped"):
        marks = () if table.floor is None else ((f"floor c={table.floor:+.2f}", table.floor),)
        return ColourScale(name, -4.0, 4.0, _DIVERGING, marks)
    if name in ("logprob", "teacher"):
        return ColourScale(name, -10.0, 0.0, _SEQUENTIAL)
    if name == "mismatch":  # saturates where the ratio leaves [0.5, 2]
        return ColourScale(name, -math.log(2.0), math.log(2.0), _DIVERGING)
    if name == "entropy":
        top = max((v for v in table.values("entropy") if v is not None and math.isfinite(v)),
                  default=1.0)
        return ColourScale(name, 0.0, max(1.0, math.ceil(top)), _SEQUENTIAL)
    return ColourScale(name)


def build_token_table(traj: Trajectory, info: RunInfo, *, evaluation: bool = False,
                      threshold: float | None = None) -> TokenTable:
    """Compute R, max(R, c) and the REOPOLD selection of ``traj``.

    Args:
        traj: the episode.
        info: run configuration (lam, beta, switch step).
        evaluation: True for evaluation episodes (never trained on: no selection).
        threshold: the step's tau_beta (see :func:`step_entropy_threshold`), for refinement.
    """
    floor = info.floor
    reward = _rewards(traj)
    clipped = [None if r is None or floor is None else max(r, floor) for r in reward]
    phase = None if evaluation else info.phase(traj.step)
    selection, note = _selection(traj, info, phase, threshold, evaluation)
    return TokenTable(traj, reward, clipped, selection, phase, floor,
                      threshold if phase == "refinement" else None, note)


def step_entropy_threshold(trajs: list[Trajectory], beta: float) -> float | None:
    """tau_beta over the valid tokens of all ``trajs`` (one step); None without entropies."""
    values = [e for t in trajs if t.entropy is not None
              for e, m in zip(t.entropy, t.loss_mask) if m == 1 and e is not None]
    if not values:
        return None
    entropy_N = torch.tensor(values, dtype=torch.float64)
    return float(entropy_threshold(entropy_N, torch.ones_like(entropy_N, dtype=torch.bool), beta))


def fmt(value) -> str:
    """How every number is shown (TUI, HTML tooltips): 4 decimals, ``absent`` for None."""
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:+.4f}"


def token_details(table: TokenTable, t: int, text: str) -> list[tuple[str, str]]:
    """(label, value) pairs of everything known about token ``t``."""
    traj = table.traj
    rows = [("token", f"{t} / {traj.num_tokens}"), ("id", str(traj.token_ids[t])),
            ("text", repr(text)), ("source", traj.source[t]), ("turn", str(traj.turn[t]))]
    rows += [(FIELD_LABELS[name], fmt(table.values(name)[t])) for name in FIELDS]
    return rows


def image_details(span: ImageSpan) -> list[tuple[str, str]]:
    """(label, value) pairs describing an image span (shown instead of one token's numbers)."""
    grid = "x".join(str(v) for v in span.grid_thw) if span.grid_thw else "not recorded"
    where = str(span.file) if span.file is not None else span.path
    return [("image", str(span.number)), ("tokens", f"{span.start}..{span.end - 1} ({span.num_tokens}, source image, "
                                                    "loss mask 0)"),
            ("patch grid (t x h x w)", grid), ("file", where + span.missing_note())]


def _mismatch(traj: Trajectory) -> list[float | None]:
    """trainer_logprobs - logprobs at model tokens of an episode another engine sampled (vLLM)."""
    if traj.trainer_logprobs is None:
        return [None] * traj.num_tokens
    return [None if m != 1 or a is None or b is None else a - b
            for m, a, b in zip(traj.loss_mask, traj.trainer_logprobs, traj.logprobs)]


def _rewards(traj: Trajectory) -> list[float | None]:
    return [(token_reward(traj, t) if traj.loss_mask[t] == 1 else None) for t in range(traj.num_tokens)]


def _selection(traj: Trajectory, info: RunInfo, phase: str | None, threshold: float | None,
               evaluation: bool) -> tuple[list[bool | None], str]:
    absent = [None] * traj.num_tokens
    if evaluation:
        return absent, "evaluation episode: not trained on"
    cfg = info.reopold
    if cfg is None or phase is None:
        return absent, "not a REOPOLD run (or no config.yaml)"
    if traj.teacher_logprobs is None:
        return absent, "no teacher scores yet"
    if phase == "refinement" and traj.entropy is None:
        return absent, "no entropies recorded"
    nan = float("nan")

    def tensor(values):
        return torch.tensor([[nan if v is None else float(v) for v in values]], dtype=torch.float64)

    student = traj.trainer_logprobs if traj.trainer_logprobs is not None else traj.logprobs
    batch = ObjectiveInputs(
        logprobs=tensor(student), teacher_logprobs=tensor(traj.teacher_logprobs),
        entropy=None if traj.entropy is None else tensor(traj.entropy),
        loss_mask=torch.tensor([traj.loss_mask]), entropy_threshold=threshold)
    keep = reopold_keep_mask(batch, step=traj.step, config=cfg)[0].tolist()
    note = "" if phase == "exploration" or threshold is not None else \
        "threshold over this episode only (step file not available)"
    return [bool(k) if m == 1 else None for k, m in zip(keep, traj.loss_mask)], note


def _interpolate(stops: tuple, x: float) -> str:
    for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
        if x <= x1:
            w = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            a, b = _rgb(c0), _rgb(c1)
            return "#" + "".join(f"{round(p + (q - p) * w):02x}" for p, q in zip(a, b))
    return stops[-1][1]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def text_colour(background: str | None) -> str:
    """Black or white, whichever reads better on ``background``."""
    if background is None:
        return "#000000"
    r, g, b = _rgb(background)
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"
