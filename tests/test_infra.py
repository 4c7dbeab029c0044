"""Smoke tests of the real test servers and the fixtures in conftest.py.

If one of these fails, the others' failures are probably the infrastructure's, not the agent's.
"""

from __future__ import annotations

import os
import stat
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from infra import Azurite, Registry


def blob_url(sas_url: str, blob: str) -> str:
    container, _, query = sas_url.partition("?")
    return f"{container}/{blob}?{query}"


@pytest.fixture
def containers(docker_client: Any) -> Iterator[list[Any]]:
    """Containers a test made; removed afterwards."""
    made: list[Any] = []
    yield made
    for container in made:
        container.remove(force=True)


def run(docker_client: Any, made: list[Any], image: str, command: list[str] | None = None,
        **kwargs: Any) -> tuple[int, str]:
    """create + start + wait, then the output (not containers.run(remove=True), which can lose it)."""
    container = docker_client.containers.create(image, command, network_mode="none", **kwargs)
    made.append(container)
    container.start()
    code = container.wait(timeout=60)["StatusCode"]
    return code, container.logs(stdout=True, stderr=True).decode()


def test_azurite_sas_round_trip_with_httpx(azurite: Azurite) -> None:
    name, sas_url = azurite.container()
    assert sas_url.startswith(f"{azurite.blob_url}/{name}?") and "sig=" in sas_url
    data = os.urandom(4096)
    with httpx.Client(timeout=30) as http:
        put = http.put(blob_url(sas_url, "in/a.bin"), content=data,
                       headers={"x-ms-blob-type": "BlockBlob", "Content-Length": str(len(data))})
        assert put.status_code == 201, put.text
        listing = http.get(sas_url + "&restype=container&comp=list&prefix=in/")
        assert listing.status_code == 200, listing.text
        assert [e.text for e in ET.fromstring(listing.content).iter("Name")] == ["in/a.bin"]
        got = http.get(blob_url(sas_url, "in/a.bin"))
        assert got.status_code == 200 and got.content == data

    assert azurite.list(name) == ["in/a.bin"]
    assert azurite.list(name, "out/") == []
    assert azurite.download(name, "in/a.bin") == data
    assert azurite.properties(name, "in/a.bin").size == len(data)
    azurite.upload(name, "out/b.txt", b"from the fixture")
    assert azurite.list(name, "out/") == ["out/b.txt"]


def test_azurite_sas_permissions_and_expiry(azurite: Azurite) -> None:
    _, read_only = azurite.container(permission="rl")
    _, expired = azurite.container(expiry_minutes=-5)
    headers = {"x-ms-blob-type": "BlockBlob", "Content-Length": "1"}
    with httpx.Client(timeout=30) as http:
        denied = http.put(blob_url(read_only, "x"), content=b"x", headers=headers)
        assert denied.status_code == 403
        assert denied.headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
        assert http.put(blob_url(expired, "x"), content=b"x", headers=headers).status_code == 403


def test_azurite_named_container_and_connection_string(azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    name = f"named-{uuid.uuid4().hex[:12]}"
    assert azurite.container(name)[0] == name
    assert azurite.container(name)[0] == name        # an existing name is reused
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        assert service.get_container_client(name).exists()


def test_docker_true_in_test_image(docker_client: Any, test_image: str, containers: list[Any]) -> None:
    assert run(docker_client, containers, test_image, ["true"]) == (0, "")
    assert run(docker_client, containers, test_image, ["sh", "-c", "exit 3"])[0] == 3


def test_test_image_users_and_tmp(docker_client: Any, test_image: str, containers: list[Any]) -> None:
    script = ('id -un; id -gn; echo "$HOME"; touch ~/x; '
              'id -u nobody; stat -c %a /tmp /var/tmp; cat /etc/localtest-origin')
    code, out = run(docker_client, containers, test_image, ["sh", "-c", script], user="1000:1000")
    assert (code, out.split()) == (0, ["taskuser", "taskuser", "/home/taskuser", "65534", "1777", "1777",
                                      "local"])


def test_entrypoint_image(docker_client: Any, entrypoint_image: str, containers: list[Any]) -> None:
    assert run(docker_client, containers, entrypoint_image) == (0, "from-entrypoint\n")
    assert run(docker_client, containers, entrypoint_image, ["x"]) == (0, "from-entrypoint x\n")
    assert run(docker_client, containers, entrypoint_image, entrypoint=["pwd"]) == (0, "/imagewd\n")


def test_registry_pull_with_auth(registry: Registry, docker_client: Any, containers: list[Any]) -> None:
    assert registry.server.startswith("127.0.0.1:") and registry.image.startswith(f"{registry.server}/")
    registry.remove_local(registry.image)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(registry.image)
    repo, _, tag = registry.image.rpartition(":")
    docker_client.images.pull(repo, tag=tag, auth_config=registry.auth_config)
    origin = run(docker_client, containers, registry.image, ["cat", "/etc/localtest-origin"])
    assert origin == (0, "registry\n")


def test_registry_refuses_wrong_or_no_password(registry: Registry, docker_client: Any) -> None:
    registry.remove_local(registry.image)
    repo, _, tag = registry.image.rpartition(":")
    with pytest.raises(docker.errors.APIError, match="unauthorized"):
        docker_client.images.pull(repo, tag=tag, auth_config={"username": registry.user, "password": "wrong"})
    with pytest.raises(docker.errors.APIError, match="no basic auth credentials"):
        docker_client.images.pull(repo, tag=tag)


def test_node_root_is_fresh_and_traversable(node_root: Path) -> None:
    assert node_root.is_dir() and not any(node_root.iterdir())
    assert stat.S_IMODE(node_root.stat().st_mode) == 0o755
    for parent in node_root.parents:
        assert parent.stat().st_mode & stat.S_IXOTH, f"{parent} is not traversable by others"
