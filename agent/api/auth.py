"""Who is calling the local API: Batch Shared Key signatures and task tokens (Bearer).

Shared Key, as the three clients sign it (azure-batch 15.1, 15.0.0b1 inside azure-cli 2.91.0,
14.2; read from their ``BatchSharedKeyAuthPolicy`` / ``SharedKeyAuth`` and checked against them,
sdk-compat.md §3 and §4a)::

    VERB \\n Content-Encoding \\n Content-Language \\n Content-Length \\n Content-MD5 \\n
    Content-Type \\n Date \\n If-Modified-Since \\n If-Match \\n If-None-Match \\n
    If-Unmodified-Since \\n Range \\n
    ocp-*:value \\n ...          (lower-cased names, sorted; empty values left out)
    /account/raw/path          (as sent, still percent-encoded)
    \\nname:value ...           (parse_qs of the query: names as sent, sorted, first value,
                                empty values left out)

Content-Length is ``0`` for a body-less request other than GET/HEAD (the clients sign ``0`` when
they send none; requests then sends ``Content-Length: 0``). The documented rule differs (lower-
cased query names, every value sorted and comma-joined, ``Date`` empty when ``ocp-date`` is
given, a zero length signed as empty); those variants are tried too, so a client written from
the docs verifies. Every candidate is compared with ``hmac.compare_digest``.

The request must carry ``ocp-date`` (or ``Date``) within ``max_skew`` (15 minutes, as the
service) of the server's clock; ``max_skew=None`` turns the check off and ``clock`` is an input,
so fixed-date test vectors can be checked.

Task tokens (``authenticationTokenSettings``): the node gives a task ``AZ_BATCH_AUTHENTICATION_TOKEN``;
the task sends it as ``Authorization: Bearer <token>`` and may then act on its own job only
(``check_scope``). ``TokenVerifier`` is the hook the service plugs in; ``HmacTaskTokens`` is the
format this project uses: ``bat1.<payload>.<mac>``, the payload base64url JSON
``{"job", "task", "iat", "exp", "nonce"}``, the MAC HMAC-SHA256 under a node secret that never
leaves the node. The token names its job, so no lookup is needed to scope it; ``is_live`` lets
the service refuse tokens of tasks that have ended.

Nothing here logs: not the key, not the Authorization header, not a token, not a signature.
Failures carry a reason for the client (``AuthenticationErrorDetail``), never a secret or the
string the server expected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote

from agent.api.errors import BatchApiError
from agent.api.formats import parse_http_date
from agent.errors import ConfigError
from agent.status import utcnow
from agent.tokens import TaskClaims, TaskTokens, TokenRejected

DEFAULT_MAX_SKEW = timedelta(minutes=15)
_SIGNED_HEADERS = ("content-encoding", "content-language", "content-length", "content-md5", "content-type",
                   "date", "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")


# --- keys and principals ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AccountKey:
    """An account name and its decoded key (the key never appears in a repr)."""

    account: str
    key: bytes = field(repr=False)

    @classmethod
    def from_base64(cls, account: str, text: str, *, source: str = "account key") -> AccountKey:
        """Decode a key as the portal shows it; a wrong one is a ``ConfigError`` that never quotes it."""
        if not account or not account.strip():
            raise ConfigError(f"{source}: the account name is empty")
        cleaned = "".join(text.split())
        try:
            key = base64.b64decode(cleaned, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{source}: not valid base64 (an account key is base64 text, e.g. from "
                              "`head -c 32 /dev/urandom | base64`)") from None
        if len(key) < 16:
            raise ConfigError(f"{source}: too short ({len(key)} bytes decoded); use at least 32 random bytes")
        return cls(account.strip(), key)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from: the account (every operation) or a task (its own job only)."""

    kind: Literal["account", "task"]
    account: str | None = None
    job_id: str | None = None
    task_id: str | None = None

    def may_access_job(self, job_id: str) -> bool:
        if self.kind == "account":
            return True
        return self.job_id is not None and self.job_id.casefold() == job_id.casefold()


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The parts of an HTTP request a signature covers, as received."""

    method: str
    raw_path: str                    # percent-encoded, as on the request line, without the query
    query: str                       # raw query string, as sent
    headers: Mapping[str, str]       # lower-cased names

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any]) -> SignedRequest:
        raw: bytes = scope.get("raw_path") or str(scope.get("path", "")).encode()
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        query: bytes = scope.get("query_string", b"")
        return cls(str(scope.get("method", "GET")).upper(), raw.split(b"?", 1)[0].decode("latin-1"),
                   query.decode("latin-1"), headers)


# --- Shared Key -------------------------------------------------------------------------------

def string_to_sign(req: SignedRequest, account: str, *, docs_rule: bool = False,
                   zero_length_empty: bool = False) -> str:
    """The Batch Shared Key string to sign; ``docs_rule``/``zero_length_empty`` give the variants."""
    h = {k: v for k, v in req.headers.items() if v}
    if req.method not in ("GET", "HEAD") and "content-length" not in h:
        h["content-length"] = "0"
    if zero_length_empty and h.get("content-length") == "0":
        h["content-length"] = ""
    if docs_rule and "ocp-date" in h:
        h["date"] = ""
    out = req.method + "\n" + "\n".join(h.get(name, "") for name in _SIGNED_HEADERS) + "\n"
    out += "".join(f"{name}:{h[name]}\n" for name in sorted(n for n in h if n.startswith("ocp-")))
    out += f"/{account.lower() if docs_rule else account}{req.raw_path}"
    query = parse_qs(req.query)  # decoded; blank values dropped, as the clients' parse_qs does
    if docs_rule:
        merged: dict[str, list[str]] = {}
        for name, values in query.items():
            merged.setdefault(name.lower(), []).extend(values)
        out += "".join(f"\n{name}:{','.join(sorted(merged[name]))}" for name in sorted(merged))
    else:
        out += "".join(f"\n{name}:{query[name][0]}" for name in sorted(query) if query[name][0])
    return out


def sign(key: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()).decode()


def _candidates(req: SignedRequest, account: str) -> list[str]:
    out: list[str] = []
    for docs_rule in (False, True):
        for zero in (False, True):
            text = string_to_sign(req, account, docs_rule=docs_rule, zero_length_empty=zero)
            if text not in out:
                out.append(text)
    unquoted = SignedRequest(req.method, unquote(req.raw_path), req.query, req.headers)
    if unquoted.raw_path != req.raw_path:
        out.append(string_to_sign(unquoted, account))
    return out


def _fail(detail: str, code: str = "AuthenticationFailed", status: int | None = None) -> BatchApiError:
    return BatchApiError(code, values=(("AuthenticationErrorDetail", detail),), status=status)


class SharedKeyVerifier:
    """Checks ``Authorization: SharedKey account:signature`` against the configured keys."""

    def __init__(self, keys: Sequence[AccountKey], *, max_skew: timedelta | None = DEFAULT_MAX_SKEW,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._keys: dict[str, list[AccountKey]] = {}
        for k in keys:
            self._keys.setdefault(k.account.casefold(), []).append(k)
        self._max_skew = max_skew
        self._clock = clock

    def verify(self, req: SignedRequest, credentials: str) -> Principal:
        account, sep, signature = credentials.strip().rpartition(":")
        if not sep or not account or not signature:
            raise _fail("the Authorization header must read 'SharedKey <account>:<signature>'",
                        code="InvalidAuthenticationInfo")
        self._check_date(req)
        keys = self._keys.get(account.casefold(), [])
        # Every configured key of a known account against every variant; an unknown account costs
        # the same number of HMACs against a throw-away key, so timing does not tell names apart.
        trial = keys or [AccountKey(account, secrets.token_bytes(32))]
        ok = False
        for key in trial:
            for text in _candidates(req, key.account if keys else account):
                ok |= hmac.compare_digest(sign(key.key, text).encode(), signature.encode())
        if not ok or not keys:
            raise _fail("the MAC signature found in the HTTP request is not the same as any computed signature")
        return Principal("account", account=keys[0].account)

    def _check_date(self, req: SignedRequest) -> None:
        raw = req.headers.get("ocp-date") or req.headers.get("date")
        if not raw:
            raise _fail("the request carries neither an ocp-date nor a Date header")
        when = parse_http_date(raw)
        if when is None:
            raise _fail("the ocp-date/Date header is not an RFC 1123 date")
        if self._max_skew is not None and abs(self._clock() - when) > self._max_skew:
            minutes = int(self._max_skew.total_seconds() // 60)
            raise _fail(f"request date header too old or too far ahead: {raw!r}; the server accepts "
                        f"{minutes} minutes either side of its clock, check this machine's clock")


# --- task tokens ------------------------------------------------------------------------------

class TokenVerifier(Protocol):
    """The hook the service provides for ``Authorization: Bearer``: a token -> a task principal."""

    def verify_token(self, token: str) -> Principal:
        """Return the task principal, or raise ``BatchApiError`` (403 ``AuthenticationFailed``)."""
        ...


class HmacTaskTokens(TaskTokens):
    """``agent.tokens.TaskTokens`` as a ``TokenVerifier``: a rejected token is 403 AuthenticationFailed."""

    def claims(self, token: str) -> TaskClaims:
        try:
            return super().claims(token)
        except TokenRejected as exc:
            raise _fail(str(exc)) from None

    def verify_token(self, token: str) -> Principal:
        c = self.claims(token)
        return Principal("task", job_id=c.job_id, task_id=c.task_id)


# --- the whole check --------------------------------------------------------------------------

class Authenticator:
    """Turns a request's Authorization header into a ``Principal`` or a Batch error (401/403)."""

    def __init__(self, shared_key: SharedKeyVerifier | None, tokens: TokenVerifier | None = None) -> None:
        self.shared_key = shared_key
        self.tokens = tokens

    def authenticate(self, req: SignedRequest) -> Principal:
        header = req.headers.get("authorization", "").strip()
        if not header:
            raise _fail("the request is not signed: send Authorization: SharedKey <account>:<signature>",
                        status=401, code="AuthenticationFailed")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "sharedkey" and self.shared_key is not None:
            return self.shared_key.verify(req, credentials)
        if scheme.lower() == "bearer" and self.tokens is not None:
            return self.tokens.verify_token(credentials.strip())
        allowed = [name for name, on in (("SharedKey", self.shared_key), ("Bearer", self.tokens)) if on]
        raise _fail(f"unsupported authorization scheme; this node accepts {' or '.join(allowed) or 'none'}",
                    code="InvalidAuthenticationInfo")


