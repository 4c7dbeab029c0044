"""Helpers for the service tests: a real TaskRunner (ProcessRunner, task dir hook) on a fresh node
root, a NodeService over MemoryStore or SqliteStore, and polling with a deadline (no sleeps)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from agent.compose import build_runner
from agent.config import AgentConfig
from agent.process import ProcessRunner
from agent.service import NodeService
from agent.spec import StartTask
from agent.store import MemoryStore, SqliteStore, Store
from agent.taskrunner import TaskRunner
from agent.tokens import TaskTokens

T = TypeVar("T")
DEADLINE = 30.0


def config(root: Path) -> AgentConfig:
    base = AgentConfig()
    return replace(base, node=replace(base.node, root=root),
                   tasks=replace(base.tasks, kill_grace=0.2))


def task_runner(root: Path, *, supervised: bool = True) -> TaskRunner:
    """The CLI's composition, with the process runner spawning through the node's supervisor
    (as the daemon must, so that a restarted agent re-attaches with the real exit code)."""
    cfg = config(root)
    runner: TaskRunner = build_runner(cfg, [])
    if supervised:
        process = ProcessRunner(use_cgroups=cfg.tasks.use_cgroups, node_root=root)
        runner = replace(runner, runners={**runner.runners, "process": process})
    return runner


def make_store(kind: str, path: Path) -> Store:
    return SqliteStore(path, synchronous="NORMAL") if kind == "sqlite" else MemoryStore()


def service(root: Path, store: Store, *, slots: int = 1, start_task: StartTask | None = None,
            tokens: TaskTokens | None = None, state_dir: Path | None = None) -> NodeService:
    return NodeService(store, task_runner(root), slots=slots, start_task=start_task, tokens=tokens,
                       state_dir=state_dir)


def job(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "poolInfo": {"poolId": "local"}, **extra}


def task(task_id: str, command: str, **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "commandLine": command, **extra}


def sh(script: str) -> str:
    """A commandLine running ``script`` in /bin/sh (single-quoted: no ' inside)."""
    assert "'" not in script
    return f"/bin/sh -c '{script}'"


async def until(check: Callable[[], Awaitable[T | None]], what: str, deadline: float = DEADLINE) -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``deadline`` s."""
    end = time.monotonic() + deadline
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def state_of(svc: NodeService, job_id: str, task_id: str) -> str:
    return (await svc.get_task(job_id, task_id)).state


def wait_file(path: Path, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not path.exists():
        if time.monotonic() > end:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)


def open_dir(node_root: Path) -> Path:
    """A directory outside the node root that task users can write (tmp_path's parents are 0700)."""
    path = Path(tempfile.mkdtemp(dir=node_root.parent, prefix=f"{node_root.name}.out-"))
    path.chmod(0o777)
    return path


def fifo(path: Path) -> Path:
    """A FIFO at ``path`` any task user can open: a task blocks on it until ``release``."""
    os.mkfifo(path, 0o666)
    path.chmod(0o666)
    return path


def release(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY))
