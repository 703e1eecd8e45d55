"""Vision-language episodes in replay: image spans as one marker, PNGs in the HTML, missing files.

The run is written the way training writes it: a trajectory whose image placeholder tokens
(source ``image``) come from a real :class:`VisionProcessor`, saved with
:class:`RunLogger` (PNGs under ``images/``, then the JSON line).
"""

import asyncio
import base64
import io
import re

import pytest
from PIL import Image
from textual.widgets import Static

from reopold_agent.replay.decoding import TokenDecoder
from reopold_agent.replay.html_export import export_html
from reopold_agent.replay.loading import open_run
from reopold_agent.replay.session import ReplaySession
from reopold_agent.replay.token_view import display_units
from reopold_agent.replay.tui import ReplayApp
from reopold_agent.replay.tui_trajectory import tokens_text
from reopold_agent.run_logging import RunLogger
from reopold_agent.trajectory import ImageRecord, Trajectory
from reopold_agent.vision.processing import VisionInputs, VisionProcessor
from reopold_agent.vision.storage import image_path, load_pixel_inputs

from .fixtures import CONFIG

IMG, START, END = 151655, 151652, 151653
"""Qwen's <|image_pad|>, <|vision_start|>, <|vision_end|> ids."""
RED, BLUE = (200, 30, 30), (20, 40, 220)


def _vision() -> VisionProcessor:
    from transformers import Qwen2VLImageProcessor

    ip = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14,
                               temporal_patch_size=2, merge_size=2)
    return VisionProcessor(ip, image_token_id=IMG, patch_size=14, spatial_merge_size=2,
                           min_pixels=56 * 56, max_pixels=112 * 112)


def _vl_trajectory(vision: VisionProcessor) -> Trajectory:
    """Prompt image 56x56 (grid 1x4x4: 4 tokens), zoom call, tool image 112x56 (1x4x8: 8 tokens).

    Tokens: 0-1 prompt, 2 start, 3-6 image 1, 7 end, 8 prompt (turn 0); 9-11 model, 12 tool,
    13 start, 14-21 image 2, 22 end, 23 tool (turn 1); 24-25 model (turn 2). T = 26.
    """
    f1 = vision.encode(Image.new("RGB", (56, 56), RED))
    f2 = vision.encode(Image.new("RGB", (112, 56), BLUE))
    assert (f1.grid_thw, f1.num_tokens, f2.grid_thw, f2.num_tokens) == ((1, 4, 4), 4, (1, 4, 8), 8)
    pieces = [([10, 11, START], "prompt", 0), ([IMG] * 4, "image", 0), ([END, 12], "prompt", 0),
              ([20, 21, 22], "model", 1), ([30, START], "tool", 1), ([IMG] * 8, "image", 1),
              ([END, 31], "tool", 1), ([40, 41], "model", 2)]
    ids = [i for p, _, _ in pieces for i in p]
    source = [s for p, s, _ in pieces for _ in p]
    turn = [k for p, _, k in pieces for _ in p]
    mask = [int(s == "model") for s in source]
    logp = [-0.5 if m else None for m in mask]
    teacher = [None] + [-1.0 if m else -2.0 for m in mask[1:]]
    messages = [
        {"role": "user", "content": [{"type": "image", "size": [56, 56]},
                                     {"type": "text", "text": "What colour is the dot?"}]},
        {"role": "assistant", "content": '<tool_call>\n{"name": "zoom", "arguments": '
                                         '{"bbox": [0, 0, 28, 28]}}\n</tool_call>'},
        {"role": "tool", "name": "zoom", "content": [{"type": "image", "size": [112, 56]},
                                                     {"type": "text", "text": "zoomed 4x"}]},
        {"role": "assistant", "content": "\\boxed{red}"},
    ]
    return Trajectory(
        token_ids=ids, source=source, turn=turn, loss_mask=mask, logprobs=logp, messages=messages,
        reward=1.0, tool_calls=1, task="visual_qa", prompt_id="visual_qa/train/0", step=0,
        teacher_logprobs=teacher, entropy=[0.5 if m else None for m in mask],
        images=[ImageRecord(image_path(f1), 3, 7, list(f1.grid_thw)),
                ImageRecord(image_path(f2), 14, 22, list(f2.grid_thw))],
        pixel_inputs=VisionInputs.from_features([f1, f2]))


@pytest.fixture(scope="module")
def vision():
    return _vision()


@pytest.fixture
def vl_run(tmp_path, vision):
    traj = _vl_trajectory(vision)
    logger = RunLogger(tmp_path / "run", tensorboard=False)
    logger.save_config(CONFIG)
    logger.log_trajectories("step_000000", [traj])
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == \
        sorted(r.path.split("/")[1] for r in traj.images)
    return tmp_path / "run", traj


def _open(run):
    index = open_run(run)
    session = ReplaySession(index, TokenDecoder(index.info, enabled=False))
    return session, session.open(session.select()[0])


def _marker(traj, k, note=""):
    rec = traj.images[k]
    n, grid = rec.token_end - rec.token_start, "x".join(map(str, rec.grid_thw))
    return f"[image {k + 1}: {n} tokens, grid {grid}, {rec.path}{note}]"


