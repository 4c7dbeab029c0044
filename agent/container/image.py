"""The container image on the node (§8.2): used as it is when present, else pulled.

Owns: the local-image check, the registry login and the streamed pull with per-pull
credentials, their retries, and turning every engine / registry error into a failure value with
a §8.2 code. Must not: store credentials (the login is the engine's ``/auth`` check only, made
without docker-py's ``login``, which would keep the password in the shared client for later
pulls; the pull takes the credentials as its own ``auth_config``; nothing goes to
``~/.docker``), create containers, or let the registry password reach a message, a log or an
exception (``scrub``).

Order, as Batch does it (§8.2: "Login is retried on throttling"): a present image is used with
no login; else, with credentials, the login; then the pull. Login and pull are each retried on
throttling and transient errors (``transient``: 429 / toomanyrequests, HTTP 5xx, connection
reset, unexpected EOF, TLS handshake timeout), ``PullRetry.attempts`` tries with a doubling,
jittered, capped wait; never on 401 / 403 (wrong credentials do not get better, and retrying
them can lock an account). A wait ends at once when ``cancel`` is set (the wall clock expired):
the pull runs in a daemon thread that must not go on for long after its task.

Engine facts (dockerd 20.10, measured with a fault-injecting proxy in front of the test
registry, ``tests/faultproxy.py``): the engine reports a registry error as text in an HTTP 500;
a 429 with the registry's JSON error body reads ``toomanyrequests: ...``, a bare 5xx
``received unexpected HTTP status: 503 Service Unavailable``, a reset ``read: connection reset
by peer``. The engine itself retries layer (blob) downloads, not the ping, login or manifest.
A throttled ``GET /v2/`` ping makes the engine go on without the auth challenge, so the
registry then answers 401: that case reads as wrong credentials and is not retried (the text
cannot tell the two apart).

Error codes, from the engine's message:

    ContainerInvalidRegistry   unauthorized / authentication required / no basic auth
                               credentials / status 401 / denied with credentials given: the
                               login failed
    ContainerInvalidImage      manifest or repository unknown, no such host, connection refused,
                               invalid reference: no image to be had
    ContainerMiscError         still throttled or transient after the retries; anything else
                               (engine down, disk full, ...)
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.container.build import split_image
from agent.redact import MASK, redact_text
from agent.status import FailureInfo, NameValue

_UNAUTHORIZED = re.compile(r"unauthorized|authentication required|no basic auth credentials|"
                           r"incorrect username or password|\b401\b", re.IGNORECASE)
_DENIED = re.compile(r"denied|forbidden|\b403\b", re.IGNORECASE)
_NO_IMAGE = re.compile(r"manifest unknown|not found|does not exist|name unknown|no such host|"
                       r"connection refused|dial tcp|i/o timeout|invalid reference|no such image|"
                       r"server misbehaving|network is unreachable|repository name", re.IGNORECASE)
_TRANSIENT = re.compile(r"toomanyrequests|too many requests|\b429\b|status: 5\d\d\b|"
                        r"\b5\d\d (?:internal server error|bad gateway|service unavailable|gateway timeout)|"
                        r"connection reset|unexpected EOF|TLS handshake timeout", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """``containerSettings.registry`` credentials; the password never shows in a repr."""

    server: str
    username: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "serveraddress": self.server}


@dataclass(frozen=True, slots=True)
class PullRetry:
    """How often login and pull are tried on throttling / transient errors, and the waits
    between: ``backoff`` seconds after the first failure, doubling, at most ``max_delay``, each
    wait a random 50-100 % of that (nodes throttled together do not come back together). The
    defaults try 5 times with at most 15 s of waiting in all; ``backoff=0`` in tests."""

    attempts: int = 5
    backoff: float = 1.0
    max_delay: float = 16.0

    def ceiling(self, failures: int) -> float:
        """The longest wait after the ``failures``-th failed try (1-based)."""
        return min(self.max_delay, self.backoff * 2.0 ** min(max(failures, 1) - 1, 32))

    def delay(self, failures: int) -> float:
        return self.ceiling(failures) * random.uniform(0.5, 1.0)


def transient(message: str) -> bool:
    """A throttling / transient registry error, worth another try; never a 401 / 403."""
    return bool(_TRANSIENT.search(message)) and not _UNAUTHORIZED.search(message) \
        and not _DENIED.search(message)


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` safe to show: ``redact_text`` plus every given secret masked literally."""
    out = redact_text(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, MASK)
    return out


def classify(message: str, image: str, auth: RegistryAuth | None, attempts: int = 1) -> FailureInfo:
    """An engine / registry error message -> the failure value (password scrubbed). ``attempts``,
    the tries made, shows in the details when there was more than one."""
    failure = _classify(scrub(message, auth.password if auth else None), image, auth)
    if attempts > 1:
        failure = replace(failure, details=(*failure.details, NameValue("Attempts", str(attempts))))
    return failure


