"""Draw docs/images/reopold_ideas.png: REOPOLD's four ideas on one (illustrative) trajectory.

    python docs/images/reopold_ideas.py

The values are made up to show the rules, not measured. The rules are those of
``reopold_agent/objectives/reopold.py``: reward R = sg(log pi_T - log pi_theta) on the
student's tokens only, floor c = log(lam) / (1 - lam), exploration keeps tokens with R >= c,
refinement keeps the top-beta entropy tokens and floors their reward at c.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LAM, BETA = 0.3, 0.4
FLOOR = math.log(LAM) / (1 - LAM)
COLOURS = {"prompt": "#bdbdbd", "student": "#4c72b0", "tool": "#dd8452"}

# (source, label, reward, entropy) per segment; reward and entropy only for student tokens.
SEGMENTS = [
    ("prompt", "system + user prompt", None, None, 6),
    ("student", "student: tool call", [-0.1, -0.3, -2.6, -0.2, -0.5, -3.1, -0.05],
     [0.2, 0.5, 1.6, 0.3, 0.9, 2.0, 0.1], 7),
    ("tool", "tool output", None, None, 4),
    ("student", "student: answer", [-0.2, -1.1, -2.2, -0.4, -0.1, -0.6],
     [0.3, 1.2, 1.8, 0.6, 0.2, 0.7], 6),
]


def tokens():
    """One (x, source, reward, entropy) per token, and the segments' (start, end, label)."""
    out, spans, x = [], [], 0
    for source, label, rewards, entropies, n in SEGMENTS:
        spans.append((x, x + n, source, label))
        for i in range(n):
            out.append((x, source, rewards[i] if rewards else None, entropies[i] if entropies else None))
            x += 1
    return out, spans


def main() -> None:
    toks, spans = tokens()
    student = [t for t in toks if t[1] == "student"]
    k = max(1, round(BETA * len(student)))
    tau = sorted((t[3] for t in student), reverse=True)[k - 1]

    fig, (ax0, ax1, ax2) = plt.subplots(3, 1, figsize=(10, 6.4), sharex=True,
                                        gridspec_kw={"height_ratios": [0.55, 1.5, 1.25]})
    # Row 0: the trajectory, coloured by who wrote each token.
    for x, source, _, _ in toks:
        ax0.add_patch(plt.Rectangle((x + 0.05, 0), 0.9, 1, color=COLOURS[source]))
    for start, end, source, label in spans:
        ax0.text((start + end) / 2, 0.5, label, ha="center", va="center", fontsize=9,
                 color="white" if source == "student" else "black")
    ax0.set_ylim(0, 1)
    ax0.set_yticks([])
    ax0.set_title("One trajectory. Only the student's own tokens (blue) carry reward and loss; "
                  "prompt, tool output, images, padding never do", fontsize=10, loc="left")

    # Row 1: reward, floor, exploration mask.
    for x, source, r, _ in toks:
        if r is None:
            ax1.bar(x + 0.5, 0.12, bottom=-0.06, width=0.9, color=COLOURS[source], alpha=0.5)
            continue
        kept = r >= FLOOR
        ax1.bar(x + 0.5, r, width=0.9, color=COLOURS["student"] if kept else "white",
                edgecolor=COLOURS["student"], hatch=None if kept else "///")
        if not kept:
            ax1.text(x + 0.5, r - 0.25, "dropped", ha="center", va="top", fontsize=8, color="#c44e52")
    ax1.axhline(FLOOR, color="#c44e52", linestyle="--", linewidth=1.2)
    ax1.text(0.1, FLOOR - 0.12, f"floor c = log λ / (1 − λ)\n= {FLOOR:.2f} at λ = {LAM}",
             ha="left", va="top", fontsize=9, color="#c44e52")
    ax1.axhline(0, color="black", linewidth=0.6)
    ax1.set_ylim(-4.0, 0.6)
    ax1.set_ylabel("reward R")
    ax1.set_title("1. R = sg(log π_teacher − log π_student) per token (stop-gradient: a reward, "
                  "not a loss to differentiate)\n"
                  "2.+3. Exploration (before the switch): tokens with R < c are dropped from the loss",
                  fontsize=10, loc="left")

    # Row 2: entropy selection after the switch.
    for x, source, r, h in toks:
        if h is None:
            continue
        kept = h >= tau
        ax2.bar(x + 0.5, h, width=0.9, color=COLOURS["student"] if kept else "#dde3ee")
        if kept:
            ax2.text(x + 0.5, h + 0.05, f"{max(r, FLOOR):.2f}", ha="center", va="bottom", fontsize=8)
    ax2.axhline(tau, color="#55a868", linestyle="--", linewidth=1.2)
    ax2.text(-0.2, tau + 0.05, f"top β = {BETA:.0%} by entropy", ha="left", va="bottom",
             fontsize=9, color="#55a868")
    ax2.set_ylim(0, 2.8)
    ax2.set_ylabel("student entropy H")
    ax2.set_title("4. Refinement (after the switch): only the highest-entropy tokens train, "
                  "with reward max(R, c) (written above each)", fontsize=10, loc="left")
    ax2.set_xlim(-0.3, len(toks) + 0.3)
    ax2.set_xticks([])
    ax2.set_xlabel("tokens of the episode (illustrative values)")
    for ax in (ax0, ax1, ax2):
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    out = Path(__file__).with_name("reopold_ideas.png")
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
