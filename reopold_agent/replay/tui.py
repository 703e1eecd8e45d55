"""``reopold-agent replay``: a keyboard-driven terminal UI over a run's trajectories (textual).

Screens: the trajectory list (this module), the trajectory view
(:mod:`reopold_agent.replay.tui_trajectory`), and help / bad-lines pop-ups. The list fills in as
files are indexed by a background thread, so a large run opens at once; KL values are computed
(by parsing the trajectories) only when the list is sorted by KL.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from ..trajectory_io import LineError
from .filters import SORT_KEYS, TrajectoryFilter, parse_filter, sort_summaries
from .loading import Summary
from .session import ReplaySession
from .token_view import fmt

MAX_ROWS = 2000
"""Rows shown at once; filter to see others."""

HELP = """\
[b]Trajectory list[/b]
  up/down, enter   move, open the trajectory under the cursor
  f or /           edit the filter; enter applies it, escape returns to the list
                   terms: step=3 step=2..5 kind=step|eval|teacher task=NAME end=REASON
                          reward=1 reward>0 reward<=0.5 truncated !truncated
                          errors !errors (tool errors) scored !scored (teacher scores)
  s / r            next sort order (file, kl, reward, tokens, tool_errors, step) / reverse
  k                sort by teacher-student KL (parses the listed trajectories once)
  u                re-scan the run (new files and lines of a run still being written)
  e                lines that could not be read (file:line: reason)

[b]Trajectory view[/b]
  n / p            next / previous turn          a   all turns / one turn
  left/right       previous / next token         up/down  10 tokens back / forward
  home / end       first / last token of the view
  c                next colouring; 1-8 pick one: 1 reward R, 2 clipped max(R,c),
                   3 student log-prob, 4 teacher log-prob, 5 entropy,
                   6 REOPOLD selection, 7 loss mask, 8 trainer - sampler log-prob
  t                re-run the turn's python tool calls in the sandbox and compare
  escape           back to the list

  ?  this help      q  quit
"""


class HelpScreen(ModalScreen):
    """The key reference."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        yield VerticalScroll(Static(Text.from_markup(HELP), id="help-text"), id="help")


class ErrorsScreen(ModalScreen):
    """Lines that could not be read."""

    BINDINGS = [Binding("escape,q,e", "dismiss", "close")]

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def compose(self) -> ComposeResult:
        body = "\n".join(self.lines) or "no unreadable lines so far"
        yield VerticalScroll(Static(Text(body), id="errors-text"), id="errors")


