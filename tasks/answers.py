"""Reading final answers out of model text: ``\\boxed{...}``, numbers, short strings, code blocks.

All helpers take arbitrary model text and never raise on it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_BOXED = "\\boxed"
_LATEX_NOISE = re.compile(r"\\[,!;: ]|\\text\{\s*\}|\$|\\\$")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|mathrm|textbf)\{(.*)\}$")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` in ``text`` (nested braces allowed).

    Args:
        text: model output.

    Returns:
        The stripped contents, or None when there is no complete ``\\boxed{...}``.
    """
    start = text.rfind(_BOXED)
    while start != -1:
        i = start + len(_BOXED)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1 : j].strip()
        start = text.rfind(_BOXED, 0, start)
    return None


def parse_number(text: str) -> Fraction | None:
    """Read a number such as ``9,065``, ``9 065``, ``9065.0``, ``-3/4``, ``\\frac{3}{4}``.

    Args:
        text: a short answer string (e.g. the contents of ``\\boxed{}``).

    Returns:
        The exact value as a Fraction, or None when ``text`` is not a number.
    """
    s = _LATEX_NOISE.sub("", text).strip()
    wrapped = _TEXT_WRAPPER.match(s)
    if wrapped:
        s = wrapped.group(1).strip()
    s = s.replace(",", "").replace(" ", "").replace("\u2212", "-")
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if frac:
        s = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    if not s or len(s) > 100:
        return None
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return _decimal_fraction(num) / _decimal_fraction(den)
        return _decimal_fraction(s)
    except (InvalidOperation, ValueError, ArithmeticError):
        return None


def _decimal_fraction(s: str) -> Fraction:
    """Exact value of a decimal literal; rejects NaN, infinities and absurd exponents."""
    d = Decimal(s)
    if not d.is_finite() or abs(d.adjusted()) > 60:
        raise ValueError(f"not a usable number: {s!r}")
    return Fraction(d)


def numbers_equal(predicted: str, gold: str, *, rel_tol: float = 1e-6) -> bool:
    """Whether two answer strings denote the same number (exact, or within ``rel_tol``).

    Args:
        predicted: the model's answer text.
        gold: the reference answer text.
        rel_tol: relative tolerance for non-identical values (absolute for |gold| < 1).
    """
    a, b = parse_number(predicted), parse_number(gold)
    if a is None or b is None:
        return False
    return a == b or abs(a - b) <= Fraction(rel_tol) * max(1, abs(b))


def normalize_text(text: str) -> str:
    """Lower-case, drop LaTeX text wrappers and surrounding punctuation, squeeze spaces."""
    s = _LATEX_NOISE.sub("", text).strip()
    wrapped = _TEXT_WRAPPER.match(s)
    if wrapped:
        s = wrapped.group(1)
    return " ".join(s.lower().strip(" .,;:!?\"'`").split())


def answers_match(predicted: str, gold: str) -> bool:
    """Numeric comparison when both sides are numbers, else normalised text equality."""
    if parse_number(gold) is not None and parse_number(predicted) is not None:
        return numbers_equal(predicted, gold)
    return normalize_text(predicted) == normalize_text(gold)


def extract_code_block(text: str, language: str = "python") -> str | None:
    """The last fenced code block of ``language`` (or an untagged one) in ``text``.

    Args:
        text: model output.
        language: preferred fence tag; untagged fences are accepted as a fallback.

    Returns:
        The block's code, or None when there is no closed fence.
    """
    blocks = _FENCE.findall(text)
    tagged = [code for tag, code in blocks if tag.lower() in (language, "py" if
                                                               language == "python" else language)]
    untagged = [code for tag, code in blocks if not tag]
    chosen = tagged or untagged
    return chosen[-1] if chosen else None
