"""The OData pieces of Batch list routes: ``$filter``, ``$select``, ``maxresults`` and ``odata.nextLink``.

Hand-written because no kept Python library parses Batch's small OData dialect into something
that filters plain dicts: the grammar (batch-api-routes.md §10) is comparisons
``prop op literal`` (``eq ne gt ge lt le``), ``startswith(prop, 'x')``, ``and``/``or``/``not``
and parentheses. Literals: ``'text'`` (``''`` escapes a quote), integers, ``true``/``false`` and
``DateTime'...'``. Property names are case-sensitive, string values compare case-insensitively
(as the service does). Each route passes the properties (and operators) it allows; anything else
is a 400 ``InvalidQueryParameterValue`` naming the parameter and the reason.

Paging: a route asks ``ListQuery.page(items, key)`` for a page of at most ``maxresults`` (and
the server's own cap) items after the ``$skiptoken`` position, and gets the ``odata.nextLink``:
an absolute URL built from the request's URL with every query parameter kept (the clients re-
sign the link's query exactly as they send it) and ``$skiptoken`` replaced. The token is the last
item's sort key in base64url, so it needs no quoting and survives every client's re-encoding.

Nothing here reads the store or knows a route: it works on already-rendered JSON dicts.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agent.api.errors import query_error
from agent.api.formats import parse_http_date
from agent.status import parse_time

MAX_RESULTS = 1000
MAX_FILTER_LENGTH = 4096   # a client's filter, not a program: bounded so parsing is cheap
MAX_FILTER_DEPTH = 32
Operator = Literal["eq", "ne", "gt", "ge", "lt", "le", "startswith"]
PropertyType = Literal["string", "int", "datetime", "bool"]
ALL_COMPARE: frozenset[str] = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})


@dataclass(frozen=True, slots=True)
class Filterable:
    """One property a route's ``$filter`` may use (keyed by its path, e.g. ``executionInfo/exitCode``)."""

    type: PropertyType
    operators: frozenset[str]


def filterable(type_: PropertyType, *ops: str) -> Filterable:
    return Filterable(type_, frozenset(ops) if ops else ALL_COMPARE)