class ListScreen(Screen):
    """Filterable, sortable list of the run's trajectories."""

    BINDINGS = [
        Binding("f,slash", "edit_filter", "filter"),
        Binding("s", "next_sort", "sort"),
        Binding("r", "reverse", "reverse"),
        Binding("k", "sort_kl", "sort by KL"),
        Binding("u", "rescan", "re-scan"),
        Binding("e", "show_errors", "bad lines"),
        Binding("question_mark", "app.push_screen('help')", "help"),
        Binding("q", "app.quit", "quit"),
    ]
    COLUMNS = ("line", "kind", "step", "phase", "reward", "KL", "trunc", "tools", "errs",
               "tokens", "end", "task", "prompt", "g")

    def __init__(self, session: ReplaySession, filter_text: str = "") -> None:
        super().__init__()
        self.session = session
        self.filter: TrajectoryFilter = parse_filter(filter_text)
        self.sort_key, self.reverse = "file", False
        self.summaries: list[Summary] = []
        self.shown: list[Summary] = []
        self.indexing = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(self.filter.text, placeholder="filter, e.g. step=3 reward>0 !truncated errors "
                    "(enter applies)", id="filter")
        yield DataTable(id="trajectories", cursor_type="row", zebra_stripes=True)
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*self.COLUMNS)
        table.focus()
        self.start_indexing()

    def start_indexing(self) -> None:
        self.indexing = True
        self.summaries, self.shown = [], []
        self.query_one(DataTable).clear()
        self.run_worker(self._index_files, thread=True, exclusive=True, group="index")

    def _index_files(self) -> None:
        worker = get_current_worker()
        index = self.session.index
        index.refresh()
        for tf in list(index.files):
            found = list(index.file_summaries(tf))
            if worker.is_cancelled:
                return
            self.app.call_from_thread(self._add, found)
        self.app.call_from_thread(self._index_done)

    def _add(self, found: list[Summary]) -> None:
        self.summaries.extend(found)
        if self.sort_key == "file" and not self.reverse:
            rows = [s for s in found if self.filter(s)][:max(0, MAX_ROWS - len(self.shown))]
            self.shown.extend(rows)
            self._add_rows(rows)
        self._status()

    def _index_done(self) -> None:
        self.indexing = False
        self.apply()

    def apply(self) -> None:
        """Re-filter, re-sort and redraw the table."""
        matching = [s for s in self.summaries if self.filter(s)]
        self.shown = sort_summaries(matching, self.sort_key, reverse=self.reverse)[:MAX_ROWS]
        table = self.query_one(DataTable)
        table.clear()
        self._add_rows(self.shown)
        self._status(len(matching))

    def _add_rows(self, rows: list[Summary]) -> None:
        table = self.query_one(DataTable)
        for s in rows:
            table.add_row(*self._cells(s), key=f"{s.path}:{s.line}")

    def _cells(self, s: Summary) -> list:
        phase = None if s.evaluation or s.step is None else self.session.index.info.phase(s.step)
        kl = fmt(s.kl) if s.kl_done else ("-" if s.scored is False else "?")
        return [s.label, s.kind, s.step, phase or "-", fmt(s.reward), kl,
                "yes" if s.truncated else "no", s.tool_calls, s.tool_errors, s.num_tokens,
                s.end_reason, s.task, s.prompt_id, s.sample_index]

    def _status(self, matching: int | None = None) -> None:
        info = self.session.index.info
        matching = len(self.shown) if matching is None else matching
        parts = [f"{matching} of {len(self.summaries)} trajectories"
                 + (f" (first {MAX_ROWS} shown)" if matching > MAX_ROWS else ""),
                 f"sort: {self.sort_key}{' (reversed)' if self.reverse else ''}",
                 f"objective: {info.objective or '?'}"]
        if info.reopold is not None:
            parts.append(f"switch step {info.reopold.switch_step}, floor c={info.floor:.3f}")
        if self.indexing:
            parts.append("indexing...")
        if self.session.index.errors:
            parts.append(f"{len(self.session.index.errors)} bad lines (e)")
        self.query_one("#status", Static).update(Text(" | ".join(parts)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.filter = parse_filter(event.value)
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        self.apply()
        self.query_one(DataTable).focus()

    def on_key(self, event) -> None:
        if event.key == "escape" and self.query_one(Input).has_focus:
            self.query_one(DataTable).focus()
            event.stop()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self.shown):
            self.open_summary(self.shown[event.cursor_row])

    def open_summary(self, summary: Summary) -> None:
        from .tui_trajectory import TrajectoryScreen

        opened = self.session.open(summary)
        if isinstance(opened, LineError):
            self.notify(f"cannot open {opened}", severity="error")
            self._status()
            return
        self.app.push_screen(TrajectoryScreen(self.session, opened))

    def action_edit_filter(self) -> None:
        self.query_one(Input).focus()

    def action_next_sort(self) -> None:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self._sort_changed()

    def action_sort_kl(self) -> None:
        self.sort_key, self.reverse = "kl", True
        self._sort_changed()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.apply()

    def _sort_changed(self) -> None:
        if self.sort_key != "kl":
            self.apply()
            return
        todo = [s for s in self.summaries if self.filter(s) and not s.kl_done]
        self.notify(f"computing KL of {len(todo)} trajectories...")
        self.run_worker(lambda: self._compute_kl(todo), thread=True, group="kl")

    def _compute_kl(self, todo: list[Summary]) -> None:
        self.session.index.ensure_kl(todo)
        self.app.call_from_thread(self.apply)

    def action_rescan(self) -> None:
        self.start_indexing()

    def action_show_errors(self) -> None:
        self.app.push_screen(ErrorsScreen([str(e) for e in self.session.index.errors]))


class ReplayApp(App):
    """The replay application; ``session`` holds the run."""

    TITLE = "reopold-agent replay"
    SCREENS = {"help": HelpScreen}
    CSS = """
    #trajectories { height: 1fr; }  /* scrolls inside: the status line stays on screen */
    #status { height: 1; background: $panel; }
    #help, #errors { width: 90%; height: 90%; border: thick $accent; background: $surface; }
    HelpScreen, ErrorsScreen { align: center middle; }
    #left { width: 2fr; } #right { width: 1fr; min-width: 36; border-left: solid $accent; }
    #conv-scroll { height: 1fr; border-bottom: solid $accent; } #tok-scroll { height: 1fr; }
    #right Static { margin-bottom: 1; }
    """

    def __init__(self, session: ReplaySession, *, filter_text: str = "") -> None:
        super().__init__()
        self.session = session
        self.filter_text = filter_text
        root = session.index.info.root
        self.sub_title = str(root or session.index.files[0].path)

    def on_mount(self) -> None:
        self.push_screen(ListScreen(self.session, self.filter_text))
