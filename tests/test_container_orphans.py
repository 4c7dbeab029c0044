"""The start-up sweep of containers no task owns, on the real engine."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.container.build import LABEL_JOB, LABEL_NODE_ROOT, LABEL_TASK
from agent.container.orphans import LABEL_AGENT, agent_alive, agent_token, remove_orphans, sweep_orphans
from agent.container.runner import LazyClient

pytestmark = pytest.mark.docker


class Made:
    def __init__(self, client: Any, image: str) -> None:
        self.client, self.image = client, image
        self.ids: dict[str, str] = {}

    def __call__(self, key: str, labels: dict[str, str] | None, *, start: bool = False) -> str:
        name = f"orphan-test-{key}-{uuid.uuid4().hex[:8]}"
        container = self.client.containers.create(self.image, ["sleep", "60"], labels=labels or {},
                                                  network="none", name=name)
        if start:
            container.start()
        self.ids[key] = container.id
        return str(container.id)

    def left(self) -> set[str]:
        present = {c["Id"] for c in self.client.api.containers(all=True)}
        return {key for key, cid in self.ids.items() if cid in present}


@pytest.fixture
def made(docker_client: Any, test_image: str) -> Iterator[Made]:
    import docker

    made = Made(docker_client, test_image)
    yield made
    for cid in made.ids.values():
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(cid, force=True)


def ours(root: Path, **extra: str) -> dict[str, str]:
    return {LABEL_NODE_ROOT: str(root), LABEL_JOB: "j", LABEL_TASK: "t", **extra}


def test_sweep_removes_only_unowned_containers_of_this_root(made: Made, node_root: Path,
                                                            docker_client: Any) -> None:
    made("created", ours(node_root))
    made("running", ours(node_root), start=True)                     # an agent crashed mid-task
    made("dead-agent", ours(node_root, **{LABEL_AGENT: "999999999:1.00"}))
    made("this-agent", ours(node_root, **{LABEL_AGENT: agent_token()}))
    made("unlabelled", None)
    made("other-root", ours(node_root / "elsewhere"))
    made("live-agent", ours(node_root, **{LABEL_AGENT: agent_token(1)}))   # pid 1 is alive
    owned_id = made("owned", ours(node_root))

    removed = remove_orphans(docker_client, {owned_id}, node_root=node_root)

    assert made.left() == {"unlabelled", "other-root", "live-agent", "owned"}
    assert set(removed) == {made.ids[k] for k in ("created", "running", "dead-agent", "this-agent")}


async def test_async_sweep_with_a_predicate_and_a_lazy_client(made: Made, node_root: Path,
                                                             docker_client: Any) -> None:
    made("keep", ours(node_root, keep="yes"))
    made("drop", ours(node_root))
    removed = await sweep_orphans(LazyClient(lambda: docker_client), node_root,
                                  lambda summary: summary["Labels"].get("keep") == "yes")
    assert removed == [made.ids["drop"]] and made.left() == {"keep"}


def test_sweep_without_engine_removes_nothing(node_root: Path) -> None:
    import docker

    def no_engine() -> Any:
        return docker.DockerClient(base_url="tcp://127.0.0.1:1", version="1.41")  # refused at once

    assert remove_orphans(LazyClient(no_engine), node_root=node_root) == []


def test_agent_token_tells_live_from_dead() -> None:
    assert agent_alive(agent_token())
    assert not agent_alive("999999999:1.00")
    pid, _, started = agent_token().partition(":")
    assert not agent_alive(f"{pid}:{float(started) - 100:.2f}")   # same pid, another process
    assert not agent_alive("garbage")
