"""The real servers the tests run against: a Docker engine, a private registry and Azurite.

``scripts/infra-up.sh`` starts them (idempotent, locked) and writes ``$INFRA_DIR/env.sh``;
this module checks that they answer, runs the script once if they don't, and wraps them in
small helper objects for the fixtures in ``conftest.py``. It never skips: a server that cannot
be brought up is an ``InfraError`` that fails every test needing it. Waiting is done by the
script (polling facts with deadlines), never by sleeping here.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import httpx
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobProperties,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA_UP = REPO_ROOT / "scripts" / "infra-up.sh"
INFRA_DIR = Path(os.environ.get("INFRA_DIR", "/tmp/batch-agent-infra"))
ENV_FILE = INFRA_DIR / "env.sh"
INFRA_UP_TIMEOUT_S = 900  # a cold machine: apt + npm downloads, measured ~25 s here

ENV_KEYS = (
    "AZURITE_ACCOUNT", "AZURITE_KEY", "AZURITE_BLOB_URL", "AZURITE_CONNECTION_STRING",
    "TEST_REGISTRY", "TEST_REGISTRY_USER", "TEST_REGISTRY_PASSWORD",
    "TEST_IMAGE", "TEST_ENTRYPOINT_IMAGE", "TEST_REGISTRY_IMAGE",
)


class InfraError(Exception):
    """The test servers could not be brought up; the message says what and where the logs are."""


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """The ``export K='v'`` lines infra-up.sh writes, parsed without running a shell."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] != ["export"]:
            continue
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if sep:
                values[key] = value
    return values


def problems() -> list[str]:
    """What is not (yet) answering as infra-up.sh leaves it; empty when everything is up."""
    try:
        env = read_env_file()
    except OSError as exc:
        return [f"no {ENV_FILE} ({exc.strerror})"]
    missing = [k for k in ENV_KEYS if k not in env]
    if missing:
        return [f"{ENV_FILE} lacks {', '.join(missing)}"]
    found: list[str] = []
    with httpx.Client(timeout=3) as http:
        def status(url: str, **kw: Any) -> int:
            try:
                return http.get(url, **kw).status_code
            except httpx.HTTPError:
                return 0

        if status(f"{env['AZURITE_BLOB_URL']}?comp=list") != 403:
            found.append(f"Azurite blob does not answer at {env['AZURITE_BLOB_URL']}")
        registry = f"http://{env['TEST_REGISTRY']}"
        creds = (env["TEST_REGISTRY_USER"], env["TEST_REGISTRY_PASSWORD"])
        if status(f"{registry}/v2/") != 401 or status(f"{registry}/v2/", auth=creds) != 200:
            found.append(f"the registry does not answer with basic auth at {registry}")
        else:
            repo, _, tag = env["TEST_REGISTRY_IMAGE"].partition("/")[2].rpartition(":")
            accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
            if status(f"{registry}/v2/{repo}/manifests/{tag}", auth=creds, headers=accept) != 200:
                found.append(f"the registry lacks {env['TEST_REGISTRY_IMAGE']}")
    try:
        client = docker.from_env(timeout=10)
    except docker.errors.DockerException as exc:
        return [*found, f"no Docker engine answers ({exc})"]
    try:
        for image in (env["TEST_IMAGE"], env["TEST_ENTRYPOINT_IMAGE"]):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                found.append(f"image {image} is missing")
            except docker.errors.DockerException as exc:
                found.append(f"the Docker engine fails: {exc}")
                break
    finally:
        client.close()
    return found


@dataclass(frozen=True, slots=True)
class Infra:
    """The env.sh values and how they came to be up (for the session header)."""

    env: dict[str, str]
    how: str


def ensure_infra() -> Infra:
    """Return the servers' addresses, running infra-up.sh first if any of them is not answering."""
    try:
        return _ensure_infra()
    except InfraError:
        raise
    except Exception as exc:  # a broken check must fail the tests that need servers, not the session
        raise InfraError(f"checking the test servers failed: {exc!r}") from exc


