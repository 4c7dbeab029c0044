"""NodeService scheduling with real processes: slots, requiredSlots, priority then FIFO, dependencies."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from service_kit import job, make_store, service, sh, state_of, task, until


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def fifo(node_root: Path) -> Path:
    path = node_root.parent / f"{node_root.name}.fifo"
    os.mkfifo(path, 0o666)
    path.chmod(0o666)
    return path


def release(path: Path) -> None:
    """Let every task blocked on the FIFO go: open it for writing (they opened it to read) and close."""
    fd = os.open(path, os.O_WRONLY)
    os.close(fd)


def gates(node_root: Path, names: list[str]) -> Path:
    """One FIFO per task (a task blocks on its own): releasing one waits for that very task to
    open it, so a task that started but had not yet opened its gate is never skipped."""
    path = node_root.parent / f"{node_root.name}.gates"
    path.mkdir(mode=0o755)
    for name in names:
        os.mkfifo(path / name, 0o666)
        (path / name).chmod(0o666)
    return path


def release_started(shared: Path, gate_dir: Path, released: set[str]) -> None:
    """Let every task that started and was not let go yet go."""
    for started in sorted(shared.glob("started.*")):
        name = started.name.removeprefix("started.")
        if name not in released:
            released.add(name)
            release(gate_dir / name)


async def test_slots_bound_concurrency_and_required_slots_count(node_root: Path, store_kind: str,
                                                                 tmp_path: Path) -> None:
    gate = gates(node_root, ["big", *(f"t{i}" for i in range(4))])
    released: set[str] = set()
    svc = service(node_root, make_store(store_kind, tmp_path / "state"), slots=2)
    shared = node_root / "shared"
    await svc.add_job(job("j"))
    script = f"touch $AZ_BATCH_NODE_SHARED_DIR/started.$AZ_BATCH_TASK_ID; cat {gate}/$AZ_BATCH_TASK_ID >/dev/null"
    await svc.add_task("j", task("big", sh(script), requiredSlots=2))
    for i in range(4):
        await svc.add_task("j", task(f"t{i}", sh(script)))
    loop = asyncio.create_task(svc.serve())
    try:
        await until(lambda: _exists(shared / "started.big"), "the 2-slot task to start")
        assert svc.core.used_slots() == 2
        counts = await svc.core.call(lambda s: s.task_counts("j"))
        assert counts.tasks.running == 1 and counts.slots.running == 2
        assert not list(shared.glob("started.t*"))          # the 2-slot task fills the node
        await asyncio.to_thread(release_started, shared, gate, released)
        await until(lambda: _count(shared, 2), "two 1-slot tasks to start")
        counts = await svc.core.call(lambda s: s.task_counts("j"))
        assert counts.tasks.running == 2 and len(list(shared.glob("started.t*"))) == 2
        await asyncio.to_thread(release_started, shared, gate, released)
        await until(lambda: _count(shared, 4), "the other two")
        await asyncio.to_thread(release_started, shared, gate, released)
        await until(lambda: _all_completed(svc, "j", 5), "every task to complete")
    finally:
        loop.cancel()
        await svc.aclose()


async def _exists(path: Path) -> bool:
    return path.exists()


async def _count(shared: Path, n: int) -> bool:
    return len(list(shared.glob("started.t*"))) >= n


async def _all_completed(svc, job_id: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    counts = await svc.core.call(lambda s: s.task_counts(job_id))
    return counts.tasks.completed == n


async def test_priority_then_submission_order(node_root: Path, store_kind: str, tmp_path: Path) -> None:
    svc = service(node_root, make_store(store_kind, tmp_path / "state"), slots=1)
    line = sh("echo $AZ_BATCH_JOB_ID/$AZ_BATCH_TASK_ID >> $AZ_BATCH_NODE_SHARED_DIR/order")
    await svc.add_job(job("low", priority=0))
    await svc.add_job(job("high", priority=100))
    for i in range(3):
        await svc.add_task("low", task(f"a{i}", line))
    for i in range(2):
        await svc.add_task("high", task(f"b{i}", line))
    await asyncio.wait_for(svc.run_until_idle(), 60)
    order = (node_root / "shared" / "order").read_text().split()
    assert order == ["high/b0", "high/b1", "low/a0", "low/a1", "low/a2"]
    await svc.aclose()


async def test_required_slots_above_the_node_stay_active(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path), slots=2)
    await svc.add_job(job("j"))
    await svc.add_task("j", task("huge", "/bin/true", requiredSlots=3))
    await svc.add_task("j", task("small", "/bin/true"))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    assert await state_of(svc, "j", "huge") == "active"
    assert await state_of(svc, "j", "small") == "completed"
    await svc.aclose()


async def test_dependencies_satisfy_block_ranges_and_missing_parent(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("sqlite", tmp_path / "state"), slots=2)
    await svc.add_job(job("d", usesTaskDependencies=True))
    await svc.add_task("d", task("ok", "/bin/true"))
    await svc.add_task("d", task("bad", sh("exit 2")))
    await svc.add_task("d", task("soft", sh("exit 3"), exitConditions={
        "exitCodes": [{"code": 3, "exitOptions": {"dependencyAction": "satisfy"}}]}))
    for i in (1, 2, 3):
        await svc.add_task("d", task(str(i), "/bin/true"))
    await svc.add_task("d", task("after-ok", "/bin/true", dependsOn={"taskIds": ["OK", "soft"]}))
    await svc.add_task("d", task("after-bad", "/bin/true", dependsOn={"taskIds": ["ok", "bad"]}))
    await svc.add_task("d", task("after-range", "/bin/true", dependsOn={"taskIdRanges": [{"start": 1, "end": 5}]}))
    await svc.add_task("d", task("after-missing", "/bin/true", dependsOn={"taskIds": ["later"]}))
    await asyncio.wait_for(svc.run_until_idle(), 60)
    for done in ("after-ok", "after-range"):
        record = await svc.get_task("d", done)
        assert record.state == "completed" and record.execution_info.exit_code == 0, record.execution_info
    assert await state_of(svc, "d", "after-bad") == "active"         # blocked for good
    assert await state_of(svc, "d", "after-missing") == "active"     # waits for its parent
    await svc.add_task("d", task("later", "/bin/true"))
    await asyncio.wait_for(svc.run_until_idle(), 60)
    assert (await svc.get_task("d", "after-missing")).execution_info.exit_code == 0
    assert await state_of(svc, "d", "after-bad") == "active"
    await svc.aclose()


async def test_depends_on_needs_uses_task_dependencies(node_root: Path, tmp_path: Path) -> None:
    from agent.errors import ServiceError

    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("plain"))
    with pytest.raises(ServiceError) as info:
        await svc.add_task("plain", task("x", "/bin/true", dependsOn={"taskIds": ["y"]}))
    assert info.value.code == "TaskDependenciesNotSpecifiedOnJob"
    await svc.aclose()
