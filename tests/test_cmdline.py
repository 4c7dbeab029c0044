"""agent.cmdline: ``split`` is ``shlex.split(s, posix=True)``, result and error alike, in linear
time; ``argv_problem`` names what Linux's exec would refuse.

Equivalence: a Hypothesis property against ``shlex.split`` on strings drawn from quotes,
backslashes and whitespace, plus a table of edge cases. Size: large inputs are checked for
correctness only (the timing lives in bench/bench_cmdline.py).
"""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cmdline import MAX_ARG_STRLEN, MAX_ARGV_BYTES, argv_problem, split

ALPHABET = ["a", "b", "é", " ", "\t", "\r", "\n", "\x0b", "\x0c", "\xa0", "'", '"', "\\", "$", "`", "#", "\x00",
            "\ud800", "x y", "\\\\", "\\'", '\\"', "''", '""']


def reference(text: str) -> tuple[str, list[str] | str]:
    try:
        return "ok", shlex.split(text, posix=True)
    except ValueError as exc:
        return "error", str(exc)


def ours(text: str) -> tuple[str, list[str] | str]:
    try:
        return "ok", split(text)
    except ValueError as exc:
        return "error", str(exc)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join))
def test_same_as_shlex_on_quote_rich_strings(text: str) -> None:
    assert ours(text) == reference(text)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_same_as_shlex_on_any_text(text: str) -> None:
    assert ours(text) == reference(text)


EDGES: list[tuple[str, str, list[str] | str]] = [
    ("empty", "", []),
    ("only-space", " \t\r\n ", []),
    ("vertical-tab-is-a-character", "a\x0bb", ["a\x0bb"]),
    ("nbsp-is-a-character", "a\xa0b", ["a\xa0b"]),
    ("empty-single", "''", [""]),
    ("empty-double", '""', [""]),
    ("two-empties", "'' \"\"", ["", ""]),
    ("glued-empty", "a''", ["a"]),
    ("single-is-literal", r"'a\b\'", ["a\\b\\"]),
    ("double-keeps-other-escapes", r'"\a\$\`\n"', [r"\a\$\`\n"]),
    ("double-escapes-backslash-and-quote", r'"\\ \""', ['\\ "']),
    ("double-keeps-backslash-newline", '"a\\\nb"', ["a\\\nb"]),
    ("unquoted-backslash-newline", "a\\\nb", ["a\nb"]),
    ("unquoted-escapes-anything", r"\a\'\"\\\ x", ["a'\"\\ x"]),
    ("hash-is-no-comment", "a #b", ["a", "#b"]),
    ("quotes-glue-words", "a'b c'\"d\"e", ["ab cde"]),
    ("quote-inside-other", "\"it's\" 'say \"x\"'", ["it's", 'say "x"']),
    ("nul-is-a-character", "a\x00b", ["a\x00b"]),
    ("unclosed-single", "a 'b", "No closing quotation"),
    ("unclosed-double", 'a "b', "No closing quotation"),
    ("unclosed-double-escaped-quote", 'a "b\\"', "No closing quotation"),
    ("double-ends-in-backslash", 'a "b\\', "No escaped character"),
    ("double-ends-in-two-backslashes", 'a "b\\\\', "No closing quotation"),
    ("trailing-backslash", "a b\\", "No escaped character"),
    ("trailing-escaped-backslash", "a b\\\\", ["a", "b\\"]),
    ("lone-quote", "'", "No closing quotation"),
    ("lone-backslash", "\\", "No escaped character"),
]


@pytest.mark.parametrize(("text", "expected"), [e[1:] for e in EDGES], ids=[e[0] for e in EDGES])
def test_edge_cases_match_shlex(text: str, expected: list[str] | str) -> None:
    want = ("error", expected) if isinstance(expected, str) else ("ok", expected)
    assert reference(text) == want, "the table itself must agree with shlex"
    assert ours(text) == want


MB = 1 << 20
LARGE: list[tuple[str, str, list[str]]] = [
    ("plain-token", "a" * (50 * MB), ["a" * (50 * MB)]),
    ("many-tokens", "ab " * (4 * MB), ["ab"] * (4 * MB)),
    ("double-quoted-token", '"' + 'x\\"' * (4 * MB) + '"', ['x"' * (4 * MB)]),
    ("glued-pieces", "'a'\"b\"\\c" * MB, ["abc" * MB]),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in LARGE], ids=[c[0] for c in LARGE])
def test_large_inputs_split_correctly(text: str, expected: list[str]) -> None:
    assert split(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("'" + "a" * (8 * MB), "No closing quotation"),
    ('"' + "a\\\\" * (4 * MB), "No closing quotation"),
    ('"' + "a" * (8 * MB) + "\\", "No escaped character"),
], ids=["single", "double", "double-escape"])
def test_large_unclosed_inputs_fail_like_shlex(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split(text)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["a" * MAX_ARG_STRLEN], "argument 0 is 131072 bytes long; Linux allows at most 131071"),
    (["x", "é" * (MAX_ARG_STRLEN // 2)], "argument 1 is 131072 bytes"),
    (["a" * 1000] * (MAX_ARGV_BYTES // 1000), "ARG_MAX"),
], ids=["one-long-arg", "utf8-bytes-count", "total"])
def test_argv_problem(argv: list[str], fragment: str) -> None:
    problem = argv_problem(argv)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize("argv", [[], ["a" * (MAX_ARG_STRLEN - 1)], ["a" * 100_000] * 60],
                         ids=["empty", "longest-arg", "under-total"])
def test_argv_without_problem(argv: list[str]) -> None:
    assert argv_problem(argv) is None
