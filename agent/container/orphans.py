"""Containers no task owns any more: found by label and removed, so an agent crash leaves nothing.

Owns: the ``batch-agent.agent`` label (which agent process created a container: pid and process
start time, so a recycled pid is told apart) and the start-up sweep. Must not: touch a container
without the ``batch-agent.node-root`` label of this agent's node root (two agents with different
roots share one engine safely), or one created by another agent process that is still alive
(two ``batch-agent run`` on one root at the same time keep their own containers).

Removal policy (UNCONFIRMED in Batch, §8.3/§13.3): a container is kept after its task ends unless
``--rm`` was given or the agent killed it (wall clock, terminate); it lives until the next sweep,
i.e. the next agent start on the same node root, unless a running task owns it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from agent.container.build import LABEL_NODE_ROOT
from agent.logs import get_logger

LABEL_AGENT = "batch-agent.agent"

Owned = Collection[str] | Callable[[Mapping[str, Any]], bool]


def agent_token(pid: int | None = None) -> str:
    """``<pid>:<process start time>`` of an agent process (this one by default)."""
    import psutil

    pid = os.getpid() if pid is None else pid
    return f"{pid}:{psutil.Process(pid).create_time():.2f}"


def agent_alive(token: str) -> bool:
    """Whether the agent process a ``batch-agent.agent`` label names is still running."""
    import psutil

    pid_text, _, _ = token.partition(":")
    try:
        return pid_text.isdigit() and agent_token(int(pid_text)) == token
    except psutil.Error:
        return False


def _is_owned(owned: Owned, summary: Mapping[str, Any]) -> bool:
    if callable(owned):
        return owned(summary)
    names = {n.lstrip("/") for n in summary.get("Names") or ()}
    return summary["Id"] in owned or bool(names & set(owned))


def remove_orphans(client: Any, owned: Owned = (), *, node_root: Path) -> list[str]:
    """Remove this node root's batch-agent containers that nothing owns; return their ids.

    ``owned``: container ids or names of running tasks, or a predicate over the engine's
    container summary (``Id``, ``Names``, ``Labels``, ``State``). ``client`` is a
    ``docker.DockerClient`` or a ``LazyClient``; this call blocks (from async code: a worker
    thread, ``sweep_orphans``). No engine: a warning and nothing removed.
    """
    import requests
    from docker.errors import DockerException, NotFound

    log = get_logger(node_root=str(node_root))
    me = agent_token()
    removed: list[str] = []
    try:
        found = client.api.containers(all=True, filters={"label": f"{LABEL_NODE_ROOT}={node_root}"})
    except (DockerException, requests.exceptions.ConnectionError) as exc:
        # No engine: nothing to sweep now; a container task reports ContainerMiscError itself.
        log.warning("orphan sweep skipped: the Docker engine did not answer", error=str(exc))
        return []
    for summary in found:
        labels = summary.get("Labels") or {}
        if labels.get(LABEL_NODE_ROOT) != str(node_root) or _is_owned(owned, summary):
            continue
        creator = labels.get(LABEL_AGENT)
        if creator and creator != me and agent_alive(creator):
            continue
        try:
            client.api.remove_container(summary["Id"], v=True, force=True)
        except NotFound:
            continue
        removed.append(summary["Id"])
        log.info("orphan container removed", container_id=summary["Id"][:12], state=summary.get("State"))
    return removed


async def sweep_orphans(client: Any, node_root: Path, owned: Owned = ()) -> list[str]:
    """``remove_orphans`` from async code.

    The CLI calls it at the start of ``run`` for a container task (``owned`` empty: nothing of
    a dead agent on this root survives). A service calls it at start-up with the container ids
    of EVERY live handle in its store, recovered or about to be (``owned``): a container started
    by the agent process that died carries that dead agent's ``batch-agent.agent`` label, so
    only ``owned`` keeps the sweep off it. The set is a parameter, never module state, so two
    runners in one process cannot disagree about it.
    """
    return await asyncio.to_thread(remove_orphans, client, owned, node_root=node_root)