# --- $filter ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:
    (?P<datetime>DateTime'(?:[^']|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<lparen>\() | (?P<rparen>\)) | (?P<comma>,)
  | (?P<number>-?\d+(?![\w/]))
  | (?P<word>[A-Za-z_][\w]*(?:/[A-Za-z_]\w*)*)
)""", re.VERBOSE)


@dataclass(frozen=True, slots=True)
class Compare:
    path: str
    op: str
    value: Any

    def matches(self, item: Mapping[str, Any]) -> bool:
        actual = _lookup(item, self.path)
        if self.op == "startswith":
            return isinstance(actual, str) and actual.casefold().startswith(str(self.value).casefold())
        left, right = _comparable(actual), _comparable(self.value)
        if left is None or right is None or type(left) is not type(right):
            return self.op == "ne" and left != right
        return bool({"eq": left == right, "ne": left != right, "gt": left > right, "ge": left >= right,
                     "lt": left < right, "le": left <= right}[self.op])


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: Literal["and", "or"]
    left: Expr
    right: Expr

    def matches(self, item: Mapping[str, Any]) -> bool:
        if self.op == "and":
            return self.left.matches(item) and self.right.matches(item)
        return self.left.matches(item) or self.right.matches(item)


@dataclass(frozen=True, slots=True)
class Not:
    inner: Expr

    def matches(self, item: Mapping[str, Any]) -> bool:
        return not self.inner.matches(item)


Expr = Compare | BoolOp | Not


def _lookup(item: Mapping[str, Any], path: str) -> Any:
    current: Any = item
    for part in path.split("/"):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def _comparable(value: Any) -> Any:
    if isinstance(value, str):
        try:
            when = parse_time(value) if _looks_like_time(value) else None
        except ValueError:
            when = None
        return when if when is not None else value.casefold()
    return value


def _looks_like_time(text: str) -> bool:
    return len(text) >= 19 and text[4:5] == "-" and text[10:11] == "T"


class _FilterError(Exception):
    pass


class _Parser:
    def __init__(self, text: str, allowed: Mapping[str, Filterable]) -> None:
        self.tokens = self._lex(text)
        self.pos = 0
        self.depth = 0
        self.allowed = allowed

    @staticmethod
    def _lex(text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None or m.lastgroup is None:
                raise _FilterError(f"unexpected text at position {pos}: {text[pos:pos + 20]!r}")
            out.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
        return out

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, word: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (word is not None and tok[1] != word):
            found = "the end" if tok is None else repr(tok[1])
            raise _FilterError(f"expected {word or _KIND_NAMES.get(kind, kind)}, found {found}")
        self.pos += 1
        return tok[1]

    def at_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "word" and tok[1] in words

    def parse(self) -> Expr:
        if not self.tokens:
            raise _FilterError("the filter is empty")
        expr = self.or_expr()
        if self.peek() is not None:
            raise _FilterError(f"unexpected {self.peek()[1]!r} after a complete expression")  # type: ignore[index]
        return expr

    def or_expr(self) -> Expr:
        expr = self.and_expr()
        while self.at_word("or"):
            self.pos += 1
            expr = BoolOp("or", expr, self.and_expr())
        return expr

    def and_expr(self) -> Expr:
        expr = self.unary()
        while self.at_word("and"):
            self.pos += 1
            expr = BoolOp("and", expr, self.unary())
        return expr

    def unary(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_FILTER_DEPTH:
            raise _FilterError(f"nested deeper than {MAX_FILTER_DEPTH} levels")
        try:
            return self._unary()
        finally:
            self.depth -= 1

    def _unary(self) -> Expr:
        if self.at_word("not"):
            self.pos += 1
            return Not(self.unary())
        if self.peek() == ("lparen", "("):
            self.pos += 1
            expr = self.or_expr()
            self.take("rparen")
            return expr
        if self.at_word("startswith"):
            self.pos += 1
            self.take("lparen")
            path = self.prop("startswith")
            self.take("comma")
            value = self.literal(path)
            self.take("rparen")
            return Compare(path, "startswith", value)
        path = self.take("word")
        op = self.take("word")
        if op not in ALL_COMPARE:
            raise _FilterError(f"{op!r} is not an operator; use eq, ne, gt, ge, lt, le or startswith()")
        self.check(path, op)
        return Compare(path, op, self.literal(path))

    def prop(self, op: str) -> str:
        path = self.take("word")
        self.check(path, op)
        return path

    def check(self, path: str, op: str) -> None:
        spec = self.allowed.get(path)
        if spec is None:
            raise _FilterError(f"{path!r} cannot be filtered on here; allowed: {', '.join(sorted(self.allowed))}")
        if op not in spec.operators:
            raise _FilterError(f"{path!r} does not support {op}; it supports {', '.join(sorted(spec.operators))}")

    def literal(self, path: str) -> Any:
        tok = self.peek()
        if tok is None:
            raise _FilterError("a value is missing at the end")
        self.pos += 1
        kind, text = tok
        want = self.allowed[path].type
        if kind == "string" and want == "string":
            return text[1:-1].replace("''", "'")
        if kind == "number" and want == "int":
            return int(text)
        if kind == "word" and text in ("true", "false") and want == "bool":
            return text == "true"
        if kind == "datetime" and want == "datetime":
            return _parse_datetime(text[9:-1].replace("''", "'"))
        raise _FilterError(f"{path!r} takes {_TYPE_HINT[want]}, not {text!r}")


_KIND_NAMES = {"word": "a property name or operator", "rparen": "')'", "lparen": "'('", "comma": "','"}
_TYPE_HINT = {"string": "a quoted string like 'active'", "int": "an integer",
              "datetime": "DateTime'2025-07-01T12:00:00Z'", "bool": "true or false"}


def _parse_datetime(text: str) -> datetime:
    try:
        value = parse_time(text)
    except ValueError:
        value = parse_http_date(text)
    if value is None:
        raise _FilterError(f"{text!r} is not a date; write DateTime'2025-07-01T12:00:00Z'")
    return value


def parse_filter(text: str | None, allowed: Mapping[str, Filterable]) -> Expr | None:
    """Parse ``$filter`` for a route that allows ``allowed``; ``None`` when absent or blank."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_FILTER_LENGTH:
        raise query_error("$filter", text, f"longer than {MAX_FILTER_LENGTH} characters")
    try:
        return _Parser(text, allowed).parse()
    except _FilterError as exc:
        raise query_error("$filter", text, str(exc)) from None


