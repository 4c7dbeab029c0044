"""Restart safety: a service SIGKILLed mid-task; the next one re-attaches (the real exit code)
or requeues (another boot, no handle), and every task ends exactly once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from service_kit import fifo, job, open_dir, release, service, sh, task, until, wait_file

from agent.store import Expect, SqliteStore, TaskChanges

CHILD = Path(__file__).parent / "service_child.py"



async def add(state: Path, root: Path, command: str) -> None:
    svc = service(root, SqliteStore(state))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", command))
    await svc.aclose()


def start_child(root: Path, state: Path) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, str(CHILD), str(root), str(state)], stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"serving"
    return child


def kill(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


async def completed(svc, job_id: str = "j", task_id: str = "t") -> bool:  # type: ignore[no-untyped-def]
    return (await svc.get_task(job_id, task_id)).state == "completed"


async def test_sigkilled_agent_reattaches_and_keeps_the_real_exit_code(node_root: Path, tmp_path: Path) -> None:
    outside = open_dir(node_root)
    lines = outside / "lines"
    gate = fifo(open_dir(node_root) / "gate")
    state = tmp_path / "state"
    await add(state, node_root, sh(f"echo ran >> {lines}; cat {gate} >/dev/null; exit 42"))
    child = start_child(node_root, state)
    try:
        await asyncio.to_thread(wait_file, lines)
        await handle_written(state, "task")
    finally:
        kill(child)
    svc = service(node_root, SqliteStore(state))
    try:
        assert await svc.start() == 0                       # nothing requeued: re-attached
        loop = asyncio.create_task(svc.serve())
        await asyncio.to_thread(release, gate)
        await until(lambda: completed(svc), "the re-attached task to complete")
        t = await svc.get_task("j", "t")
        assert t.execution_info.exit_code == 42
        assert t.execution_info.requeue_count == 0 and t.execution_info.retry_count == 0
        assert lines.read_text() == "ran\n"                 # exactly once
        assert await svc.core.call(lambda s: s.open_attempts()) == []
        loop.cancel()
    finally:
        await svc.aclose()


async def test_attempt_of_another_boot_is_requeued_and_nothing_of_it_runs(node_root: Path, tmp_path: Path) -> None:
    outside = open_dir(node_root)
    lines = outside / "lines"
    state = tmp_path / "state"
    await add(state, node_root, sh(f"echo $$ >> {lines}; [ $(wc -l < {lines}) -gt 1 ] && exit 0; sleep 60"))
    child = start_child(node_root, state)
    try:
        await asyncio.to_thread(wait_file, lines)
        store = SqliteStore(state)
        try:
            await until(lambda: _has_attempt(store), "the handle to be persisted")
        finally:
            store.close()
    finally:
        kill(child)
    first_pid = int(lines.read_text().split()[0])
    store = SqliteStore(state)
    (attempt,) = store.open_attempts()
    store.save_attempt(replace(attempt, handle={**attempt.handle, "boot_id": "another-boot"}))   # a reboot
    store.close()
    svc = service(node_root, SqliteStore(state))
    try:
        await asyncio.wait_for(svc.run_until_idle(), 60)
        assert not _alive(first_pid)                         # recover swept the old attempt
        t = await svc.get_task("j", "t")
        assert t.state == "completed" and t.execution_info.exit_code == 0
        assert t.execution_info.requeue_count == 1 and t.execution_info.retry_count == 0
        assert t.execution_info.last_requeue_time is not None
        assert len(lines.read_text().split()) == 2
    finally:
        await svc.aclose()


async def _has_attempt(store: SqliteStore) -> bool:
    return bool(store.open_attempts())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


async def test_running_task_without_a_handle_is_requeued(node_root: Path, tmp_path: Path) -> None:
    """The agent died after the task went running but before its handle was written (downloads)."""
    state = tmp_path / "state"
    await add(state, node_root, "/bin/true")
    store = SqliteStore(state)
    done = store.transition_task("j", "t", Expect(states=frozenset({"active"})), TaskChanges(state="running"))
    assert not isinstance(done, type(None))
    store.close()
    svc = service(node_root, SqliteStore(state))
    try:
        assert await svc.start() == 1
        await asyncio.wait_for(svc.run_until_idle(), 60)
        t = await svc.get_task("j", "t")
        assert t.state == "completed" and t.execution_info.requeue_count == 1 and t.execution_info.exit_code == 0
    finally:
        await svc.aclose()


async def test_stop_leaves_running_tasks_alone(node_root: Path, tmp_path: Path) -> None:
    gate = fifo(open_dir(node_root) / "gate")
    state = tmp_path / "state"
    await add(state, node_root, sh(f"cat {gate} >/dev/null; exit 3"))
    svc = service(node_root, SqliteStore(state))
    loop = asyncio.create_task(svc.serve())
    await until(lambda: _has_attempt_svc(svc), "the task to start")
    loop.cancel()
    await svc.aclose()                                  # stop: no kill
    svc = service(node_root, SqliteStore(state))
    try:
        assert await svc.start() == 0
        await asyncio.to_thread(release, gate)
        await asyncio.wait_for(svc.run_until_idle(), 60)
        t = await svc.get_task("j", "t")
        assert t.execution_info.exit_code == 3 and t.execution_info.requeue_count == 0
    finally:
        await svc.aclose()


async def _has_attempt_svc(svc) -> bool:  # type: ignore[no-untyped-def]
    return bool(await svc.core.call(lambda s: s.open_attempts()))


async def test_release_interrupted_by_a_sigkill_finishes_once(node_root: Path, tmp_path: Path) -> None:
    outside = open_dir(node_root)
    lines = outside / "release"
    gate = fifo(outside / "gate")
    state = tmp_path / "state"
    svc = service(node_root, SqliteStore(state))
    await svc.add_job(job("j", onAllTasksComplete="terminatejob", jobPreparationTask={"commandLine": "/bin/true"},
                          jobReleaseTask={"commandLine": sh(f"echo ran >> {lines}; cat {gate} >/dev/null")}))
    await svc.add_task("j", task("t", "/bin/true"))
    await svc.aclose()
    child = start_child(node_root, state)
    try:
        await asyncio.to_thread(wait_file, lines)
        await handle_written(state, "jobrelease")
    finally:
        kill(child)
    svc = service(node_root, SqliteStore(state))
    try:
        await svc.start()
        await asyncio.to_thread(release, gate)
        await asyncio.wait_for(svc.run_until_idle(), 60)
        record = await svc.get_job("j")
        assert record.state == "completed" and record.execution_info["terminateReason"] == "AllTasksComplete"
        _, rel = await svc.prep_release_status("j")
        assert rel is not None and rel["state"] == "completed" and rel["exitCode"] == 0
        assert lines.read_text() == "ran\n"
    finally:
        await svc.aclose()


async def test_drain_stops_admitting_and_waits_for_running(node_root: Path, tmp_path: Path) -> None:
    gate = fifo(open_dir(node_root) / "gate")
    svc = service(node_root, SqliteStore(tmp_path / "state"))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("first", sh(f"cat {gate} >/dev/null")))
    await svc.add_task("j", task("second", "/bin/true"))
    loop = asyncio.create_task(svc.serve())
    try:
        await until(lambda: _has_attempt_svc(svc), "the first task to start")
        drained = asyncio.create_task(svc.drain())
        await asyncio.to_thread(release, gate)
        await asyncio.wait_for(drained, 30)
        assert (await svc.get_task("j", "first")).state == "completed"
        assert (await svc.get_task("j", "second")).state == "active"
    finally:
        loop.cancel()
        await svc.aclose()


async def test_retries_continue_after_a_sigkill_mid_retry(node_root: Path, tmp_path: Path) -> None:
    outside = open_dir(node_root)
    lines = outside / "lines"
    gate = fifo(outside / "gate")
    state = tmp_path / "state"
    script = (f"echo $$ >> {lines}; n=$(wc -l < {lines}); [ $n -ge 3 ] && exit 0; "
              f"[ $n -eq 2 ] && cat {gate} >/dev/null; exit 1")
    svc = service(node_root, SqliteStore(state))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", sh(script), constraints={"maxTaskRetryCount": 5}))
    await svc.aclose()
    child = start_child(node_root, state)
    try:
        await asyncio.to_thread(wait_file_lines, lines, 2)
        store = SqliteStore(state)
        try:        # the second attempt's handle is written (a kill before that is the requeue path)
            await until(lambda: _attempt_number(store, 1), "the retry's handle to be persisted")
        finally:
            store.close()
    finally:
        kill(child)
    svc = service(node_root, SqliteStore(state))
    try:
        await svc.start()
        await asyncio.to_thread(release, gate)
        await asyncio.wait_for(svc.run_until_idle(), 60)
        t = await svc.get_task("j", "t")
        assert t.state == "completed" and t.execution_info.exit_code == 0
        assert t.execution_info.retry_count == 2 and t.execution_info.requeue_count == 0
        assert len(lines.read_text().split()) == 3
        assert await svc.core.call(lambda s: s.open_attempts()) == []
    finally:
        await svc.aclose()


def wait_file_lines(path: Path, n: int) -> None:
    import time

    end = time.monotonic() + 30
    while not (path.exists() and len(path.read_text().split()) >= n):
        if time.monotonic() > end:
            raise AssertionError(f"{path} never had {n} lines")
        time.sleep(0.01)


async def _attempt_number(store: SqliteStore, number: int) -> bool:
    return any(a.number == number for a in store.open_attempts())


async def handle_written(state: Path, kind: str) -> None:
    """Wait until the child persisted the run handle (a kill before that is the requeue path)."""
    store = SqliteStore(state)
    try:
        await until(lambda: _has_kind(store, kind), f"the {kind} handle to be persisted")
    finally:
        store.close()


async def _has_kind(store: SqliteStore, kind: str) -> bool:
    return any(a.kind == kind for a in store.open_attempts())
