"""Task tokens (``authenticationTokenSettings``): issue and check ``AZ_BATCH_AUTHENTICATION_TOKEN``.

Owns: the token format and the node secret's file. The format: ``bat1.<payload>.<mac>``, the
payload base64url JSON ``{"job", "task", "iat", "exp", "nonce"}``, the MAC HMAC-SHA256 under a
node secret. The token names its job, so checking its scope needs no lookup; ``is_live`` lets the
service refuse tokens of tasks that have ended.

It lives below the API and the service (both use it: the service issues a token into a task's
environment, the API's ``HmacTaskTokens`` checks a Bearer header) so that neither imports the
other. Failures raise ``TokenRejected`` with a reason fit for a client; ``agent.api.auth`` turns
it into 403 ``AuthenticationFailed``.

The secret (32 random bytes) is kept in ``task-token.key``, mode 0600, in the agent's private
state directory (opened by ``agent.nodefs.open_trusted``, written with ``create_file``: no link
is followed), so tokens handed to running tasks stay valid across an agent restart. Must not:
log, print or put in an error message a token, a MAC or the secret.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from agent.errors import AgentError, ConfigError
from agent.nodefs import create_file, open_trusted
from agent.status import utcnow

PREFIX = "bat1"
_CONTEXT = b"batch-agent task token v1\n"
SECRET_FILE = "task-token.key"
SECRET_BYTES = 32


class TokenRejected(AgentError):
    """A Bearer token that is not valid here; the message is safe to show the client."""


@dataclass(frozen=True, slots=True)
class TaskClaims:
    job_id: str
    task_id: str
    issued: int
    expires: int | None
    nonce: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TaskTokens:
    """Issues and checks task tokens under a node-local secret."""

    def __init__(self, secret: bytes, *, clock: Callable[[], datetime] = utcnow,
                 is_live: Callable[[TaskClaims], bool] | None = None) -> None:
        if len(secret) < SECRET_BYTES:
            raise ConfigError("task token secret: use at least 32 random bytes")
        self._secret = secret
        self._clock = clock
        self._is_live = is_live

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"

    def _mac(self, payload: str) -> str:
        return _b64url(hmac.new(self._secret, _CONTEXT + payload.encode(), hashlib.sha256).digest())

    def issue(self, job_id: str, task_id: str, *, lifetime: timedelta | None = None) -> str:
        now = int(self._clock().timestamp())
        claims = {"job": job_id, "task": task_id, "iat": now,
                  "exp": now + int(lifetime.total_seconds()) if lifetime is not None else None,
                  "nonce": secrets.token_hex(8)}
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        return f"{PREFIX}.{payload}.{self._mac(payload)}"

    def claims(self, token: str) -> TaskClaims:
        """The claims of a valid, unexpired, live token; else ``TokenRejected``."""
        prefix, _, rest = token.strip().partition(".")
        payload, _, mac = rest.partition(".")
        if prefix != PREFIX or not payload or not mac:
            raise TokenRejected("the bearer token is not a batch-agent task token")
        if not hmac.compare_digest(self._mac(payload).encode(), mac.encode()):
            raise TokenRejected("the bearer token's signature is not valid")
        try:
            data = json.loads(_unb64url(payload))
            result = TaskClaims(str(data["job"]), str(data["task"]), int(data["iat"]),
                                None if data.get("exp") is None else int(data["exp"]), str(data.get("nonce", "")))
        except (ValueError, KeyError, TypeError):
            raise TokenRejected("the bearer token's payload cannot be read") from None
        if result.expires is not None and self._clock().timestamp() >= result.expires:
            raise TokenRejected("the bearer token has expired")
        if self._is_live is not None and not self._is_live(result):
            raise TokenRejected("the bearer token's task is no longer running")
        return result

    def with_liveness(self, is_live: Callable[[TaskClaims], bool]) -> TaskTokens:
        """The same secret, checking ``is_live`` too (the service's running tasks)."""
        return type(self)(self._secret, clock=self._clock, is_live=is_live)


def load_secret(state_dir: Path) -> bytes:
    """The node's token secret from ``state_dir/task-token.key``, created (0600) on first use."""
    fd = open_trusted(state_dir, "state directory")
    try:
        with contextlib.suppress(FileNotFoundError):
            sfd = os.open(SECRET_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            with open(sfd, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
            if st.st_mode & 0o077 or st.st_uid != os.geteuid():
                raise ConfigError(f"{state_dir / SECRET_FILE}: must be mode 0600 and owned by the agent; "
                                  f"fix: chmod 600 it (or delete it: running tasks' tokens then stop working)")
            if len(data) >= SECRET_BYTES:
                return data
        data = secrets.token_bytes(SECRET_BYTES)
        tmp = SECRET_FILE + ".tmp"
        wfd = create_file(fd, tmp, 0o600)
        with open(wfd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, SECRET_FILE, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
        return data
    finally:
        os.close(fd)