def _ensure_infra() -> Infra:
    before = problems()
    if not before:
        return Infra(read_env_file(), "already up")
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(INFRA_UP)], capture_output=True, text=True, timeout=INFRA_UP_TIMEOUT_S,
            env={**os.environ, "INFRA_DIR": str(INFRA_DIR)}, stdin=subprocess.DEVNULL, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InfraError(
            f"{INFRA_UP} did not finish in {INFRA_UP_TIMEOUT_S}s; logs in {INFRA_DIR}/logs"
        ) from exc
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise InfraError(
            f"{INFRA_UP} failed (exit {done.returncode}); it ran because: {'; '.join(before)}\n{tail}"
        )
    after = problems()
    if after:
        raise InfraError(f"{INFRA_UP} succeeded but still: {'; '.join(after)}\n{output}")
    return Infra(read_env_file(), f"started by scripts/infra-up.sh in {time.monotonic() - t0:.1f}s")


@dataclass
class Azurite:
    """Azurite's blob service, driven with the account key (the SDK), for arranging and checking."""

    account: str
    key: str
    blob_url: str
    connection_string: str
    _created: list[str] = field(default_factory=list, repr=False)
    _service: BlobServiceClient | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Azurite:
        return cls(env["AZURITE_ACCOUNT"], env["AZURITE_KEY"], env["AZURITE_BLOB_URL"],
                   env["AZURITE_CONNECTION_STRING"])

    @property
    def service(self) -> BlobServiceClient:
        if self._service is None:
            self._service = BlobServiceClient(
                self.blob_url, credential={"account_name": self.account, "account_key": self.key}
            )
        return self._service

    def container(self, name: str | None = None, permission: str = "racwdl",
                  expiry_minutes: int = 60, *, expiry: datetime | None = None) -> tuple[str, str]:
        """Create a container (a fresh unique name unless ``name`` is given; an existing
        ``name`` is reused) and return ``(name, "{blob_url}/{name}?{sas}")``. The SAS expires
        at ``expiry`` if given, else in ``expiry_minutes`` (negative: already expired)."""
        given = name is not None
        name = name or f"t-{uuid.uuid4().hex}"
        try:
            self.service.create_container(name)
            self._created.append(name)
        except ResourceExistsError:
            if not given:
                raise
        sas = generate_container_sas(
            self.account, name, account_key=self.key,
            permission=ContainerSasPermissions.from_string(permission),
            expiry=expiry or datetime.now(UTC) + timedelta(minutes=expiry_minutes),
        )
        return name, f"{self.blob_url}/{name}?{sas}"

    def upload(self, container_name: str, blob_name: str, data: bytes) -> None:
        self.service.get_blob_client(container_name, blob_name).upload_blob(data, overwrite=True)

    def list(self, container_name: str, prefix: str = "") -> list[str]:
        blobs = self.service.get_container_client(container_name).list_blobs(name_starts_with=prefix or None)
        return [b.name for b in blobs]

    def download(self, container_name: str, blob_name: str) -> bytes:
        data: bytes = self.service.get_blob_client(container_name, blob_name).download_blob().readall()
        return data

    def properties(self, container_name: str, blob_name: str) -> BlobProperties:
        return self.service.get_blob_client(container_name, blob_name).get_blob_properties()

    def close(self) -> None:
        """Delete the containers this object created (best effort) and close the client."""
        if self._service is None:
            return
        for name in self._created:
            with contextlib.suppress(ResourceNotFoundError):
                self._service.delete_container(name)
        self._created.clear()
        self._service.close()
        self._service = None


@dataclass
class Registry:
    """The private registry on 127.0.0.1 (basic auth) and the image pushed to it."""

    server: str
    user: str
    password: str
    image: str
    client: Any = field(repr=False)  # docker.DockerClient

    @classmethod
    def from_env(cls, env: dict[str, str], client: Any) -> Registry:
        return cls(env["TEST_REGISTRY"], env["TEST_REGISTRY_USER"], env["TEST_REGISTRY_PASSWORD"],
                   env["TEST_REGISTRY_IMAGE"], client)

    @property
    def auth_config(self) -> dict[str, str]:
        """For ``client.images.pull(ref, auth_config=...)``."""
        return {"username": self.user, "password": self.password}

    def remove_local(self, ref: str) -> None:
        """Untag ``ref`` in the engine so the next use pulls it for real. The registry image has
        no other local tag, so its image and layer go too (unless a container still uses it).
        The engine is shared by concurrent test sessions: a test that pulls must not rely on
        the image staying local after its own use."""
        with contextlib.suppress(docker.errors.ImageNotFound):
            self.client.images.remove(ref, force=True)