# --- $select, maxresults ----------------------------------------------------------------------

def parse_select(text: str | None, allowed: Iterable[str] | None = None) -> tuple[str, ...] | None:
    """``$select=id,state`` -> ``("id", "state")``; unknown names are a 400 when ``allowed`` is given."""
    if text is None or not text.strip():
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if allowed is not None:
        known = set(allowed)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise query_error("$select", text, f"unknown properties: {', '.join(unknown)}")
    return names


def project(item: Mapping[str, Any], select: Sequence[str] | None) -> dict[str, Any]:
    """Keep only the selected top-level properties (``odata.*`` annotations are kept too)."""
    if select is None:
        return dict(item)
    keep = set(select)
    return {k: v for k, v in item.items() if k in keep or k.startswith("odata.")}


def parse_maxresults(text: str | None) -> int:
    if text is None or text == "":
        return MAX_RESULTS
    try:
        value = int(text)
    except ValueError:
        raise query_error("maxresults", text, "must be an integer from 1 to 1000") from None
    if not 1 <= value <= MAX_RESULTS:
        raise query_error("maxresults", text, "must be from 1 to 1000", code="OutOfRangeQueryParameterValue")
    return value


# --- paging -----------------------------------------------------------------------------------

def encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).rstrip(b"=").decode()


def decode_token(token: str) -> str:
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):
        raise query_error("$skiptoken", token, "not a token this server issued") from None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_link: str | None

    def body(self, metadata: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if metadata:
            out["odata.metadata"] = metadata
        out["value"] = self.items
        if self.next_link:
            out["odata.nextLink"] = self.next_link
        return out


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A list request's OData options, parsed once by ``parse_list_query``."""

    url: str                       # the absolute request URL (the nextLink is built from it)
    filter: Expr | None
    select: tuple[str, ...] | None
    maxresults: int
    after: str | None              # the sort key the previous page ended at

    def page(self, items: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], str], *,
             cap: int = MAX_RESULTS) -> Page:
        """Filter, page and project ``items`` (already sorted by ``key``, ascending)."""
        size = max(1, min(self.maxresults, cap))
        out: list[dict[str, Any]] = []
        last: str | None = None
        more = False
        for item in items:
            k = key(item)
            if self.after is not None and k <= self.after:
                continue
            if self.filter is not None and not self.filter.matches(item):
                continue
            if len(out) == size:
                more = True
                break
            out.append(project(item, self.select))
            last = k
        return Page(out, self.next_link(last) if more and last is not None else None)

    def next_link(self, last_key: str) -> str:
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "$skiptoken"]
        query.append(("$skiptoken", encode_token(last_key)))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, safe="$,'/:"), ""))


def parse_list_query(url: str, params: Mapping[str, str], *, filters: Mapping[str, Filterable] | None = None,
                     select: Iterable[str] | None = None) -> ListQuery:
    """Read ``$filter`` / ``$select`` / ``maxresults`` / ``$skiptoken`` from a list request."""
    raw_filter = params.get("$filter")
    if raw_filter is not None and raw_filter.strip() and not filters:
        raise query_error("$filter", raw_filter, "this list cannot be filtered", code="UnsupportedQueryParameter")
    token = params.get("$skiptoken")
    return ListQuery(url, parse_filter(raw_filter, filters or {}), parse_select(params.get("$select"), select),
                     parse_maxresults(params.get("maxresults")), decode_token(token) if token else None)
