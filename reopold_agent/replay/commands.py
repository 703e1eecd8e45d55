"""The ``replay`` and ``plot`` commands: argument parsers and their bodies.

``reopold_agent.cli`` wires them: ``add_replay_commands(sub)`` in ``build_parser`` and a dispatch
to :func:`run_replay_command` / :func:`run_plot_command` in ``main``. Heavy imports (textual,
matplotlib, transformers) happen inside the command bodies, so ``reopold-agent --help`` stays fast.
Problems the user can fix raise ``reopold_agent.errors.UsageError`` (one line, exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import UsageError
from .fields import FIELDS


def add_replay_commands(subparsers) -> None:
    """Add ``replay`` and ``plot`` to the CLI's sub-command parsers."""
    replay = subparsers.add_parser(
        "replay", help="browse a run's trajectories in the terminal, or export them as HTML",
        description="Open a run directory (or one trajectory .jsonl file) in a terminal UI; "
                    "with --export html OUT.html write self-contained pages instead.")
    replay.add_argument("path", metavar="RUN_DIR_OR_FILE")
    replay.add_argument("--export", nargs=2, metavar=("FORMAT", "OUT"),
                        help="write pages instead of opening the UI: --export html OUT.html "
                             "(one trajectory: that page; several: OUT.html is an index)")
    replay.add_argument("--filter", default="", metavar="EXPR",
                        help="e.g. 'step=3 reward>0 !truncated errors kind=step' (see docs/replay.md)")
    replay.add_argument("--step", type=int, action="append", metavar="N",
                        help="only trajectories of step N (repeatable)")
    replay.add_argument("--index", type=int, action="append", metavar="I",
                        help="with --export: the I-th selected trajectory, 0-based (repeatable)")
    replay.add_argument("--color", "--colour", dest="color", choices=FIELDS, default="reward",
                        help="per-token colouring of exported pages (default reward)")
    replay.add_argument("--limit", type=int, default=100,
                        help="with --export: at most this many pages (default 100)")
    replay.add_argument("--no-tokenizer", action="store_true",
                        help="show token ids instead of loading the run's tokenizer")
    replay.add_argument("--sandbox", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the sandbox that re-runs tool calls, e.g. "
                             "memory_mb=2048 (repeatable). The run's config.yaml can only "
                             "tighten the defaults; settings that weaken isolation come only "
                             "from here, with a warning")

    plot = subparsers.add_parser("plot", help="PNG figures of a run's training diagnostics")
    plot.add_argument("run_dir", metavar="RUN_DIR")
    plot.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/plots)")
    plot.add_argument("--max-files", type=int, default=64,
                      help="step files read at most for the token figures (default 64)")


def run_replay_command(args: argparse.Namespace) -> int:
    """Body of ``reopold-agent replay``."""
    session = _open_session(args)
    if args.export:
        return _export(session, args)
    if args.index:
        raise UsageError("--index applies to --export; in the UI, move to a row and press enter")
    filter_text = _ui_filter(args)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("replay needs an interactive terminal; use --export html OUT.html")
    from .tui import ReplayApp

    ReplayApp(session, filter_text=filter_text).run()
    return 0


def run_plot_command(args: argparse.Namespace) -> int:
    """Body of ``reopold-agent plot``."""
    from ..plots import plot_run

    if args.max_files < 1:
        raise UsageError("--max-files must be at least 1")
    try:
        result = plot_run(args.run_dir, args.out, max_files=args.max_files)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    for err in result.errors:
        print(f"skipped {err}", file=sys.stderr)
    for note in result.notes:
        print(note, file=sys.stderr)
    if not result.paths:
        raise UsageError(f"nothing to plot in {args.run_dir}: no metrics and no scored trajectories")
    for path in result.paths:
        print(path)
    return 0


def _open_session(args: argparse.Namespace):
    from ..sandbox import make_sandbox
    from .decoding import TokenDecoder
    from .loading import open_run
    from .session import ReplaySession
    from .tool_rerun import replay_sandbox_config

    overrides = _sandbox_overrides(args.sandbox)
    try:
        index = open_run(args.path)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    try:
        chosen = replay_sandbox_config(index.info.config, overrides)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--sandbox: {exc}") from None
    for note in chosen.ignored:
        print(f"replay: ignoring the run's sandbox setting {note} (a run directory cannot "
              "weaken the sandbox; pass --sandbox KEY=VALUE to choose it yourself)",
              file=sys.stderr)
    for item in chosen.weakened:
        print(f"WARNING: --sandbox weakens the sandbox that re-runs recorded programs: {item}",
              file=sys.stderr)

    def sandbox_factory():
        return make_sandbox(chosen.config)

    decoder = TokenDecoder(index.info, enabled=not args.no_tokenizer)
    return ReplaySession(index, decoder, sandbox_factory)


def _sandbox_overrides(items: list[str]) -> dict:
    """``--sandbox KEY=VALUE`` flags as a mapping (values read as YAML)."""
    from ..config_loading import ConfigError, parse_override
    from ..sandbox import SandboxConfig

    known = {f.name for f in dataclasses.fields(SandboxConfig)}
    out = {}
    for item in items:
        try:
            keys, value = parse_override(item)
        except ConfigError as exc:
            raise UsageError(f"--sandbox: {exc}") from None
        if len(keys) != 1 or keys[0] not in known:
            raise UsageError(f"--sandbox {item!r}: unknown sandbox setting {'.'.join(keys)!r} "
                             f"(known: {', '.join(sorted(known))})")
        out[keys[0]] = value
    return out


def _selection(session, args: argparse.Namespace):
    from .filters import parse_filter

    try:
        flt = parse_filter(args.filter)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    chosen = session.select(flt)
    if args.step:
        chosen = [s for s in chosen if s.step in set(args.step)]
    if args.index:
        bad = [i for i in args.index if not 0 <= i < len(chosen)]
        if bad:
            raise UsageError(f"--index {bad[0]} is out of range: {len(chosen)} trajectories match")
        chosen = [chosen[i] for i in args.index]
    return chosen


def _export(session, args: argparse.Namespace) -> int:
    from .html_export import export_html

    fmt, out = args.export
    if fmt.lower() != "html":
        raise UsageError(f"unknown export format {fmt!r}; the only one is html")
    chosen = _selection(session, args)
    for err in session.index.errors:
        print(f"skipped {err}", file=sys.stderr)
    if not chosen:
        raise UsageError(f"no trajectories match in {args.path}")
    if len(chosen) > args.limit:
        print(f"{len(chosen)} trajectories match; exporting the first {args.limit} "
              "(narrow with --filter/--step/--index or raise --limit)", file=sys.stderr)
        chosen = chosen[: args.limit]
    known = {(e.path, e.line) for e in session.index.errors}
    pages, errors = export_html(session, chosen, Path(out), field=args.color)
    for err in errors:
        if (err.path, err.line) not in known:
            print(f"skipped {err}", file=sys.stderr)
    if len(pages) == 0:
        raise UsageError("no trajectory could be read; nothing was written")
    print(f"wrote {pages[0]}" + (f" and {len(pages) - 1} trajectory pages" if len(pages) > 1 else ""))
    return 0


def _ui_filter(args: argparse.Namespace) -> str:
    """The UI's starting filter from --filter and one --step (checked here, before the UI)."""
    from .filters import parse_filter

    if args.step and len(set(args.step)) > 1:
        raise UsageError("the UI takes one --step; use --filter 'step=A..B' for a range")
    step = f"step={args.step[0]}" if args.step else ""
    text = " ".join(p for p in (args.filter, step) if p)
    try:
        parse_filter(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return text
