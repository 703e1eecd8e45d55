"""HTML pages: self-contained, same colouring, tooltips with every number of a token."""

import html
import re

from reopold_agent.replay.decoding import TokenDecoder
from reopold_agent.replay.filters import parse_filter
from reopold_agent.replay.html_export import export_html
from reopold_agent.replay.loading import open_run
from reopold_agent.replay.session import ReplaySession


def _tooltip(page: str, t: int) -> str:
    m = re.search(rf"<span class='tk[^']*' data-i='{t}' title='([^']*)'", page)
    return html.unescape(m.group(1))


def test_one_trajectory_page_has_tooltips_and_colours(synthetic_run, tmp_path):
    index = open_run(synthetic_run)
    session = ReplaySession(index, TokenDecoder(index.info, enabled=False))
    chosen = session.select(parse_filter("step=1 kind=step task=tool_math"))
    pages, errors = export_html(session, chosen, tmp_path / "one.html", field="clipped")
    assert pages == [tmp_path / "one.html"] and errors == []
    page = pages[0].read_text()
    tip = _tooltip(page, 10)  # turn 2, second model token: R = +2, entropy 0.2
    assert "reward R: +2.0000" in tip and "entropy: +0.2000" in tip and "id: 20" in tip
    assert "REOPOLD selection: no" in tip
    assert "REOPOLD selection: yes" in _tooltip(page, 9)  # entropy 3.0 >= tau_beta 3.0
    assert "clipped reward max(R,c): -1.7200" in _tooltip(page, 5)
    assert "<option value='clipped' selected>" in page
    assert "tau_beta=3.0000" in page and "Turn 1" in page and "9065" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing loaded from the network
    span = re.search(r"<span class='tk' data-i='11'[^>]*>", page).group(0)
    assert "background:#" in span  # coloured by the chosen field


def test_several_trajectories_give_an_index(synthetic_run, tmp_path):
    index = open_run(synthetic_run)
    session = ReplaySession(index, TokenDecoder(index.info, enabled=False))
    pages, _ = export_html(session, session.select(), tmp_path / "all.html")
    assert len(pages) == 7 and pages[0].name == "all.html"
    listing = pages[0].read_text()
    assert all(p.relative_to(tmp_path).as_posix() in listing for p in pages[1:])
    image_page = next(p for p in pages if "step_000001_line3" in p.name).read_text()
    assert "data:image/png;base64," in image_page and "[image 8x6:" in image_page


def test_real_run_export_decodes_tokens(real_run, tmp_path):
    index = open_run(real_run)
    session = ReplaySession(index)
    (first,) = session.select(parse_filter("step=0 kind=step"))[:1]
    pages, _ = export_html(session, [first], tmp_path / "real.html")
    page = pages[0].read_text()
    traj = index.load(first)
    t = next(i for i, m in enumerate(traj.loss_mask) if m == 1)
    expected = f"reward R: {traj.teacher_logprobs[t] - traj.logprobs[t]:+.4f}"
    assert expected in _tooltip(page, t)
    assert "tokenizer: " in page and "phase: exploration (step 0, switch step 1)" in page
