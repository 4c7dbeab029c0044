"""Shared fixtures: the real servers (session scope) and a fresh node root per test.

Servers come from ``scripts/infra-up.sh`` (see ``tests/infra.py``). When any collected test
uses a server fixture, the servers are checked, and brought up if needed, once before the first
test runs, outside every test's timeout. If that fails, each test needing a server fails with
the script's output; nothing is skipped.

Fixtures:
    infra            session  Infra(env=<env.sh values>, how=...)
    azurite          session  tests.infra.Azurite: .account .key .blob_url .connection_string,
                              .container(name=None, permission="racwdl", expiry_minutes=60,
                              *, expiry=None) -> (name, sas_url), .upload, .list, .download,
                              .properties, .service (BlobServiceClient with the account key)
    docker_client    session  docker.DockerClient (from_env)
    test_image       session  "localtest/busybox:full"
    entrypoint_image session  "localtest/busybox:entrypoint" (ENTRYPOINT echo from-entrypoint,
                              WORKDIR /imagewd)
    registry         session  tests.infra.Registry: .server .user .password .image
                              .auth_config, .remove_local(ref)
    debian_image     session  "localtest/debian-systemd:bookworm" (built on first use)
    agent_image      session  the Dockerfile built offline FROM debian_image
    node_root        function a fresh 0755 directory under /tmp/batch-agent-tests, removed after
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from infra import Azurite, Infra, InfraError, Registry, build_agent_image, ensure_debian_image, ensure_infra

# Hypothesis: CI (CI=true) replays the same examples every run, so a landing is judged on the code
# and not on a draw; a developer's run explores new inputs (and keeps failures in .hypothesis/).
# HYPOTHESIS_PROFILE=explore in CI, or =ci locally, switches.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "explore"))

NODE_ROOT_BASE = Path(os.environ.get("BATCH_AGENT_TEST_ROOT", "/tmp/batch-agent-tests"))

# fixture -> marker added to every test using it (directly or through another fixture)
SERVER_MARKERS = {
    "azurite": "azurite",
    "docker_client": "docker",
    "test_image": "docker",
    "entrypoint_image": "docker",
    "registry": "docker",
    "debian_image": "docker",
    "agent_image": "docker",
}

_infra: Infra | InfraError | None = None


def _get_infra() -> Infra:
    global _infra
    if _infra is None:
        try:
            _infra = ensure_infra()
        except InfraError as exc:
            _infra = exc
    if isinstance(_infra, InfraError):
        pytest.fail(f"test servers unavailable: {_infra}", pytrace=False)
    return _infra


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = getattr(item, "fixturenames", ())
        for marker in sorted({m for f, m in SERVER_MARKERS.items() if f in used}):
            item.add_marker(marker)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Bring the servers up before the first test, if any selected test needs one."""
    global _infra
    if session.config.option.collectonly or _infra is not None:
        return
    if not any(f in SERVER_MARKERS or f == "infra" for item in session.items
               for f in getattr(item, "fixturenames", ())):
        return
    try:
        _infra = ensure_infra()
        line = f"test servers: {_infra.how}"
    except InfraError as exc:
        _infra = exc
        line = f"test servers: FAILED, tests that need them will fail:\n{exc}"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


@pytest.fixture(scope="session")
def infra() -> Infra:
    return _get_infra()


@pytest.fixture(scope="session")
def azurite(infra: Infra) -> Iterator[Azurite]:
    server = Azurite.from_env(infra.env)
    yield server
    server.close()


@pytest.fixture(scope="session")
def docker_client(infra: Infra) -> Iterator[Any]:
    import docker

    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(infra: Infra) -> str:
    return infra.env["TEST_IMAGE"]


@pytest.fixture(scope="session")
def entrypoint_image(infra: Infra) -> str:
    return infra.env["TEST_ENTRYPOINT_IMAGE"]


@pytest.fixture(scope="session")
def registry(infra: Infra, docker_client: Any) -> Registry:
    return Registry.from_env(infra.env, docker_client)


@pytest.fixture(scope="session")
def debian_image(infra: Infra) -> str:
    """localtest/debian-systemd:bookworm (scripts/images.sh): systemd as /sbin/init, python3.
    Built on first use (~50 s on a fresh machine, then cached by its recipe stamp)."""
    try:
        return ensure_debian_image()
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def agent_image(debian_image: str, docker_client: Any) -> str:
    """The repository's Dockerfile built offline FROM debian_image (localtest/batch-agent:test)."""
    try:
        return build_agent_image(docker_client, debian_image)
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def node_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh node root that unprivileged task users can traverse: pytest's tmp_path sits
    under 0700 directories, so this lives under a 0755 base in /tmp instead."""
    NODE_ROOT_BASE.mkdir(mode=0o755, exist_ok=True)
    if NODE_ROOT_BASE.stat().st_uid == os.geteuid():
        NODE_ROOT_BASE.chmod(0o755)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:40]
    root = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=NODE_ROOT_BASE))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)
