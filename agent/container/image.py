"""The container image on the node (§8.2): used as it is when present, else pulled.

Owns: the local-image check, the streamed pull with per-pull credentials, and turning every
engine / registry error into a failure value with a §8.2 code. Must not: log in globally (the
credentials go with the one pull as ``auth_config``; nothing is stored in the client or in
``~/.docker``), create containers, or let the registry password reach a message, a log or an
exception (``scrub``).

Error codes, from the engine's message (the engine reports registry errors as text):

    ContainerInvalidRegistry   unauthorized / authentication required / no basic auth
                               credentials / denied with credentials given: the login failed
    ContainerInvalidImage      manifest or repository unknown, no such host, connection refused,
                               invalid reference: no image to be had
    ContainerMiscError         anything else (engine down, disk full, ...)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.container.build import split_image
from agent.redact import MASK, redact_text
from agent.status import FailureInfo

_UNAUTHORIZED = re.compile(r"unauthorized|authentication required|no basic auth credentials|"
                           r"incorrect username or password|401", re.IGNORECASE)
_DENIED = re.compile(r"denied|forbidden", re.IGNORECASE)
_NO_IMAGE = re.compile(r"manifest unknown|not found|does not exist|name unknown|no such host|"
                       r"connection refused|dial tcp|i/o timeout|invalid reference|no such image|"
                       r"server misbehaving|network is unreachable|repository name", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """``containerSettings.registry`` credentials; the password never shows in a repr."""

    server: str
    username: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "serveraddress": self.server}


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` safe to show: ``redact_text`` plus every given secret masked literally."""
    out = redact_text(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, MASK)
    return out


def classify(message: str, image: str, auth: RegistryAuth | None) -> FailureInfo:
    """An engine / registry error message -> the failure value (password scrubbed)."""
    text = scrub(message, auth.password if auth else None)
    if _UNAUTHORIZED.search(text) or (auth is not None and _DENIED.search(text)):
        server = auth.server if auth else "the image's registry"
        return FailureInfo.user(
            "ContainerInvalidRegistry",
            f"The container registry {server} refused the credentials: check registry.username and "
            "registry.password", Message=text, ImageName=image)
    if _NO_IMAGE.search(text) or _DENIED.search(text):
        return FailureInfo.user(
            "ContainerInvalidImage",
            f"The container image {image} is not on the node and could not be pulled from its registry",
            Message=text, ImageName=image)
    return FailureInfo.server("ContainerMiscError", f"The container image {image} could not be prepared",
                              Message=text, ImageName=image)


def ensure_image(client: Any, image: str, auth: RegistryAuth | None, log: Any = None) -> bool | FailureInfo:
    """Make ``image`` present: False when it already was (no pull), True after a pull.

    Blocks (run it in a worker thread). ``client`` is a ``docker.DockerClient``.
    """
    from docker.errors import APIError, DockerException, ImageNotFound

    try:
        client.api.inspect_image(image)
        return False
    except ImageNotFound:
        pass
    except DockerException as exc:
        return classify(str(exc), image, auth)
    repository, tag = split_image(image)
    kwargs: dict[str, Any] = {"auth_config": auth.auth_config()} if auth else {}
    try:
        for event in client.api.pull(repository, tag=tag, stream=True, decode=True, **kwargs):
            if isinstance(event, dict) and event.get("error"):
                return classify(str(event["error"]), image, auth)
            if log is not None and isinstance(event, dict) and event.get("status"):
                log.debug("image pull", image=image, status=event["status"], layer=event.get("id"))
        client.api.inspect_image(image)
    except APIError as exc:
        return classify(str(exc.explanation or exc), image, auth)
    except DockerException as exc:
        return classify(str(exc), image, auth)
    except Exception as exc:  # requests / socket errors of the pull stream
        message = scrub(f"{type(exc).__name__}: {exc}", auth.password if auth else None)
        return FailureInfo.server("ContainerMiscError", f"The container image {image} could not be pulled",
                                  Message=message, ImageName=image)
    return True
