"""The real servers the tests run against: a Docker engine, a private registry and Azurite.

``scripts/infra-up.sh`` starts them (idempotent, locked) and writes ``$INFRA_DIR/env.sh``;
this module checks that they answer, runs the script once if they don't, and wraps them in
small helper objects for the fixtures in ``conftest.py``. It never skips: a server that cannot
be brought up is an ``InfraError`` that fails every test needing it. Waiting is done by the
script (polling facts with deadlines), never by sleeping here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
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


# ---------------------------------------------------------------- offline-built Debian images
IMAGES_SH = REPO_ROOT / "scripts" / "images.sh"
DEBIAN_IMAGE = "localtest/debian-systemd:bookworm"
AGENT_IMAGE = "localtest/batch-agent:test"
IMAGES_TIMEOUT_S = 900  # a cold machine: apt-get install debootstrap + ~50 s of debootstrap


def ensure_debian_image() -> str:
    """``localtest/debian-systemd:bookworm`` (scripts/images.sh): built once, ~0.05 s when present."""
    done = subprocess.run(["bash", str(IMAGES_SH)], capture_output=True, text=True,
                          timeout=IMAGES_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False,
                          env={**os.environ, "INFRA_DIR": str(INFRA_DIR)})
    if done.returncode != 0:
        raise InfraError(f"{IMAGES_SH} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return DEBIAN_IMAGE


def _wheelhouse() -> Path:
    """The agent's dependencies (and setuptools, its build backend) as wheels, made by the host's
    pip (which reaches the package index; a build container cannot) and cached by pyproject.toml's
    hash, so the image builds with --network none."""
    stamp = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    house = INFRA_DIR / f"wheels-{stamp}"
    if not (house / ".complete").exists():
        tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=INFRA_DIR))
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp), str(REPO_ROOT),
                               "setuptools>=68"], capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, timeout=600)
        if done.returncode != 0:
            raise InfraError(f"pip wheel for the agent image failed:\n{done.stderr[-3000:]}")
        for own in tmp.glob("batch_agent-*.whl"):
            own.unlink()  # the image installs the agent from the build context, not from a wheel
        (tmp / ".complete").touch()
        with contextlib.suppress(OSError):
            tmp.rename(house)  # a concurrent session may have won: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return house


def build_agent_image(client: Any, base: str, tag: str = AGENT_IMAGE) -> str:
    """Build the repository's Dockerfile FROM ``base`` offline (no network in the build) and tag
    it. The context is what .dockerignore lets through (pyproject.toml, README.md, agent/) plus
    the wheelhouse; the dependency layer is cached by the engine across builds."""
    with tempfile.TemporaryDirectory(prefix="agent-ctx-") as ctx:
        root = Path(ctx)
        for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
            shutil.copy2(REPO_ROOT / name, root / name)
        shutil.copytree(REPO_ROOT / "agent", root / "agent",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for wheel in _wheelhouse().glob("*.whl"):
            shutil.copy2(wheel, root / wheel.name)
        try:
            client.images.build(path=ctx, tag=tag, rm=True, forcerm=True, network_mode="none",
                                buildargs={"BASE": base, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/src"})
        except docker.errors.BuildError as exc:
            log = "".join(str(c.get("stream") or c.get("error") or "") for c in exc.build_log)
            raise InfraError(f"docker build of the agent image failed: {exc}\n{log[-4000:]}") from exc
    return tag


# ---------------------------------------------------------------- systemd as PID 1 in a container
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target")
UNITS_IN_CONTAINER = "/opt/test-units"

@dataclass
class SystemdContainer:
    """A container running systemd as PID 1 (test-infra.md section 6), to test unit files for real.

    ``start`` runs ``image`` (one with /sbin/init: ``DEBIAN_IMAGE``, or the agent image built
    FROM it) with ``--network none``, /run on tmpfs and the host's cgroup tree, installs
    ``units`` (file name -> text; non-unit names such as a service's script are only copied)
    into /opt/test-units (a bind mount; units are `systemctl link`ed from there), and returns
    once ``systemctl is-system-running --wait`` answers. ``mounts`` adds host paths
    (host -> container path, read-only unless the container path ends in ``:rw``).
    """

    client: Any
    container: Any
    unit_dir: Path

    @classmethod
    def start(cls, client: Any, image: str, units: dict[str, str] | None = None, *,
              mounts: dict[str, str] | None = None, timeout: float = 60) -> SystemdContainer:
        unit_dir = Path(tempfile.mkdtemp(prefix="units-", dir=INFRA_DIR))
        for name, text in (units or {}).items():
            (unit_dir / name).write_text(text)
        volumes = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                   str(unit_dir): {"bind": UNITS_IN_CONTAINER, "mode": "ro"}}
        for host, inside in (mounts or {}).items():
            path, _, mode = inside.partition(":")
            volumes[host] = {"bind": path, "mode": mode or "ro"}
        container = client.containers.run(
            image, command=["/sbin/init"], entrypoint=[], detach=True, network_mode="none",
            tmpfs={"/run": "", "/run/lock": "", "/tmp": ""}, volumes=volumes,
            stop_signal="SIGRTMIN+3", labels={"org.batch-agent.test": "systemd"},
            name=f"sd-{uuid.uuid4().hex[:12]}",
        )
        box = cls(client, container, unit_dir)
        try:
            # systemctl fails ("Failed to connect to bus") until PID 1 has made its socket;
            # then --wait blocks until start-up is done.
            deadline = time.monotonic() + timeout
            while True:
                rc, out = box.exec("timeout", str(int(timeout)), "systemctl", "is-system-running", "--wait")
                if "Failed to connect" not in out or time.monotonic() > deadline:
                    break
                box.container.reload()
                if box.container.status != "running":
                    break
                time.sleep(0.02)  # polling interval between checks of a fact
            if out.strip() not in ("running", "degraded"):
                raise InfraError(f"systemd in {image} did not come up ({rc}: {out.strip()}):\n"
                                 f"{box.container.logs(tail=40).decode(errors='replace')}")
            for name in units or {}:  # linked from the mount; other files there (scripts) are not units
                if name.endswith(UNIT_SUFFIXES):
                    box.check("systemctl", "link", f"{UNITS_IN_CONTAINER}/{name}")
        except BaseException:
            box.remove()
            raise
        return box

    def exec(self, *argv: str, user: str = "root") -> tuple[int, str]:
        """Run ``argv`` in the container; (exit code, stdout + stderr)."""
        rc, out = self.container.exec_run(list(argv), user=user, demux=False)
        return rc, (out or b"").decode(errors="replace")

    def check(self, *argv: str) -> str:
        rc, out = self.exec(*argv)
        if rc != 0:
            raise AssertionError(f"{' '.join(argv)} exited {rc}:\n{out}")
        return out

    def systemctl(self, *args: str) -> str:
        return self.check("systemctl", *args)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show UNIT -p P...`` as a dict."""
        out = self.check("systemctl", "show", unit, *(f"-p{p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_show(self, unit: str, want: dict[str, str], timeout: float = 30) -> dict[str, str]:
        """Poll ``show`` until every property in ``want`` has its value (a fact, with a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.show(unit, *want)
            if all(got.get(k) == v for k, v in want.items()):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{unit}: wanted {want}, still {got} after {timeout}s\n"
                                     f"{self.journal(unit)}")
            time.sleep(0.05)  # polling interval between checks of a fact, not a wait for one

    def journal(self, unit: str) -> str:
        return self.exec("journalctl", "--no-pager", "-o", "cat", "-u", unit)[1]

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            self.container.remove(force=True)
        shutil.rmtree(self.unit_dir, ignore_errors=True)
