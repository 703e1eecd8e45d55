"""Replay and diagnostics of recorded runs: ``reopold-agent replay`` and ``reopold-agent plot``.

* :mod:`.loading`: lazy index of a run's trajectory files (line offsets, scalar summaries);
* :mod:`.filters`: filter expressions and sort orders of the trajectory list;
* :mod:`.fields`: names of the per-token colourings (import-free, for the CLI parser);
* :mod:`.token_view`: per-token R, max(R, c), log-probs, entropy, REOPOLD selection, colours, KL;
* :mod:`.turns`, :mod:`.decoding`: turns with tool calls and images; token text;
* :mod:`.session`: opening a trajectory (shared by the UI and the exports);
* :mod:`.tui`, :mod:`.tui_trajectory`: the textual terminal UI;
* :mod:`.html_export`, :mod:`.tool_rerun`, :mod:`.commands`.

Importing this package imports none of textual, matplotlib or transformers.
"""
