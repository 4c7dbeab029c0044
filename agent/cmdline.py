"""Splitting a task's ``commandLine`` into argv, in linear time, and Linux's limits on argv.

Owns: ``split``, which gives exactly what ``shlex.split(text, posix=True)`` gives (comments off,
whitespace `` \\t\\r\\n``; single quotes literal; inside double quotes a backslash escapes only
``\\`` and ``"`` and is kept before any other character; outside quotes a backslash escapes the next
character, newline included; ``''`` and ``""`` make an empty argument) and raises the same
``ValueError`` texts ("No closing quotation", "No escaped character"). Also ``argv_problem``: what
the kernel would refuse in an argv before any environment is added.

Must not: expand anything (variables, globs, ``~``), read the environment, or import from the
agent: it is pure, and ``agent.spec`` (validate) and ``agent.taskrunner`` (run) both use it.

Why hand-written: ``shlex`` reads its input one character at a time through ``StringIO`` and
grows each token with ``+=``; CPython's in-place concatenation is usually amortised, but not for
the attribute ``self.token``, so one long token costs quadratic time (1 MB took 14 s, 2 MB 104 s,
50 MB never finished), blocking the event loop and with it the signal handlers. Here each token
is found by one possessive regular expression (Python >= 3.11; no backtracking) and decoded with
C-level string operations, so the time grows with the length of the input.
"""

from __future__ import annotations

import re

# Linux (fs/exec.c, >= 4.13): one argument, its terminating NUL included, is at most
# MAX_ARG_STRLEN = 32 pages; argv and envp together (strings and pointers) at most
# min(RLIMIT_STACK / 4, 6 MiB).
MAX_ARG_STRLEN = 131072
MAX_ARGV_BYTES = 6 * 1024 * 1024
_POINTER = 8

_WS = " \t\r\n"
_PLAIN = r"""[^ \t\r\n'"\\]"""
_DQ_BODY = r'[^"\\]*+(?:\\[\s\S][^"\\]*+)*+'
# One word: plain runs, backslash pairs, '...' and "..." segments, glued together.
_WORD = re.compile(rf"""(?:{_PLAIN}++|\\[\s\S]|'[^']*+'|"{_DQ_BODY}")++""")
_SEGMENT = re.compile(rf"""((?:{_PLAIN}++|\\[\s\S])++)|'([^']*+)'|"({_DQ_BODY})\"""")
_DQ = re.compile(_DQ_BODY)
_SPACE = re.compile(r"[ \t\r\n]*+")
_SPECIAL = re.compile(r"""['"\\]""")
_SIMPLE = re.compile(r"[^ \t\r\n]++")
_ESCAPE = re.compile(r"\\([\s\S])")
_BACKSLASH = "\\"
_ESCAPED_IN_QUOTES = '\\"'
_HOLD = "\x00"


def split(text: str) -> list[str]:
    """``shlex.split(text, posix=True)``, in time linear in ``len(text)``."""
    if _SPECIAL.search(text) is None:
        return _SIMPLE.findall(text)
    out: list[str] = []
    pos, end = _skip(text, 0), len(text)
    while pos < end:
        word = _WORD.match(text, pos)
        stop = word.end() if word else pos
        if stop < end and text[stop] not in _WS:
            raise ValueError(_error_at(text, stop))
        assert word is not None  # a non-space character always starts a word or an error
        raw = word.group()
        out.append(_decode(raw) if _SPECIAL.search(raw) else raw)
        pos = _skip(text, stop)
    return out


def _skip(text: str, pos: int) -> int:
    space = _SPACE.match(text, pos)
    return space.end() if space else pos


def _decode(raw: str) -> str:
    parts: list[str] = []
    for unquoted, single, double in _SEGMENT.findall(raw):
        if unquoted:
            parts.append(_unescape(unquoted, "") if "\\" in unquoted else unquoted)
        elif double:
            parts.append(_unescape(double, _BACKSLASH) if "\\" in double else double)
        else:
            parts.append(single)
    return "".join(parts)


def _unescape(text: str, kept: str) -> str:
    """Resolve the backslash pairs of ``text``, a run of plain characters and backslash pairs: a
    doubled backslash gives one, backslash-quote gives a quote, and backslash-X gives ``kept + X``.

    A pair starts at the first backslash of a run, as ``str.replace`` scans left to right, so three
    C-level replacements do it; a text holding the placeholder falls back to a regex."""
    if _HOLD in text:
        return _ESCAPE.sub(lambda m: m.group(1) if m.group(1) in _ESCAPED_IN_QUOTES else kept + m.group(1), text)
    text = text.replace(2 * _BACKSLASH, _HOLD).replace(_BACKSLASH + '"', '"')
    return (text if kept else text.replace(_BACKSLASH, "")).replace(_HOLD, _BACKSLASH)


def _error_at(text: str, pos: int) -> str:
    """Why no word could continue at ``pos`` (a quote or backslash that never completes)."""
    if text[pos] == "\\":
        return "No escaped character"
    if text[pos] == '"':
        body = _DQ.match(text, pos + 1)
        if body is not None and body.end() == len(text) - 1 and text[-1] == "\\":
            return "No escaped character"
    return "No closing quotation"


def argv_problem(argv: list[str] | tuple[str, ...]) -> str | None:
    """Why Linux would refuse to exec ``argv`` whatever the environment (E2BIG), else None."""
    total = 0
    for index, arg in enumerate(argv):
        size = len(arg.encode("utf-8", "surrogatepass")) + 1
        if size > MAX_ARG_STRLEN:
            return (f"argument {index} is {size - 1} bytes long; Linux allows at most {MAX_ARG_STRLEN - 1} bytes "
                    "in one argument (MAX_ARG_STRLEN)")
        total += size + _POINTER
    if total > MAX_ARGV_BYTES:
        return (f"the arguments take {total} bytes; Linux allows argv and the environment together at most "
                f"{MAX_ARGV_BYTES} bytes (ARG_MAX)")
    return None
