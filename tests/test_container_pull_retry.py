"""Registry login and pull retries (§8.2: "Login is retried on throttling") on the real engine.

The engine pulls through ``tests/faultproxy.py``, a proxy on 127.0.0.1:0 in front of the test
registry that answers chosen requests with 429 / 5xx / a TCP reset and forwards the rest: the
engine, the registry and its basic auth are real, only the faults are made. Retries wait 0 s
here (``PullRetry(backoff=0)``); the one test of the waits sets ``cancel`` instead of timing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from faultproxy import FaultProxy, fault_proxy
from test_container_run import Node, node_for

from agent.container.image import PullRetry, RegistryAuth, classify, ensure_image, transient

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

WRONG_PASSWORD = "Retry-Wr0ng-Pa55-x8Qw"


@pytest.fixture
def proxy(registry: Any) -> Iterator[FaultProxy]:
    with fault_proxy(registry.server) as p:
        yield p
        registry.remove_local(image_via(p, registry))


def image_via(proxy: FaultProxy, registry: Any) -> str:
    """The registry's test image, named through the proxy (so the engine pulls through it)."""
    return proxy.address + registry.image[len(registry.server):]


@pytest.fixture
def node(node_root: Path, docker_client: Any, test_image: str) -> Iterator[Node]:
    yield from node_for(node_root, docker_client, test_image, retry=PullRetry(attempts=5, backoff=0.0))


async def run_via(node: Node, proxy: FaultProxy, registry: Any, password: str | None = None) -> Any:
    return await node.run({"commandLine": "cat /etc/localtest-origin"}, imageName=image_via(proxy, registry),
                          registry={"registryServer": proxy.address, "username": registry.user,
                                    "password": password or registry.password})


async def test_throttled_manifest_is_retried_then_pulled(node: Node, proxy: FaultProxy, registry: Any) -> None:
    proxy.inject(429, 429, 429, 429, where="/manifests/")       # one pull tries HEAD then GET
    with structlog.testing.capture_logs() as logs:
        ran = await run_via(node, proxy, registry)
    assert ran.info["exitCode"] == 0, ran.info
    assert ran.stdout == "registry\n"
    assert proxy.injected() == 4 and proxy.count("HEAD /v2/test/busybox/manifests/full") == 3
    retries = [e for e in logs if e["event"] == "registry call retried"]
    assert [e["attempt"] for e in retries] == [1, 2] and all(e["step"] == "image pull" for e in retries)
    assert "toomanyrequests" in retries[0]["error"]


async def test_5xx_and_connection_reset_are_retried(node: Node, proxy: FaultProxy, registry: Any) -> None:
    proxy.inject(503, 502, "reset", where="/manifests/")
    ran = await run_via(node, proxy, registry)
    assert ran.info["exitCode"] == 0, ran.info
    assert proxy.injected() == 3 and proxy.count("HEAD /v2/test/busybox/manifests/full") == 3


@pytest.mark.parametrize("fault", [429, 503, "reset"])
async def test_login_is_retried(node: Node, proxy: FaultProxy, registry: Any, fault: int | str) -> None:
    # The login is the engine's ping (GET /v2/) then the credentials check (GET /v2/ again).
    # A fault on the check is a failed login; a reset on the ping is one too (the engine cannot
    # go on). A throttled ping is left out: the engine then skips the challenge and the registry
    # says 401, which reads as a wrong password (see agent.container.image).
    faults = ("pass", fault) if fault != "reset" else (fault,)
    proxy.inject(*faults, where="GET /v2/ ")
    with structlog.testing.capture_logs() as logs:
        ran = await run_via(node, proxy, registry)
    assert ran.info["exitCode"] == 0, ran.info
    assert proxy.injected() == 1
    assert [e["step"] for e in logs if e["event"] == "registry call retried"] == ["registry login"]


async def test_throttling_that_lasts_fails_after_the_tries(node_root: Path, docker_client: Any,
                                                            test_image: str, proxy: FaultProxy,
                                                            registry: Any) -> None:
    for node in node_for(node_root, docker_client, test_image, retry=PullRetry(attempts=3, backoff=0.0)):
        proxy.inject(*[429] * 50, where="/manifests/")
        ran = await run_via(node, proxy, registry)
        failure = ran.info["failureInfo"]
        assert failure["code"] == "ContainerMiscError" and failure["category"] == "servererror"
        details = {d["name"]: d["value"] for d in failure["details"]}
        assert details["Attempts"] == "3" and "toomanyrequests" in details["Message"]
        assert "exitCode" not in ran.info
        assert proxy.count("HEAD /v2/test/busybox/manifests/full") == 3


