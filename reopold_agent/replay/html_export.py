"""Self-contained HTML pages of trajectories: the replay's colouring and numbers without a terminal.

Each page holds one trajectory: a header (run, step, task, reward, phase, KL), the turns with
their messages, tool calls, tool outputs and images, and the tokens of each turn coloured by a
per-token field. Every token has a tooltip (``title``) with all its numbers; a drop-down
recolours the page (inline script, no network). Several trajectories give an index page linking
one page per trajectory.

Images: the placeholder tokens of an image (vision-language episodes) are replaced, at their
place in the token stream, by one marker (``[image 1: 4 tokens, grid 1x4x4, images/<hash>.png]``)
followed by the stored PNG. Images are always embedded as base64 data URIs (downscaled to at
most 384 pixels a side), never linked: a page stays complete wherever it is written or copied,
with or without the run directory beside it. A missing or unreadable file leaves the marker
with a note saying so.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from ..trajectory_io import LineError
from .loading import Summary
from .session import OpenedTrajectory, ReplaySession
from .token_view import (FIELD_LABELS, FIELDS, ImageSpan, colour_scale, display_units, fmt, image_details,
                         text_colour, token_details, trajectory_kl)
from .turns import ImageView, TurnView, message_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:80em}
header table td{padding:0 1em 0 0} h2{font-size:1.1em;margin:1.2em 0 .3em}
.msg{border-left:3px solid #ccc;padding:.2em .6em;margin:.4em 0}
.msg .role{font-weight:bold;font-size:.85em;color:#555}
pre{white-space:pre-wrap;margin:.2em 0;font-size:.85em}
.tokens{font-family:monospace;font-size:.85em;white-space:pre-wrap;line-height:1.6;
 border:1px solid #ddd;padding:.4em}
.tk{border-radius:2px;cursor:default} .nm{color:#999}
.legend span.sw{display:inline-block;width:1.2em;height:1em;vertical-align:middle;margin:0 .3em}
.legend{display:none;font-size:.85em;margin:.4em 0} .legend.on{display:block}
.call{background:#f6f6f6;padding:.3em .6em;margin:.3em 0} img{max-width:24em;display:block}
.img{display:inline-block;border:1px dashed #a0a;color:#808;padding:.2em;margin:.2em 0;vertical-align:top}
.img img{min-width:8em;image-rendering:pixelated} .img.missing{border-color:#c00;color:#c00}
"""
_SCRIPT = """
const C=JSON.parse(document.getElementById('colours').textContent);
function paint(f){document.querySelectorAll('.tk').forEach(function(s){
 const i=+s.dataset.i, c=C.bg[f][i];
 s.style.background=c||''; s.style.color=c?C.fg[f][i]:'';});
 document.querySelectorAll('.legend').forEach(function(l){
 l.classList.toggle('on', l.dataset.field===f);});}
document.getElementById('field').addEventListener('change',function(e){paint(e.target.value);});
"""


