"""The trajectory view of ``reopold-agent replay``: turns, coloured tokens, numbers, re-runs.

Left, top: the conversation of the current turn (student text, its tool calls, the tool
outputs, images). Left, bottom: the turn's tokens coloured by the chosen field, with a cursor;
each image's placeholder tokens are one marker (``[image 1: 4 tokens, grid 1x4x4, images/...]``)
that the cursor steps over as a whole.
Right: the REOPOLD phase of the step, the legend, every number of the token under the cursor,
the per-turn teacher-student KL, and the result of re-running the turn's tool calls.
"""

from __future__ import annotations

import json

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from .session import OpenedTrajectory, ReplaySession
from .token_view import (FIELD_LABELS, FIELDS, ImageSpan, colour_scale, display_units, fmt, image_details,
                         span_at, text_colour, token_details)
from .turns import ImageView, TurnView, message_text

THUMB_COLUMNS = 32
"""Width of image thumbnails in terminal cells (two pixel rows per cell)."""


class TrajectoryScreen(Screen):
    """Turn-by-turn view of one trajectory."""

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "back"),
        Binding("n", "turn(1)", "next turn"),
        Binding("p", "turn(-1)", "prev turn"),
        Binding("right,l", "move(1)", "token +1", priority=True, show=False),
        Binding("left,h", "move(-1)", "token -1", priority=True, show=False),
        Binding("down,j", "move(10)", "token +10", priority=True, show=False),
        Binding("up", "move(-10)", "token -10", priority=True, show=False),
        Binding("home", "move(-1000000000)", "first", show=False),
        Binding("end", "move(1000000000)", "last", show=False),
        Binding("c", "cycle_field", "colouring"),
        *[Binding(str(i + 1), f"set_field('{f}')", FIELD_LABELS[f], show=False)
          for i, f in enumerate(FIELDS)],
        Binding("a", "toggle_all", "all turns"),
        Binding("t", "rerun", "re-run tools"),
        Binding("question_mark", "app.push_screen('help')", "help"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, session: ReplaySession, opened: OpenedTrajectory) -> None:
        super().__init__()
        self.session = session
        self.opened = opened
        self.field = "reward"
        self.turn_index = 1 if len(opened.turns) > 1 else 0
        self.show_all = False
        self.cursor = 0
        self.texts = session.decoder.texts(opened.traj.token_ids)
        self.rerun_text = Text("t: re-run this turn's tool calls", style="dim")

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="left"):
                yield VerticalScroll(Static(id="conversation"), id="conv-scroll")
                yield VerticalScroll(Static(id="tokens"), id="tok-scroll")
            with VerticalScroll(id="right"):
                for name in ("phase", "legend", "token-info", "turn-kl", "rerun"):
                    yield Static(id=name)
        yield Footer()

    def on_mount(self) -> None:
        s = self.opened.summary
        self.title = f"{s.label}  step {s.step}  {s.task}  reward {fmt(s.reward)}"
        self._goto_turn(self.turn_index)

    # ----------------------------------------------------------------- navigation
    def span(self) -> tuple[int, int]:
        """Token range of the view (the current turn, or all tokens)."""
        if self.show_all:
            return 0, self.opened.traj.num_tokens
        turn = self.opened.turns[self.turn_index]
        return turn.token_start, turn.token_end

    def _goto_turn(self, k: int) -> None:
        self.turn_index = max(0, min(k, len(self.opened.turns) - 1))
        start, end = self.span()
        mask = self.opened.traj.loss_mask
        self.cursor = next((t for t in range(start, end) if mask[t] == 1), start)
        self.rerun_text = Text("t: re-run this turn's tool calls", style="dim")
        self.refresh_all()

    def action_turn(self, delta: int) -> None:
        self._goto_turn(self.turn_index + delta)

    def action_move(self, delta: int) -> None:
        """Move by ``delta`` drawn units (a token, or a whole image span)."""
        starts = [u[0] for u in display_units(self.opened.images, *self.span())]
        if starts:
            here = max(i for i, t in enumerate(starts) if t <= max(self.cursor, starts[0]))
            self.cursor = starts[max(0, min(len(starts) - 1, here + delta))]
        self.refresh_tokens()

    def action_cycle_field(self) -> None:
        self.action_set_field(FIELDS[(FIELDS.index(self.field) + 1) % len(FIELDS)])

    def action_set_field(self, name: str) -> None:
        self.field = name
        self.refresh_tokens()

    def action_toggle_all(self) -> None:
        self.show_all = not self.show_all
        self._goto_turn(self.turn_index)

    def action_rerun(self) -> None:
        turn = self.opened.turns[self.turn_index]
        if not turn.tool_calls:
            self.rerun_text = Text("this turn made no tool call", style="dim")
        else:
            self.rerun_text = rerun_text(self.session.rerun(turn))
        self.query_one("#rerun", Static).update(self.rerun_text)

    # ------------------------------------------------------------------ rendering
    def refresh_all(self) -> None:
        o = self.opened
        self.query_one("#phase", Static).update(Text(o.phase_text(), style="bold"))
        self.query_one("#conversation", Static).update(
            conversation_text(self.opened, self.turn_index, self.show_all))
        self.query_one("#turn-kl", Static).update(turn_kl_text(o, self.turn_index))
        self.query_one("#rerun", Static).update(self.rerun_text)
        self.refresh_tokens()

    def refresh_tokens(self) -> None:
        start, end = self.span()
        o = self.opened
        self.query_one("#tokens", Static).update(
            tokens_text(o, self.texts, self.field, start, end, self.cursor))
        self.query_one("#legend", Static).update(legend_text(o, self.field))
        info = Text()
        image = span_at(o.images, self.cursor)
        if end > start:
            rows = image_details(image) if image is not None else \
                token_details(o.table, self.cursor, self.texts[self.cursor])
            for label, value in rows:
                info.append(f"{label:>24}: ", style="bold")
                info.append(value + "\n")
        else:
            info.append("this turn has no tokens")
        if self.session.decoder.note:
            info.append(self.session.decoder.note, style="dim")
        self.query_one("#token-info", Static).update(info)
        self._scroll_to_cursor(start)

    def _scroll_to_cursor(self, start: int) -> None:
        """Keep the cursor token in view (line count estimated from character wrapping)."""
        scroll = self.query_one("#tok-scroll", VerticalScroll)
        width = max(10, scroll.scrollable_content_region.width)
        line = col = 0
        for t, _, image in display_units(self.opened.images, start, self.cursor):
            for ch in (image.marker() if image is not None else shown_token(self.texts[t])):
                line, col = (line + 1, 0) if ch == "\n" or col + 1 >= width else (line, col + 1)
        scroll.scroll_to(y=max(0, line - scroll.size.height // 2), animate=False)


def tokens_text(o: OpenedTrajectory, texts: list[str], field: str, start: int, end: int,
                cursor: int) -> Text:
    """Tokens ``start:end`` coloured by ``field``; the cursor token is underlined, reversed.

    Each image span is one marker instead of its placeholder tokens (see :class:`ImageSpan`).
    """
    scale = colour_scale(field, o.table)
    values, mask = o.table.values(field), o.traj.loss_mask
    out = Text()
    for t, stop, image in display_units(o.images, start, end):
        if image is not None:
            out.append(image_marker_text(image, under_cursor=t <= cursor < stop))
            continue
        colour = scale.colour(values[t]) if mask[t] == 1 or field == "loss_mask" else None
        style = f"{text_colour(colour)} on {colour}" if colour else ("" if mask[t] else "dim")
        if t == cursor:
            style += " reverse underline bold"
        out.append(shown_token(texts[t]), style=style.strip())
    return out


def image_marker_text(image: ImageSpan, *, under_cursor: bool = False) -> Text:
    """The marker drawn for an image span (red when its file is missing)."""
    style = "bold magenta" if image.exists else "bold red"
    return Text(image.marker(), style=style + (" reverse underline" if under_cursor else ""))


def shown_token(text: str) -> str:
    """How a token is drawn: newlines as a return sign then a line break, empty as a null sign."""
    return text.replace("\n", "\u23ce\n") or "\u2205"


def legend_text(o: OpenedTrajectory, field: str) -> Text:
    out = Text(f"colour: {FIELD_LABELS[field]} ({FIELDS.index(field) + 1}/{len(FIELDS)}, c cycles)\n",
               style="bold")
    for label, colour in colour_scale(field, o.table).legend():
        out.append("  ", style=f"on {colour}")
        out.append(f" {label}  ")
    out.append("\nplain: no value / not a model token; dim: prompt/tool tokens", style="dim")
    return out


def turn_kl_text(o: OpenedTrajectory, current: int) -> Text:
    out = Text("teacher-student KL per turn (mean logp - teacher logp)\n", style="bold")
    for turn in o.turns[1:]:
        mark = ">" if turn.index == current else " "
        out.append(f"{mark} turn {turn.index}: {fmt(o.kl_by_turn.get(turn.index))}"
                   f"  ({turn.num_model_tokens} model tokens, {len(turn.tool_calls)} calls)\n")
    return out


def conversation_text(o: OpenedTrajectory, current: int, show_all: bool) -> Text:
    """Messages of the current turn (or all turns) with tool calls, outputs and images."""
    out = Text()
    turns = o.turns if show_all else [o.turns[current]]
    out.append(f"turn {current} of {len(o.turns) - 1}  |  end: {o.traj.end_reason}  |  "
               f"tool calls {o.traj.tool_calls}, errors {o.traj.tool_errors}\n\n", style="bold")
    for turn in turns:
        _turn_into(out, turn)
    return out


def _turn_into(out: Text, turn: TurnView) -> None:
    out.append(f"--- turn {turn.index}" + (" (prompt)" if turn.index == 0 else "") + " ---\n",
               style="bold magenta")
    for m in turn.messages:
        role = m.get("role", "?") + (f" ({m['name']})" if m.get("name") else "")
        out.append(f"[{role}]\n", style="bold cyan" if m.get("role") != "tool" else "bold yellow")
        out.append(message_text(m) + "\n")
    for call in turn.tool_calls:
        what = (f"malformed ({call.error})" if call.arguments is None
                else f"{call.name} {json.dumps(call.arguments, ensure_ascii=False)}")
        out.append(f"tool call {call.index}: ", style="bold green")
        out.append(what + "\n")
    for image in turn.images:
        out.append(image_text(image))


def image_text(image: ImageView) -> Text:
    """A half-block colour thumbnail when the file can be read, always its path and size."""
    out = Text(image.describe() + "\n", style="italic")
    if image.path is None or not image.path.exists():
        return out
    try:
        from PIL import Image

        with Image.open(image.path) as im:
            rgb = im.convert("RGB")
            w = THUMB_COLUMNS
            h = max(2, round(rgb.height * w / max(rgb.width, 1) / 2) * 2)
            px = rgb.resize((w, h)).load()
    except Exception:  # unreadable: path and size only
        return out
    for y in range(0, h, 2):
        for x in range(w):
            top, bottom = px[x, y], px[x, y + 1]
            out.append("\u2580", style=f"#{top[0]:02x}{top[1]:02x}{top[2]:02x} on "
                                       f"#{bottom[0]:02x}{bottom[1]:02x}{bottom[2]:02x}")
        out.append("\n")
    return out


def rerun_text(results) -> Text:
    out = Text("tool re-run\n", style="bold")
    for r in results:
        style = "green" if r.matches else ("red" if r.ran else "yellow")
        out.append(r.headline() + "\n", style=style)
        if r.ran and not r.matches:
            out.append((r.diff or r.output) + "\n")
    return out
