"""Tests of tasks/answers.py: boxed extraction, number parsing, code blocks."""

from fractions import Fraction

import pytest

from reopold_agent.tasks.answers import (
    answers_match,
    extract_boxed,
    extract_code_block,
    normalize_text,
    numbers_equal,
    parse_number,
)


@pytest.mark.parametrize("text, boxed", [
    ("\\boxed{42}", "42"),
    ("a \\boxed{1} b \\boxed{ 2 }", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
    ("\\boxed {7}", "7"),
    ("\\boxed{3} and \\boxed{unclosed", "3"),
    ("\\boxed{unclosed", None),
    ("\\boxed", None),
    ("no answer", None),
    ("\\boxed{}", ""),
])
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize("text, value", [
    ("9,065", Fraction(9065)), ("9 065", Fraction(9065)), ("9065.0", Fraction(9065)),
    ("-3/4", Fraction(-3, 4)), ("\\frac{3}{4}", Fraction(3, 4)), ("1e3", Fraction(1000)),
    ("\\$12", Fraction(12)), ("\\text{42}", Fraction(42)), ("0.1", Fraction(1, 10)),
    ("\u22125", Fraction(-5)), ("abc", None), ("1/0", None), ("NaN", None), ("inf", None),
    ("1e999999999", None), ("9065 pens", None), ("", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_numbers_equal_tolerance():
    assert numbers_equal("0.3333333", "1/3")
    assert not numbers_equal("0.333", "1/3")
    assert numbers_equal("1000000.0001", "1000000")
    assert not numbers_equal("x", "1")


def test_text_answers():
    assert normalize_text("  The  Red. ") == "the red"
    assert answers_match("\\text{Blue}", "blue") and not answers_match("blue", "red")
    assert answers_match("4,821", "4821")


def test_extract_code_block():
    text = "```python\nfirst\n```\nthen\n```py\nsecond\n```\n```js\nno\n```"
    assert extract_code_block(text) == "second\n"
    assert extract_code_block("```\nplain\n```") == "plain\n"
    assert extract_code_block("```python\nunclosed") is None
