"""The problem templates of the ``code`` task: text, reference solution and test inputs.

Each :class:`CodeTemplate` is a small function-writing problem with parameters (``$k`` in the
text and solution is filled from ``params``). Hidden test inputs are drawn per item; expected
outputs are computed from the reference solution, outside the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template
from typing import Any, Callable

import numpy as np

Rng = np.random.Generator
Args = tuple[Any, ...]

_WORDS = ("apple", "kiwi", "banana", "fig", "cherry", "plum", "noon", "level", "a", "tree",
          "sky", "Orange", "hello", "World", "data", "io")


@dataclass(frozen=True)
class CodeTemplate:
    """One parametrised programming problem."""

    key: str
    """Stable identifier (also the function name)."""
    signature: str
    """Parameter list, e.g. ``"xs"``."""
    text: str
    """What the function returns; ``$name`` placeholders are filled from the params."""
    solution: str
    """Reference implementation (a ``def`` with the function name), with placeholders."""
    params: Callable[[Rng], dict[str, Any]]
    """Draws the problem parameters."""
    inputs: Callable[[Rng], list[Args]]
    """Draws the hidden test inputs (each an argument tuple)."""

    def fill(self, template: str, params: dict[str, Any]) -> str:
        """Substitute ``$name`` placeholders."""
        return Template(template).substitute({k: str(v) for k, v in params.items()})


def _lists(rng: Rng, lo: int = -20, hi: int = 20, n: int = 7) -> list[Args]:
    cases: list[Args] = [([int(rng.integers(lo, hi + 1)) for _ in range(5)],), ([],),
                         ([int(rng.integers(lo, hi + 1))],)]
    for _ in range(n - 3):
        size = int(rng.integers(2, 11))
        cases.append(([int(v) for v in rng.integers(lo, hi + 1, size=size)],))
    return cases


def _pos_lists(rng: Rng) -> list[Args]:
    return [(xs,) for (xs,) in _lists(rng, 1, 60)]


def _ints(lo: int, hi: int) -> Callable[[Rng], list[Args]]:
    def draw(rng: Rng) -> list[Args]:
        return [(lo,)] + [(int(v),) for v in rng.integers(lo, hi + 1, size=6)]
    return draw


def _texts(rng: Rng, n: int = 7) -> list[Args]:
    cases: list[Args] = [("",), ("noon",)]
    for _ in range(n - 2):
        k = int(rng.integers(1, 6))
        cases.append((" ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), size=k)),))
    return cases


def _k(lo: int, hi: int, name: str = "k") -> Callable[[Rng], dict[str, Any]]:
    return lambda rng: {name: int(rng.integers(lo, hi + 1))}


def _none(rng: Rng) -> dict[str, Any]:
    return {}


def _t(key: str, sig: str, text: str, body: str, params: Callable, inputs: Callable
       ) -> CodeTemplate:
    return CodeTemplate(key, sig, text, f"def {key}({sig}):\n{body}", params, inputs)


TEMPLATES: tuple[CodeTemplate, ...] = (
    _t("sum_squares_above", "xs", "returns the sum of the squares of the numbers in `xs` "
       "that are greater than $k", "    return sum(x * x for x in xs if x > $k)",
       _k(-5, 5), _lists),
    _t("count_multiples", "xs", "returns how many numbers in `xs` are divisible by $k",
       "    return sum(1 for x in xs if x % $k == 0)", _k(2, 7), _lists),
    _t("spread_plus", "xs", "returns the largest minus the smallest number of `xs`, plus $k "
       "(just $k for an empty list)", "    return (max(xs) - min(xs) if xs else 0) + $k",
       _k(0, 9), _lists),
    _t("nth_largest", "xs", "returns the $k-th largest distinct value of `xs`, or None if "
       "there are fewer distinct values", "    v = sorted(set(xs), reverse=True)\n"
       "    return v[$k - 1] if len(v) >= $k else None", _k(1, 3), _lists),
    _t("running_sum", "xs", "returns the list of running sums of `xs`, starting from $k",
       "    out, s = [], $k\n    for x in xs:\n        s += x\n        out.append(s)\n"
       "    return out", _k(0, 5), _lists),
    _t("evens_times", "xs", "returns the even numbers of `xs` multiplied by $k, in order",
       "    return [x * $k for x in xs if x % 2 == 0]", _k(2, 9), _lists),
    _t("alternating_sum", "xs", "returns xs[0] - xs[1] + xs[2] - ... for the list `xs`, "
       "times $k", "    return $k * sum(x if i % 2 == 0 else -x for i, x in enumerate(xs))",
       _k(1, 4), _lists),
    _t("clip_list", "xs", "returns `xs` with every number clipped to the range [-$k, $k]",
       "    return [min(max(x, -$k), $k) for x in xs]", _k(1, 10), _lists),
    _t("count_runs", "xs", "returns the number of maximal runs of equal adjacent numbers in "
       "`xs` of length at least $k", "    runs, n = [], 0\n    for i, x in enumerate(xs):\n"
       "        n = n + 1 if i and xs[i - 1] == x else 1\n"
       "        if i + 1 == len(xs) or xs[i + 1] != x:\n            runs.append(n)\n"
       "    return sum(1 for r in runs if r >= $k)", _k(1, 2), _lists),
    _t("longest_rise", "xs", "returns the length of the longest strictly increasing "
       "contiguous run in `xs` (0 for an empty list), plus $k",
       "    best = cur = 0\n    for i, x in enumerate(xs):\n"
       "        cur = cur + 1 if i and xs[i - 1] < x else 1\n        best = max(best, cur)\n"
       "    return best + $k", _k(0, 3), _lists),
    _t("rotate_left", "xs", "returns `xs` rotated left by $k positions (an empty list stays "
       "empty)", "    if not xs:\n        return []\n    k = $k % len(xs)\n"
       "    return xs[k:] + xs[:k]", _k(1, 6), _lists),
    _t("gaps", "xs", "returns the list of differences xs[i + $k] - xs[i] for every valid i",
       "    return [xs[i + $k] - xs[i] for i in range(len(xs) - $k)]", _k(1, 3), _lists),
    _t("index_of_extreme", "xs", "returns the index of the first occurrence of the $which "
       "number in `xs`, or -1 for an empty list",
       "    return xs.index($which(xs)) if xs else -1",
       lambda rng: {"which": ("max", "min")[int(rng.integers(2))]}, _lists),
    _t("dedupe_head", "xs", "returns the first $k distinct numbers of `xs` in order of first "
       "appearance", "    out = []\n    for x in xs:\n        if x not in out:\n"
       "            out.append(x)\n    return out[:$k]", _k(2, 6), _lists),
    _t("digit_sum", "n", "returns the sum of the digits of the non-negative integer `n` "
       "written in base $k", "    s = 0\n    while n:\n        s += n % $k\n        n //= $k\n"
       "    return s", _k(2, 9), _ints(0, 100000)),
    _t("collatz_steps", "n", "returns the number of steps to reach 1 from `n` >= 1, where a "
       "step maps even n to n // 2 and odd n to $k * n + 1",
       "    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else $k * n + 1\n"
       "        steps += 1\n    return steps", lambda rng: {"k": 3}, _ints(1, 500)),
    _t("is_prime_plus", "n", "returns True if `n + $k` is a prime number, else False",
       "    m = n + $k\n    if m < 2:\n        return False\n"
       "    return all(m % d for d in range(2, int(m ** 0.5) + 1))", _k(0, 5), _ints(0, 200)),
    _t("count_primes_below", "n", "returns how many prime numbers are smaller than `n` "
       "and greater than $k", "    return sum(1 for m in range(max(2, $k + 1), n)\n"
       "               if all(m % d for d in range(2, int(m ** 0.5) + 1)))", _k(0, 10),
       _ints(0, 300)),
    _t("fib_like", "n", "returns term `n` (counting from 0) of the sequence with f(0) = $a, "
       "f(1) = $b and f(i) = f(i - 1) + f(i - 2)", "    a, b = $a, $b\n    for _ in range(n):\n"
       "        a, b = b, a + b\n    return a",
       lambda rng: {"a": int(rng.integers(0, 3)), "b": int(rng.integers(1, 4))}, _ints(0, 40)),
    _t("reverse_number", "n", "returns the digits of the non-negative integer `n` reversed, "
       "as an integer, plus $k", "    return int(str(n)[::-1]) + $k", _k(0, 9),
       _ints(0, 99999)),
    _t("gcd_times", "xs", "returns $k times the greatest common divisor of the positive "
       "numbers in `xs` (0 for an empty list)", "    from math import gcd\n    g = 0\n"
       "    for x in xs:\n        g = gcd(g, x)\n    return $k * g", _k(1, 3), _pos_lists),
    _t("vowel_count", "s", "returns how many characters of `s` are one of the letters "
       "'$letters' (case-insensitive)", "    return sum(1 for c in s.lower() if c in '$letters')",
       lambda rng: {"letters": ("aeiou", "aei", "ou")[int(rng.integers(3))]}, _texts),
    _t("caesar", "s", "returns `s` with every lowercase letter a-z shifted forward by $k "
       "places in the alphabet (wrapping around); other characters unchanged",
       "    return ''.join(chr((ord(c) - 97 + $k) % 26 + 97) if 'a' <= c <= 'z' else c\n"
       "                   for c in s)", _k(1, 25), _texts),
    _t("is_palindrome_min", "s", "returns True if the letters of `s`, lower-cased and "
       "ignoring every non-letter, read the same backwards and there are at least $k of them",
       "    t = [c.lower() for c in s if c.isalpha()]\n    return len(t) >= $k and t == t[::-1]",
       _k(1, 3), _texts),
    _t("word_lengths", "s", "returns the list of lengths of the whitespace-separated words "
       "of `s` that are at least $k characters long", "    return [len(w) for w in s.split() "
       "if len(w) >= $k]", _k(1, 4), _texts),
    _t("capitalize_words", "s", "returns `s` with the first letter of every "
       "whitespace-separated word upper-cased, words joined by '$sep'",
       "    return '$sep'.join(w[:1].upper() + w[1:] for w in s.split())",
       lambda rng: {"sep": (" ", "-", "_")[int(rng.integers(3))]}, _texts),
    _t("most_common_char", "s", "returns the most frequent character of `s` other than '$c' "
       "(ties: the one appearing first), or None if there is none",
       "    best = None\n    for ch in s:\n        if ch != '$c' and (best is None or "
       "s.count(ch) > s.count(best)):\n            best = ch\n    return best",
       lambda rng: {"c": (" ", "a")[int(rng.integers(2))]}, _texts),
    _t("run_length", "s", "returns the run-length encoding of `s` as a string: each maximal "
       "run of a character c of length n becomes c followed by n, joined by '$sep'",
       "    out, i = [], 0\n    while i < len(s):\n        j = i\n"
       "        while j < len(s) and s[j] == s[i]:\n            j += 1\n"
       "        out.append(s[i] + str(j - i))\n        i = j\n    return '$sep'.join(out)",
       lambda rng: {"sep": ("", ",", "|")[int(rng.integers(3))]}, _texts),
    _t("count_long_words", "s", "returns how many whitespace-separated words of `s` are "
       "longer than $k characters", "    return sum(1 for w in s.split() if len(w) > $k)",
       _k(2, 5), _texts),
    _t("remove_char", "s", "returns `s` with every occurrence of the character '$c' removed",
       "    return s.replace('$c', '')",
       lambda rng: {"c": "aeiou "[int(rng.integers(6))]}, _texts),
    _t("longest_word", "s", "returns the first longest whitespace-separated word of `s` "
       "repeated $k times, or '' if there are no words",
       "    words = s.split()\n    return max(words, key=len) * $k if words else ''",
       _k(1, 3), _texts),
    _t("chunk_sums", "xs", "returns the sums of consecutive chunks of $k numbers of `xs` "
       "(the last chunk may be shorter)",
       "    return [sum(xs[i:i + $k]) for i in range(0, len(xs), $k)]", _k(2, 4), _lists),
)
"""All templates; item generation picks one uniformly, then its parameters."""