async def test_wrong_password_is_not_retried_and_never_shown(node: Node, proxy: FaultProxy,
                                                             registry: Any) -> None:
    with structlog.testing.capture_logs() as logs:
        ran = await run_via(node, proxy, registry, WRONG_PASSWORD)
    failure = ran.info["failureInfo"]
    assert failure["code"] == "ContainerInvalidRegistry" and failure["category"] == "usererror"
    assert "401" in json.dumps(failure) and "Attempts" not in json.dumps(failure)
    assert proxy.count("GET /v2/ ") == 2 and proxy.count("/manifests/") == 0     # one login, no pull
    everything = json.dumps(ran.outcome.status.to_json()) + ran.stdout + ran.stderr + repr(logs)
    assert WRONG_PASSWORD not in everything


async def test_denied_is_not_retried(node: Node, proxy: FaultProxy, registry: Any) -> None:
    proxy.inject(403, 403, where="/manifests/")
    ran = await run_via(node, proxy, registry)
    assert ran.info["failureInfo"]["code"] == "ContainerInvalidRegistry", ran.info
    assert proxy.count("HEAD /v2/test/busybox/manifests/full") == 1


def test_cancel_ends_the_retry_wait(docker_client: Any, proxy: FaultProxy, registry: Any) -> None:
    proxy.inject(*[429] * 50, where="/manifests/")
    auth = RegistryAuth(proxy.address, registry.user, registry.password)
    cancel = threading.Event()
    result: list[Any] = []
    retry = PullRetry(attempts=5, backoff=600.0, max_delay=600.0)
    worker = threading.Thread(target=lambda: result.append(
        ensure_image(docker_client, image_via(proxy, registry), auth, retry=retry, cancel=cancel)))
    started = time.monotonic()
    worker.start()
    cancel.set()          # set before or during the first try: its wait (300-600 s) ends at once
    worker.join(timeout=120)
    assert not worker.is_alive() and time.monotonic() - started < 60
    failure = result[0]
    assert failure.code == "ContainerMiscError"
    assert proxy.count("HEAD /v2/test/busybox/manifests/full") == 1


@pytest.mark.parametrize(("message", "expected"), [
    ("toomanyrequests: You have reached your pull rate limit", True),
    ("login attempt to http://127.0.0.1:40123/v2/ failed with status: 429 Too Many Requests", True),
    ("received unexpected HTTP status: 503 Service Unavailable", True),
    ('Get "http://127.0.0.1:40123/v2/": read tcp 1->2: read: connection reset by peer', True),
    ("unexpected EOF", True),
    ("net/http: TLS handshake timeout", True),
    ("login attempt to http://127.0.0.1:40123/v2/ failed with status: 401 Unauthorized", False),
    ("unauthorized: authentication required", False),
    ("denied: requested access to the resource is denied", False),
    ("received unexpected HTTP status: 403 Forbidden", False),
    ("manifest for r/x:1 not found: manifest unknown", False),
    ("dial tcp 127.0.0.1:1: connect: connection refused", False),
])
def test_transient(message: str, expected: bool) -> None:
    assert transient(message) is expected


def test_a_port_with_401_in_it_is_not_a_401() -> None:
    failure = classify("Get http://127.0.0.1:40123/v2/: received unexpected HTTP status: 503 Service Unavailable",
                       "img:1", None, attempts=5)
    assert failure.code == "ContainerMiscError"
    assert ("Attempts", "5") in [(d.name, d.value) for d in failure.details]


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_doubles_with_jitter_and_is_capped(failures: int) -> None:
    retry = PullRetry(backoff=1.0, max_delay=16.0)
    ceiling = min(16.0, 2.0 ** (failures - 1))
    assert retry.ceiling(failures) == ceiling
    assert all(ceiling / 2 <= retry.delay(failures) <= ceiling for _ in range(20))
    assert PullRetry(backoff=0.0).delay(failures) == 0.0