def _classify(text: str, image: str, auth: RegistryAuth | None) -> FailureInfo:
    if _UNAUTHORIZED.search(text) or (auth is not None and _DENIED.search(text)):
        server = auth.server if auth else "the image's registry"
        return FailureInfo.user(
            "ContainerInvalidRegistry",
            f"The container registry {server} refused the credentials: check registry.username and "
            "registry.password", Message=text, ImageName=image)
    if not transient(text) and (_NO_IMAGE.search(text) or _DENIED.search(text)):
        return FailureInfo.user(
            "ContainerInvalidImage",
            f"The container image {image} is not on the node and could not be pulled from its registry",
            Message=text, ImageName=image)
    return FailureInfo.server("ContainerMiscError", f"The container image {image} could not be prepared",
                              Message=text, ImageName=image)


def ensure_image(client: Any, image: str, auth: RegistryAuth | None, log: Any = None, *,
                 retry: PullRetry | None = None, cancel: threading.Event | None = None) -> bool | FailureInfo:
    """Make ``image`` present: False when it already was (no login, no pull), True after a pull.

    Blocks (run it in a worker thread). ``client`` is a ``docker.DockerClient``. ``cancel``, once
    set, ends a retry wait at once and the last failure is returned.
    """
    from docker.errors import DockerException, ImageNotFound

    try:
        client.api.inspect_image(image)
        return False
    except ImageNotFound:
        pass
    except DockerException as exc:
        return classify(str(exc), image, auth)
    retry = retry or PullRetry()
    stop = cancel or threading.Event()
    if auth is not None:
        failure = _retrying(lambda: _login(client, auth, image), "registry login", image, auth, retry, stop, log)
        if failure is not None:
            return failure
    failure = _retrying(lambda: _pull(client, image, auth, log), "image pull", image, auth, retry, stop, log)
    return failure if failure is not None else True


def _retrying(step: Callable[[], str | FailureInfo | None], what: str, image: str, auth: RegistryAuth | None,
              retry: PullRetry, stop: threading.Event, log: Any) -> FailureInfo | None:
    """Run ``step`` (None on success, else the engine's error text or a finished failure) until
    it succeeds, fails for good, runs out of tries or is cancelled."""
    tries = max(1, retry.attempts)
    attempt = 0
    while True:
        attempt += 1
        error = step()
        if error is None or isinstance(error, FailureInfo):
            return error
        if attempt >= tries or not transient(error):
            return classify(error, image, auth, attempt)
        delay = retry.delay(attempt)
        if log is not None:
            log.info("registry call retried", step=what, image=image, attempt=attempt, delay=round(delay, 2),
                     error=scrub(error, auth.password if auth else None))
        if stop.wait(delay):
            return classify(error, image, auth, attempt)


def _login(client: Any, auth: RegistryAuth, image: str) -> str | FailureInfo | None:
    """The engine checks the credentials with the registry (``POST /auth``) and keeps nothing.
    docker-py's ``login`` is not used: it would keep them in the shared client (see above);
    ``_post_json``, ``_url`` and ``_raise_for_status`` are the private helpers it is built on."""

    def call() -> str | None:
        client.api._raise_for_status(client.api._post_json(client.api._url("/auth"), data=auth.auth_config()))
        return None

    return _engine_call(call, image, auth)


def _pull(client: Any, image: str, auth: RegistryAuth | None, log: Any) -> str | FailureInfo | None:
    repository, tag = split_image(image)
    kwargs: dict[str, Any] = {"auth_config": auth.auth_config()} if auth else {}

    def call() -> str | None:
        for event in client.api.pull(repository, tag=tag, stream=True, decode=True, **kwargs):
            if isinstance(event, dict) and event.get("error"):
                return str(event["error"])
            if log is not None and isinstance(event, dict) and event.get("status"):
                log.debug("image pull", image=image, status=event["status"], layer=event.get("id"))
        client.api.inspect_image(image)
        return None

    return _engine_call(call, image, auth)


def _engine_call(call: Callable[[], str | None], image: str, auth: RegistryAuth | None) -> str | FailureInfo | None:
    """Run ``call`` against the engine: None when it worked, the engine's (or registry's) message
    when it refused, a ``FailureInfo`` when the engine itself could not be talked to."""
    from docker.errors import APIError, DockerException

    try:
        return call()
    except APIError as exc:
        return str(exc.explanation or exc)
    except DockerException as exc:
        return str(exc)
    except Exception as exc:  # requests / socket errors talking to the engine or of the pull stream
        return _engine_failure(exc, image, auth)


def _engine_failure(exc: Exception, image: str, auth: RegistryAuth | None) -> FailureInfo:
    message = scrub(f"{type(exc).__name__}: {exc}", auth.password if auth else None)
    return FailureInfo.server("ContainerMiscError", f"The container image {image} could not be pulled",
                              Message=message, ImageName=image)