def path_job_id(raw_path: str, *, prefix: str = "") -> str | None:
    """The ``{jobId}`` of a ``/jobs/{jobId}[/...]`` path (decoded), else ``None``."""
    path = raw_path[len(prefix):] if prefix and raw_path.startswith(prefix) else raw_path
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] == "jobs" and parts[2]:
        return unquote(parts[2])
    return None


def check_scope(principal: Principal, raw_path: str, *, prefix: str = "") -> None:
    """Deny a task principal anything outside ``/jobs/{its job}``: the one place scopes are checked.

    Account principals pass. A task token may read and change its own job and its tasks (add
    tasks, list them, terminate itself...), as ``access: ["job"]`` grants in Batch; it may not
    list or create jobs, nor touch another job.
    """
    if principal.kind == "account":
        return
    job = path_job_id(raw_path, prefix=prefix)
    if job is None or not principal.may_access_job(job):
        raise BatchApiError("InsufficientAccountPermissions",
                            values=(("Reason", "a task token grants access to its own job only"),))


def authorization_schemes(auth: Authenticator) -> Iterable[str]:
    """What ``WWW-Authenticate`` offers on a 401."""
    if auth.shared_key is not None:
        yield "SharedKey"
    if auth.tokens is not None:
        yield "Bearer"
