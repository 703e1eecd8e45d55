"""The terminal UI driven headless with textual's pilot."""

import asyncio

from textual.widgets import DataTable, Static

from reopold_agent.replay.decoding import TokenDecoder
from reopold_agent.replay.loading import open_run
from reopold_agent.replay.session import ReplaySession
from reopold_agent.replay.tui import ReplayApp
from reopold_agent.sandbox import SandboxConfig, make_sandbox
from reopold_agent.trajectory_io import trajectory_to_json

from .fixtures import tool_trajectory


def _session(run, tokenizer=False):
    index = open_run(run)
    decoder = TokenDecoder(index.info, enabled=tokenizer)
    return ReplaySession(index, decoder, lambda: make_sandbox(SandboxConfig(timeout_s=5)))


def _text(screen, widget_id):
    return screen.query_one(f"#{widget_id}", Static).content.plain


async def _loaded(app, pilot):
    await app.workers.wait_for_complete()
    await pilot.pause()


def _info(screen):
    """The token-info pane as {label: value}."""
    rows = [line.split(": ", 1) for line in _text(screen, "token-info").splitlines() if ": " in line]
    return {k.strip(): v for k, v in rows}


def test_list_filter_open_colour_and_read_numbers(synthetic_run):
    async def scenario():
        app = ReplayApp(_session(synthetic_run))
        async with app.run_test(size=(160, 48)) as pilot:
            await _loaded(app, pilot)
            lst = app.screen
            assert lst.query_one(DataTable).row_count == 6
            assert "2 bad lines (e)" in _text(lst, "status")
            await pilot.press("f", *"step=1", "space", *"kind=step", "enter")
            await pilot.pause()
            assert [s.label for s in lst.shown] == ["step_000001.jsonl:1", "step_000001.jsonl:3"]
            await pilot.press("enter")  # opens the first row
            await pilot.pause()
            view = app.screen
            assert "refinement (step 1, switch step 1), tau_beta=3.0000" in _text(view, "phase")
            assert _info(view)["reward R"] == "-0.5000"  # cursor on turn 1's first model token
            assert _info(view)["REOPOLD selection"] == "no"
            assert "turn 1: +0.8750" in _text(view, "turn-kl")
            assert "[assistant]" in _text(view, "conversation")
            await pilot.press("n", "right")  # turn 2, second model token
            await pilot.pause()
            assert _info(view)["reward R"] == "+2.0000" and _info(view)["token"] == "10 / 12"
            await pilot.press("right", "2")
            await pilot.pause()
            assert view.field == "clipped"
            assert _info(view)["clipped reward max(R,c)"] == "-1.7200"
            assert "clipped reward" in _text(view, "legend") and "floor c=-1.72" in _text(view, "legend")
            await pilot.press("left", "left", "c", "c", "c", "c")  # clipped -> ... -> selection
            await pilot.pause()
            assert view.field == "selection" and _info(view)["REOPOLD selection"] == "yes"
            tokens = view.query_one("#tokens", Static).content
            cursor_span = [s for s in tokens.spans if "reverse" in str(s.style)]
            assert "#1a9850" in str(cursor_span[0].style)  # selected colour under the cursor
            await pilot.press("question_mark")
            await pilot.pause()
            assert type(app.screen).__name__ == "HelpScreen"
            await pilot.press("escape", "escape")
            await pilot.pause()
            assert app.screen is lst
    asyncio.run(scenario())


def test_rerun_tool_call_and_absent_scores(synthetic_run):
    async def scenario():
        app = ReplayApp(_session(synthetic_run), filter_text="!scored kind=step")
        async with app.run_test(size=(160, 48)) as pilot:
            await _loaded(app, pilot)
            assert app.screen.query_one(DataTable).row_count == 2
            await pilot.press("enter")
            await pilot.pause()
            view = app.screen
            assert _info(view)["teacher log-prob"] == "absent"
            assert "no teacher scores yet" in _text(view, "phase")
            await pilot.press("t")
            await pilot.pause()
            assert "turn 1 call 0: output MATCHES the recording" in _text(view, "rerun")
    asyncio.run(scenario())


def test_sort_by_kl_and_bad_lines_screen(synthetic_run):
    async def scenario():
        app = ReplayApp(_session(synthetic_run))
        async with app.run_test(size=(160, 48)) as pilot:
            await _loaded(app, pilot)
            await pilot.press("k")
            await _loaded(app, pilot)
            lst = app.screen
            assert lst.shown[0].kl is not None and lst.shown[0].kl >= lst.shown[1].kl
            assert lst.query_one(DataTable).get_row_at(0)[5] == "+0.6571"
            await pilot.press("e")
            await pilot.pause()
            assert "step_000001.jsonl:2: not valid JSON" in _text(app.screen, "errors-text")
    asyncio.run(scenario())


def test_real_run_opens_with_its_tokenizer(real_run):
    async def scenario():
        app = ReplayApp(_session(real_run, tokenizer=True), filter_text="kind=step step=2")
        async with app.run_test(size=(160, 48)) as pilot:
            await _loaded(app, pilot)
            assert app.screen.query_one(DataTable).row_count == 6
            await pilot.press("enter")
            await pilot.pause()
            view = app.screen
            assert "phase: refinement (step 2, switch step 1)" in _text(view, "phase")
            assert "tokenizer: " in _text(view, "token-info")
            assert _info(view)["source"] == "model" and not _info(view)["text"].startswith("'<")
            float(_info(view)["reward R"])  # a number, not "absent"
    asyncio.run(scenario())


def test_status_line_stays_on_screen_with_more_rows_than_fit(tmp_path):
    run = tmp_path / "run"
    (run / "trajectories").mkdir(parents=True)
    rows = [trajectory_to_json(tool_trajectory(0, sample_index=g)) for g in range(100)]
    (run / "trajectories" / "step_000000.jsonl").write_text("\n".join(rows) + "\n")

    async def scenario():
        app = ReplayApp(_session(run))
        async with app.run_test(size=(120, 30)) as pilot:
            await _loaded(app, pilot)
            status = app.screen.query_one("#status", Static)
            assert status.content.plain.startswith("100 of 100 trajectories | sort: file")
            assert 0 <= status.region.y < 29 and status.region.height == 1  # above the footer
            await pilot.press("end")  # the table scrolls inside itself; the status stays
            await pilot.pause()
            assert status.region.y < 29
    asyncio.run(scenario())


def test_teacher_evaluation_rows_show_their_kind_and_no_phase(synthetic_run):
    teacher = synthetic_run / "trajectories" / "eval_teacher_000000.jsonl"
    teacher.write_text(trajectory_to_json(tool_trajectory(0, teacher_logprobs=None)) + "\n")

    async def scenario():
        app = ReplayApp(_session(synthetic_run), filter_text="kind=teacher")
        async with app.run_test(size=(160, 48)) as pilot:
            await _loaded(app, pilot)
            table = app.screen.query_one(DataTable)
            assert table.row_count == 1
            label, kind, step, phase = table.get_row_at(0)[:4]
            assert (label, kind, step, phase) == ("eval_teacher_000000.jsonl:1", "teacher", 0, "-")
            await pilot.press("enter")
            await pilot.pause()
            assert "phase: n/a (evaluation episode: not trained on)" in _text(app.screen, "phase")
    asyncio.run(scenario())