def test_token_view_draws_each_image_span_as_one_marker(vl_run, vision):
    run, traj = vl_run
    session, opened = _open(run)
    assert [(u[0], u[1], u[2] is not None) for u in display_units(opened.images, 0, 9)] == \
        [(0, 1, False), (1, 2, False), (2, 3, False), (3, 7, True), (7, 8, False), (8, 9, False)]
    texts = session.decoder.texts(opened.traj.token_ids)
    plain = tokens_text(opened, texts, "reward", 0, opened.traj.num_tokens, cursor=9).plain
    assert plain == ("<10><11><151652>" + _marker(traj, 0) + "<151653><12>" + "<20><21><22><30><151652>"
                     + _marker(traj, 1) + "<151653><31><40><41>")
    assert _marker(traj, 0) == f"[image 1: 4 tokens, grid 1x4x4, {traj.images[0].path}]"
    reloaded = opened.traj  # the same files give the training inputs back
    assert load_pixel_inputs(reloaded, run, vision).image_grid_thw.tolist() == [[1, 4, 4], [1, 4, 8]]


def test_tui_steps_over_an_image_and_shows_its_details(vl_run):
    run, traj = vl_run

    def text(screen, wid):
        return screen.query_one(f"#{wid}", Static).content.plain

    def info(screen):
        rows = [ln.split(": ", 1) for ln in text(screen, "token-info").splitlines() if ": " in ln]
        return {k.strip(): v for k, v in rows}

    async def scenario():
        app = ReplayApp(_open(run)[0])
        async with app.run_test(size=(160, 48)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            await pilot.press("enter")
            await pilot.pause()
            view = app.screen  # turn 1, cursor on its first model token (9)
            assert info(view)["token"] == "9 / 26"
            assert _marker(traj, 1) in text(view, "tokens") and "<151655>" not in text(view, "tokens")
            await pilot.press("right", "right", "right", "right", "right")  # 10 11 12 13 -> image 2
            await pilot.pause()
            details = info(view)
            assert details["image"] == "2" and details["tokens"].startswith("14..21 (8,")
            assert details["file"] == str(run / traj.images[1].path)
            await pilot.press("right")  # past the whole span
            await pilot.pause()
            assert info(view)["token"] == "22 / 26"
            await pilot.press("left", "left")
            await pilot.pause()
            assert info(view)["token"] == "13 / 26"
            await pilot.press("p")  # the prompt turn: image 1 and its thumbnail
            await pilot.pause()
            assert _marker(traj, 0) in text(view, "tokens")
            assert "[image 56x56: " in text(view, "conversation")
    asyncio.run(scenario())


def test_html_embeds_each_png_at_its_image_span(vl_run, tmp_path):
    run, traj = vl_run
    session, _ = _open(run)
    (page,), errors = export_html(session, session.select(), tmp_path / "elsewhere" / "vl.html")
    assert errors == []
    html = page.read_text()
    assert "<151655>" not in html  # no placeholder token is drawn
    for k, colour in ((0, RED), (1, BLUE)):
        rec = traj.images[k]
        m = re.search(rf"<span class='img' data-start='{rec.token_start}' data-end='{rec.token_end}' "
                      rf"title='[^']*'>([^<]*)<img alt='{re.escape(rec.path)}' "
                      r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'></span>", html)
        assert m is not None and m.group(1) == _marker(traj, k)
        with Image.open(io.BytesIO(base64.b64decode(m.group(2)))) as shown:
            assert shown.size == tuple(Image.open(run / rec.path).size)
            assert shown.convert("RGB").getpixel((5, 5)) == colour
    # the span sits between the tokens around it, in order
    assert html.index("data-i='2'") < html.index(f"data-start='3'") < html.index("data-i='7'")
    assert "http" not in html.replace("http-equiv", "")


def test_missing_image_file_is_a_note_not_a_crash(vl_run, tmp_path):
    run, traj = vl_run
    (run / traj.images[0].path).unlink()
    session, opened = _open(run)
    note = " (file missing from the run directory)"
    assert [s.exists for s in opened.images] == [False, True]
    plain = tokens_text(opened, session.decoder.texts(opened.traj.token_ids), "reward", 0, 9, cursor=0).plain
    assert _marker(traj, 0, note) in plain
    (page,), _ = export_html(session, session.select(), tmp_path / "vl.html")
    html = page.read_text()
    missing = re.search(r"<span class='img missing' data-start='3'[^>]*>([^<]*)<br>([^<]*)</span>", html)
    assert missing.group(1) == _marker(traj, 0, note)
    assert missing.group(2) == f"(file missing from the run directory): {run / traj.images[0].path}"
    assert html.count("src='data:image/png;base64,") == 1  # the other image is still there
    assert "(file missing)" in html  # the conversation's image note


def test_single_trajectory_file_finds_the_run_images(tmp_path, vision):
    traj = _vl_trajectory(vision)
    RunLogger(tmp_path / "run", tensorboard=False).log_trajectories("step_000003", [traj])  # no config.yaml
    session, opened = _open(tmp_path / "run" / "trajectories" / "step_000003.jsonl")
    assert session.index.info.root == tmp_path / "run"
    assert all(s.exists for s in opened.images) and opened.images[1].file == tmp_path / "run" / traj.images[1].path
