"""agent.compose: the composition root (runners and hooks per way in), the node's private state
dir and its lock, the start task file, the container ids an orphan sweep keeps."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from agent.compose import (
    NodeBusy,
    build_runner,
    build_service,
    container_ids,
    load_start_task,
    lock_node,
    prepare_state_dir,
    service_used,
    state_dir,
)
from agent.config import AgentConfig
from agent.errors import ConfigError, SpecError
from agent.spec import load_data
from agent.store import StoreUnsafe


def config(root: Path, **node: object) -> AgentConfig:
    base = AgentConfig()
    return replace(base, node=replace(base.node, root=root, **node))  # type: ignore[arg-type]


def test_run_builds_only_what_its_tasks_need(node_root: Path) -> None:
    task = load_data({"id": "t", "commandLine": "/bin/true"}, kind="task").model
    runner = build_runner(config(node_root), [task])  # type: ignore[list-item]
    assert set(runner.runners) == {"process"} and runner.exited == []
    assert runner.runners["process"].supervisor is None  # type: ignore[attr-defined]


def test_a_service_gets_every_runner_and_hook_and_the_supervisor(node_root: Path) -> None:
    runner = build_runner(config(node_root), None, supervised=True, sweep=False)
    assert set(runner.runners) == {"process", "container"}
    names = {type(h).__name__ for h in (*runner.prestart, *runner.exited)}
    assert {"GateHook", "TaskDirHook", "ResourceFilesHook", "ImageHook", "OutputFilesHook"} <= names
    assert runner.runners["process"].supervisor is not None  # type: ignore[attr-defined]


def test_state_dir_is_private_and_an_open_one_is_refused(node_root: Path) -> None:
    cfg = config(node_root / "new-root")
    path = prepare_state_dir(cfg)
    assert path == state_dir(cfg) and (path.stat().st_mode & 0o777) == 0o700
    assert (cfg.node.root.stat().st_mode & 0o777) == 0o755
    path.chmod(0o755)
    with pytest.raises(StoreUnsafe, match="0700"):
        prepare_state_dir(cfg)


def test_state_dir_as_a_link_is_refused(node_root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (node_root / "batch-agent-state").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="batch-agent-state"):
        prepare_state_dir(config(node_root))


def test_node_lock_exclusive_against_shared(node_root: Path) -> None:
    cfg = config(node_root)
    serve = lock_node(cfg, exclusive=True)
    try:
        with pytest.raises(NodeBusy, match=f"serve pid {os.getpid()}"):
            lock_node(cfg, exclusive=True)
        with pytest.raises(NodeBusy, match="submit the task to it through its API"):
            lock_node(cfg, exclusive=False)
    finally:
        serve.release()
    runs = [lock_node(cfg, exclusive=False), lock_node(cfg, exclusive=False)]     # runs share it
    with pytest.raises(NodeBusy, match="batch-agent run or run-job"):
        lock_node(cfg, exclusive=True)
    for lock in runs:
        lock.release()
    lock_node(cfg, exclusive=True).release()
    lock_file = state_dir(cfg) / "agent.lock"
    assert (lock_file.stat().st_mode & 0o777) == 0o600
    assert not os.get_inheritable(lock_node(cfg, exclusive=False).fd)


def test_start_task_file(node_root: Path, tmp_path: Path) -> None:
    assert load_start_task(config(node_root)) is None
    good = tmp_path / "start.json"
    good.write_text(json.dumps({"commandLine": "/bin/true", "waitForSuccess": True}))
    spec = load_start_task(config(node_root, start_task=str(good)))
    assert spec is not None and spec.command_line == "/bin/true"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"waitForSuccess": "maybe"}))
    with pytest.raises(SpecError, match="commandLine"):
        load_start_task(config(node_root, start_task=str(bad)))
    with pytest.raises(ConfigError, match=r"node\.start_task"):
        load_start_task(config(node_root, start_task=str(tmp_path / "missing.json")))


def test_container_ids_of_open_handles() -> None:
    handles = [{"kind": "container", "container_id": "abc"}, {"kind": "process", "pid": 3}, {"container_id": None}]
    assert container_ids(handles) == {"abc"}


async def test_build_service_opens_a_store_in_the_state_dir(node_root: Path) -> None:
    cfg = config(node_root)
    path = prepare_state_dir(cfg)
    assert not service_used(cfg)
    svc, store = build_service(cfg, path, slots=2, start_task=None, supervised=False)
    try:
        assert svc.core.slots == 2 and svc.tokens is not None
        assert service_used(cfg)
        assert ((path / "task-token.key").stat().st_mode & 0o777) == 0o600
    finally:
        await svc.aclose()
    assert store is svc.core.store
