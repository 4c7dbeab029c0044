"""Secret redaction: the one place where URLs and secret values are made safe to show.

Everything that renders a URL for a human or a file (logs, plan, run JSON, fileupload logs,
error messages) goes through ``redact_url`` / ``redact_text``. A SAS keeps its non-secret
parameters (``se`` tells when it expires, ``sp`` what it allows) and loses its signature. The
password in a URL's userinfo (``postgres://user:password@host``) is masked, in URLs and in free
text alike; the user name stays (it says which account, and ``git@`` is no secret).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "REDACTED"

# Query parameters that authenticate a request by themselves.
_SECRET_PARAMS = frozenset({"sig", "signature", "skoid", "sktid", "skt", "ske", "sks", "skv",
                            "token", "access_token", "code", "key", "password", "secret"})
_SECRET_NAME = re.compile(
    r"(PASSWORD|PASSWD|PASSPHRASE|(?<![A-Z])PASS(?![A-Z])|_PWD(?![A-Z])|SECRET|TOKEN|(?<![A-Z])PAT(?![A-Z])|"
    r"(?<![A-Z])KEY(?![A-Z])|_KEY|KEY_|"
    r"(API|ACCESS|ACCOUNT|PRIVATE|SSH|SIGNING|MASTER|SUBSCRIPTION|ENCRYPTION|HMAC|CLIENT|STORAGE|SHARED|"
    r"PRIMARY|SECONDARY|LICEN[CS]E)KEYS?(?![A-Z])|"
    r"SAS|CREDENTIAL|CONNECTION_?STRING|CONNSTR|AUTH|COOKIE)",
    re.IGNORECASE,
)
_CAMEL_KEY = re.compile(r"[a-z0-9]Keys?(?![a-z])")  # apiKey, storageKey: camelCase, so not "monkey"
# sig=... inside any text, and AccountKey=... inside a connection string.
_SIG_IN_TEXT = re.compile(r"(?i)\b(sig|signature|AccountKey|SharedAccessSignature)=([^&\s;\"'<>]+)")
# scheme://user:password@ as urlsplit reads it: the password runs to the last "@" before the path.
_USERINFO_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/?#@:]*):([^\s/?#]+)@")


def redact_url(url: str) -> str:
    """Return ``url`` with secret query values (the SAS signature first of all) masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if not parts.query and not parts.password:
        return url
    query = urlencode(
        [(k, MASK if k.lower() in _SECRET_PARAMS else v)
         for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe=":/",
    )
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", f":{MASK}@")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Mask every ``sig=`` / ``AccountKey=`` value and URL userinfo password found in free text."""
    text = _USERINFO_IN_TEXT.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    return _SIG_IN_TEXT.sub(lambda m: f"{m.group(1)}={MASK}", text)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable / header name suggests its value is a secret."""
    return bool(_SECRET_NAME.search(name) or _CAMEL_KEY.search(name))


def redact_env_value(name: str, value: str) -> str:
    """The value of an environment variable as it may be shown: masked when it looks secret."""
    if is_secret_name(name):
        return MASK if value else value
    return redact_text(value)
