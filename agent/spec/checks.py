"""Checks of the strings that become an argv, an environment, a path, a blob name or a URL, so
that what ``validate`` accepts can run: the rest of the agent hands these strings to ``execve``,
``open``, the Docker API or the HTTP transport, which refuse (or raise on) a NUL, an ``=`` in an
environment name, a lone UTF-16 surrogate, a command line that no exec can take, or a URL the
transport can't parse.

Each is an ``Annotated`` string type for the models in ``agent.spec``; a failure is a
``PydanticCustomError``, so the message carries the field's JSON path. Messages never repeat the
value: command lines, environment values and URLs (``sig=``) may hold secrets.

URLs are parsed the way the transport will (``agent.blob``: ``urllib.parse.urlsplit`` to build
request URLs, ``httpx.URL`` to send them, the ``idna`` codec the socket layer uses to resolve the
host). httpx is imported only when a document has a URL, so ``validate`` of a task without one
starts as fast as before.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from agent.cmdline import MAX_ARGV_BYTES, argv_problem, split

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SPLIT_HINTS = {
    "No closing quotation": "a ' or \" is never closed; close it, or escape a literal quote with a backslash",
    "No escaped character": "it ends with a backslash that escapes nothing; remove it or write \\\\ for a "
                            "literal backslash",
}


def _fail(kind: str, message: str, **context: object) -> PydanticCustomError:
    return PydanticCustomError(kind, message, context or None)


SURROGATE = "contains a lone UTF-16 surrogate, which is not valid UTF-8; remove it or write the character it was " \
            "meant to pair into"


def os_string(value: str) -> str:
    """A string the OS can take: no NUL (C strings end there), valid UTF-8 (no lone surrogate)."""
    if "\x00" in value:
        raise _fail("nul", "contains a NUL character (\\u0000) at position {at}, which no argument, "
                    "environment entry, path or URL can hold; remove it", at=value.index("\x00"))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _fail("surrogate", SURROGATE + " (at position {at})", at=exc.start) from None
    return value


def command_line(value: str) -> str:
    """A command line that splits (POSIX rules, as at run time) into an argv Linux can exec."""
    if len(value) > MAX_ARGV_BYTES:
        raise _fail("command_too_long", "is {size} characters long; Linux passes at most {limit} bytes of "
                    "arguments to a program (ARG_MAX), so this command could never start. Put long data in a "
                    "resource file (Batch's own limit on commandLine is not documented)",
                    size=len(value), limit=MAX_ARGV_BYTES)
    os_string(value)
    try:
        argv = split(value)
    except ValueError as exc:
        raise _fail("command_split", "cannot be split into arguments ({why}): {hint}", why=str(exc),
                    hint=_SPLIT_HINTS.get(str(exc), "quote as in a POSIX shell")) from None
    problem = argv_problem(argv)
    if problem:
        raise _fail("command_too_long", "{problem}, so this command could never start; put long data in a "
                    "resource file", problem=problem)
    return value


def env_name(value: str) -> str:
    os_string(value)
    if "=" in value:
        raise _fail("env_name", "contains '=', which ends a name in the environment (NAME=value); "
                    "rename the variable")
    return value


def plain_name(value: str) -> str:
    """An image, registry or account name: no whitespace or control character."""
    os_string(value)
    found = _SPACE_OR_CONTROL.search(value)
    if found:
        raise _fail("name_chars", "contains a space or control character at position {at}; remove it",
                    at=found.start())
    return value


def container_name(value: str) -> str:
    """A container name that is put into a URL as one path segment."""
    plain_name(value)
    found = re.search(r"[/?#%\\]", value)
    if found:
        raise _fail("container_name", "contains {char}, which is not allowed in a container name "
                    "(lowercase letters, digits and '-')", char=repr(found.group()))
    return value


def registry_server(value: str) -> str:
    """A registry host (``myreg.azurecr.io``, ``host:5000``) or, if it has a scheme, an http(s) URL."""
    plain_name(value)
    return url(value) if "://" in value else value


def header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise _fail("header_name", "is not an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
    return value


def header_value(value: str) -> str:
    found = _CONTROL.search(value.replace("\t", " "))
    if found:
        raise _fail("header_value", "contains a control character at position {at} (a line break would "
                    "start another header); remove it", at=found.start())
    return os_string(value)


def url(value: str) -> str:
    """An http(s) URL that urlsplit, httpx and the resolver all accept."""
    found = _SPACE_OR_CONTROL.search(value)
    if found:
        raise _fail("url", "the URL contains a space or control character at position {at}; percent-encode it "
                    "(a space is %20)", at=found.start())
    os_string(value)
    try:
        parts = urlsplit(value)
        port, host = parts.port, parts.hostname
    except ValueError as exc:
        raise _fail("url", "is not a valid URL ({why}); check the host and port", why=str(exc)) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _fail("url", "must be an http:// or https:// URL")
    if not host:
        raise _fail("url", "the URL has no host; write it as https://host/path")
    if port == 0:
        raise _fail("url", "the URL has port 0; give a port from 1 to 65535 or none")
    import httpx  # only documents with URLs pay for the import (about 0.15 s)

    try:
        parsed = httpx.URL(value)
        raw_host, _ = parsed.raw_host.decode("ascii"), parsed.host  # .host decodes IDNA: it can raise too
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise _fail("url", "is not a URL the HTTP client can open ({why})",
                    why=f"{type(exc).__name__}: {exc}") from None
    _host(raw_host)
    return value


def _host(host: str) -> None:
    if host.startswith("[") or ":" in host:
        return  # an IPv6 literal: both parsers checked it
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    if "%" in host:
        raise _fail("url", "the URL has a percent-encoded host; write the host name itself")
    if len(host.rstrip(".")) > 253:
        raise _fail("url", "the URL has a host name of {size} characters; DNS allows at most 253", size=len(host))
    try:
        host.encode("idna")
    except UnicodeError:
        raise _fail("url", "the URL has a host name with an empty or over-long label; each part between dots must be "
                    "1 to 63 characters") from None


CommandLine = Annotated[str, AfterValidator(command_line)]
OsString = Annotated[str, AfterValidator(os_string)]
EnvName = Annotated[str, AfterValidator(env_name)]
PlainName = Annotated[str, AfterValidator(plain_name)]
ContainerName = Annotated[str, AfterValidator(container_name)]
RegistryServer = Annotated[str, AfterValidator(registry_server)]
HeaderName = Annotated[str, AfterValidator(header_name)]
HeaderValue = Annotated[str, AfterValidator(header_value)]
Url = Annotated[str, AfterValidator(url)]