def export_html(session: ReplaySession, summaries: list[Summary], out: Path, *,
                field: str = "reward") -> tuple[list[Path], list[LineError]]:
    """Write one page per trajectory (an index page at ``out`` when there are several).

    Returns:
        (pages written, lines that could not be read).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    opened, errors = [], []
    for s in summaries:
        item = session.open(s)
        (errors if isinstance(item, LineError) else opened).append(item)
    if len(opened) == 1:
        out.write_text(render_page(session, opened[0], field=field), encoding="utf-8")
        return [out], errors
    folder = out.with_name(out.stem + "_files")
    folder.mkdir(exist_ok=True)
    pages = []
    for i, o in enumerate(opened):
        page = folder / f"{i:04d}_{o.summary.path.stem}_line{o.summary.line}.html"
        page.write_text(render_page(session, o, field=field), encoding="utf-8")
        pages.append(page)
    out.write_text(_index_page(session, opened, pages, out), encoding="utf-8")
    return [out, *pages], errors


def render_page(session: ReplaySession, o: OpenedTrajectory, *, field: str = "reward") -> str:
    """One self-contained HTML page for ``o`` coloured by ``field`` (see ``FIELDS``)."""
    if field not in FIELDS:
        raise ValueError(f"unknown colouring {field!r}; choose one of {', '.join(FIELDS)}")
    texts = session.decoder.texts(o.traj.token_ids)
    bg, fg = _colour_arrays(o)
    title = f"{o.summary.label} - step {o.traj.step} - {o.traj.task}"
    body = [_header(session, o), _controls(field), *(_legend(o, f, f == field) for f in FIELDS)]
    body += [_turn_html(o, turn, texts, bg[field], fg[field]) for turn in o.turns]
    data = json.dumps({"bg": bg, "fg": fg}).replace("</", "<\\/")
    return ("<!doctype html>\n<html><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body)
            + f"<script type='application/json' id='colours'>{data}</script>"
            + f"<script>{_SCRIPT}</script></body></html>\n")


def _colour_arrays(o: OpenedTrajectory) -> tuple[dict, dict]:
    bg, fg = {}, {}
    for f in FIELDS:
        scale = colour_scale(f, o.table)
        values = o.table.values(f)
        cols = [scale.colour(v) if o.traj.loss_mask[t] == 1 or f == "loss_mask" else None
                for t, v in enumerate(values)]
        bg[f] = [c or "" for c in cols]
        fg[f] = [text_colour(c) if c else "" for c in cols]
    return bg, fg


def _header(session: ReplaySession, o: OpenedTrajectory) -> str:
    t, run = o.traj, session.index.info.root
    rows = [("run", str(run) if run else "-"), ("line", o.summary.label),
            ("step / task", f"{t.step} / {t.task}"),
            ("prompt / sample", f"{t.prompt_id} / {t.sample_index}"),
            ("outcome reward", fmt(t.reward)),
            ("end", f"{t.end_reason} (truncated: {fmt(t.truncated)})"),
            ("tool calls / errors", f"{t.tool_calls} / {t.tool_errors}"),
            ("teacher-student KL", fmt(_mean_kl(o))), ("REOPOLD", o.phase_text()),
            ("tokens", f"{t.num_tokens} ({t.num_model_tokens} model)"),
            ("decoding", session.decoder.note or "-")]
    cells = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<header><h1>Trajectory {_e(o.summary.label)}</h1><table>{cells}</table></header>"


def _controls(field: str) -> str:
    opts = "".join(f"<option value='{f}'{' selected' if f == field else ''}>"
                   f"{_e(FIELD_LABELS[f])}</option>" for f in FIELDS)
    return f"<p>colour tokens by <select id='field'>{opts}</select> (hover a token for its numbers)</p>"


def _legend(o: OpenedTrajectory, field: str, on: bool) -> str:
    items = "".join(f"<span class='sw' style='background:{c}'></span>{_e(label)}"
                    for label, c in colour_scale(field, o.table).legend())
    return (f"<div class='legend{' on' if on else ''}' data-field='{field}'>"
            f"{_e(FIELD_LABELS[field])}: {items} &nbsp; uncoloured: no value / not a model token</div>")


def _turn_html(o: OpenedTrajectory, turn: TurnView, texts: list[str], bg: list[str],
               fg: list[str]) -> str:
    kl = o.kl_by_turn.get(turn.index)
    head = (f"<h2>Turn {turn.index}" + (" (prompt)" if turn.index == 0 else "")
            + f" &mdash; {turn.num_model_tokens} model tokens, KL {_e(fmt(kl))}</h2>")
    msgs = "".join(f"<div class='msg'><div class='role'>{_e(m.get('role', '?'))}"
                   f"{(' ' + _e(str(m['name']))) if m.get('name') else ''}</div>"
                   f"<pre>{_e(message_text(m))}</pre></div>" for m in turn.messages)
    calls = "".join(_call_html(c) for c in turn.tool_calls)
    images = "".join(_image_html(im) for im in turn.images)
    spans = [_image_span_html(image) if image is not None else _token_span(o, t, texts[t], bg[t], fg[t])
             for t, _, image in display_units(o.images, turn.token_start, turn.token_end)]
    return f"<section>{head}{msgs}{calls}{images}<div class='tokens'>{''.join(spans)}</div></section>"


def _token_span(o: OpenedTrajectory, t: int, text: str, bg: str, fg: str) -> str:
    tip = "\n".join(f"{k}: {v}" for k, v in token_details(o.table, t, text))
    style = f" style='background:{bg};color:{fg}'" if bg else ""
    cls = "tk" if o.traj.loss_mask[t] == 1 else "tk nm"
    shown = text.replace("\n", "\u23ce\n")
    return f"<span class='{cls}' data-i='{t}' title='{_e(tip)}'{style}>{_e(shown)}</span>"


def _call_html(call) -> str:
    what = (f"malformed call ({_e(call.error)})" if call.arguments is None
            else f"{_e(call.name)}({_e(json.dumps(call.arguments, ensure_ascii=False))})")
    out = "(no recorded output)" if call.output is None else call.output
    return f"<div class='call'><b>tool call {call.index}:</b> <pre>{what}</pre>" \
           f"<b>recorded output:</b><pre>{_e(out)}</pre></div>"


def _image_html(im: ImageView) -> str:
    """An image of the conversation: its note, and the picture unless the tokens show it."""
    if im.token_span is not None:  # embedded once, at its tokens
        return f"<pre>{_e(im.describe())} (shown at tokens {im.token_span[0]}..{im.token_span[1] - 1})</pre>"
    note = f"<pre>{_e(im.describe())}</pre>"
    uri = _png_data_uri(im.path)
    return note if uri is None else f"{note}<img alt='{_e(str(im.path))}' src='{uri}'>"


def _image_span_html(image: ImageSpan) -> str:
    """One image span of the token stream: its marker and the embedded PNG (or why not)."""
    tip = "\n".join(f"{k}: {v}" for k, v in image_details(image))
    uri = _png_data_uri(image.file) if image.exists else None
    head = (f"<span class='img{'' if uri else ' missing'}' data-start='{image.start}' data-end='{image.end}' "
            f"title='{_e(tip)}'>{_e(image.marker())}")
    if uri is None:
        note = image.missing_note().strip() or "(file unreadable)"
        return f"{head}<br>{_e(note)}: {_e(str(image.file or image.path))}</span>"
    return f"{head}<img alt='{_e(image.path)}' src='{uri}'></span>"


def _png_data_uri(path: Path | None) -> str | None:
    """The image at ``path`` as a PNG data URI (at most 384 px a side), or None if unreadable."""
    if path is None or not path.is_file():
        return None
    try:
        from PIL import Image

        with Image.open(path) as img:
            img.thumbnail((384, 384))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
    except Exception:  # unreadable image: the caller shows path and size only
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _index_page(session: ReplaySession, opened: list[OpenedTrajectory], pages: list[Path],
                out: Path) -> str:
    rows = []
    for o, page in zip(opened, pages):
        t = o.traj
        rel = page.relative_to(out.parent).as_posix()
        rows.append(f"<tr><td><a href='{_e(rel)}'>{_e(o.summary.label)}</a></td>"
                    f"<td>{_e(o.summary.kind)}</td><td>{t.step}</td>"
                    f"<td>{_e(t.task)}</td><td>{_e(fmt(t.reward))}</td><td>{_e(t.end_reason)}</td>"
                    f"<td>{t.tool_calls}/{t.tool_errors}</td><td>{_e(fmt(_mean_kl(o)))}</td></tr>")
    head = "<tr><th>line</th><th>kind</th><th>step</th><th>task</th><th>reward</th><th>end</th>" \
           "<th>tools/errors</th><th>KL</th></tr>"
    root = session.index.info.root
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>replay index</title>"
            f"<style>{_CSS}</style></head><body><h1>{len(opened)} trajectories of "
            f"{_e(str(root) if root else 'file')}</h1><table>{head}{''.join(rows)}</table>"
            "</body></html>\n")


def _mean_kl(o: OpenedTrajectory) -> float | None:
    return trajectory_kl(o.traj)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
