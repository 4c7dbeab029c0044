"""Images for container tasks on the real engine and the local registry (basic auth, 127.0.0.1:5000).

A pull is real: the registry image's layers are not in the engine once its tag is removed
(``registry.remove_local``). No test reaches Docker Hub: the engine fails at once on its name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_container_run import Node, node_for

from agent.container.image import RegistryAuth, classify, ensure_image, scrub
from agent.redact import MASK

pytestmark = pytest.mark.docker

WRONG_PASSWORD = "Wr0ng-Pa55-q7Zx"


@pytest.fixture
def node(node_root: Path, docker_client: Any, test_image: str) -> Iterator[Node]:
    yield from node_for(node_root, docker_client, test_image)


def everything(ran: Any) -> str:
    return json.dumps(ran.outcome.status.to_json()) + ran.stdout + ran.stderr


def test_present_image_is_not_pulled(docker_client: Any, test_image: str) -> None:
    assert ensure_image(docker_client, test_image, None) is False


async def test_private_registry_pull_with_credentials(node: Node, registry: Any) -> None:
    registry.remove_local(registry.image)
    ran = await node.run({"commandLine": "cat /etc/localtest-origin"}, imageName=registry.image,
                         registry={"registryServer": registry.server, "username": registry.user,
                                   "password": registry.password})
    assert ran.info["exitCode"] == 0, ran.info
    assert ran.stdout == "registry\n"            # the registry's own image, so it was pulled
    node.client.api.inspect_image(registry.image)


def test_pull_without_tag_gets_latest_and_fails_cleanly(docker_client: Any, registry: Any) -> None:
    # test/busybox has no :latest: the registry says "manifest unknown".
    image = registry.image.rsplit(":", 1)[0] + ":latest"
    auth = RegistryAuth(registry.server, registry.user, registry.password)
    failure = ensure_image(docker_client, image, auth)
    assert not isinstance(failure, bool)
    assert failure.code == "ContainerInvalidImage", failure


async def test_wrong_password_is_invalid_registry_and_never_shown(node: Node, registry: Any) -> None:
    registry.remove_local(registry.image)
    ran = await node.run({"commandLine": "true"}, imageName=registry.image,
                         registry={"registryServer": registry.server, "username": registry.user,
                                   "password": WRONG_PASSWORD})
    failure = ran.info["failureInfo"]
    assert failure["code"] == "ContainerInvalidRegistry" and failure["category"] == "usererror"
    assert "exitCode" not in ran.info
    assert "unauthorized" in json.dumps(failure).lower()
    assert WRONG_PASSWORD not in everything(ran)


@pytest.mark.parametrize("image", ["no-such-image-batch-agent-test", "127.0.0.1:1/nothing/here:1"])
async def test_missing_image_without_reachable_registry(node: Node, image: str) -> None:
    ran = await node.run({"commandLine": "true"}, imageName=image)
    failure = ran.info["failureInfo"]
    assert failure["code"] == "ContainerInvalidImage", failure
    assert "exitCode" not in ran.info
    assert any(d["name"] == "Message" and d["value"] for d in failure["details"])


async def test_identity_reference_is_not_supported_here(node: Node) -> None:
    registry = {"registryServer": "x.azurecr.io", "identityReference": {"resourceId": "/id"}}
    ran = await node.run({"commandLine": "true"}, registry=registry)
    failure = ran.info["failureInfo"]
    assert failure["code"] == "TaskFeatureNotSupported"
    assert "identityReference" in failure["message"] and "not supported here" in failure["message"]


@pytest.mark.parametrize(("message", "code"), [
    ("unauthorized: authentication required", "ContainerInvalidRegistry"),
    ("Get http://r/v2/: no basic auth credentials", "ContainerInvalidRegistry"),
    ("manifest for r/x:1 not found: manifest unknown", "ContainerInvalidImage"),
    ("Get https://registry-1.docker.io/v2/: dial tcp: lookup registry-1.docker.io: no such host",
     "ContainerInvalidImage"),
    ("pull access denied for x, repository does not exist or may require 'docker login'",
     "ContainerInvalidImage"),
    ("write /var/lib/docker/tmp: no space left on device", "ContainerMiscError"),
])
def test_classify(message: str, code: str) -> None:
    assert classify(message, "img:1", None).code == code


def test_denied_with_credentials_is_the_registry_and_the_password_is_scrubbed() -> None:
    auth = RegistryAuth("r.example", "me", "p@ss-w0rd")
    failure = classify("denied: requested access to the resource is denied (p@ss-w0rd)", "img:1", auth)
    assert failure.code == "ContainerInvalidRegistry"
    assert "p@ss-w0rd" not in json.dumps(failure.to_json()) and MASK in json.dumps(failure.to_json())
    assert "p@ss-w0rd" not in repr(auth)
    assert scrub("x sig=abc&y p@ss-w0rd", auth.password) == f"x sig={MASK}&y {MASK}"
