"""An agent SIGKILLed between a spawn and the write of its handle: nothing recorded where the
command runs, so the next agent asks the supervisor (``TaskRunner.sweep_task``), kills it, and
requeues the task, which then runs once more, cleanly.

The window is hit exactly with the test-only fault hook of ``agent.taskrunner.runner``
(``BATCH_AGENT_TEST_ONLY_SIGKILL_AFTER_SPAWN``): the first agent kills itself right after the
spawn, before the store write."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from service_kit import job, service, sh, task, until, wait_file
from test_service_restart import CHILD, open_dir

from agent.store import SqliteStore
from agent.taskrunner.runner import TEST_KILL_AFTER_SPAWN, TEST_KILL_CONFIRM


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def _completed(svc) -> bool:  # type: ignore[no-untyped-def]
    return (await svc.get_task("j", "t")).state == "completed"


async def test_agent_killed_between_spawn_and_handle_leaves_nothing_running(node_root: Path,
                                                                           tmp_path: Path) -> None:
    pids = open_dir(node_root) / "pids"
    state = tmp_path / "state"
    svc = service(node_root, SqliteStore(state))
    await svc.add_job(job("j"))
    # First run: blocks for good; the rerun (a second line) ends at once.
    await svc.add_task("j", task("t", sh(f"echo $$ >> {pids}; [ $(wc -l < {pids}) -gt 1 ] || exec sleep 600")))
    await svc.aclose()
    env = {**os.environ, TEST_KILL_AFTER_SPAWN: TEST_KILL_CONFIRM}
    child = subprocess.Popen([sys.executable, str(CHILD), str(node_root), str(state)], env=env,
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    child.stdout.readline()
    assert child.wait(timeout=60) == -signal.SIGKILL      # it killed itself after the spawn
    child.stdout.close()
    await asyncio.to_thread(wait_file, pids)
    first = int(pids.read_text().split()[0])
    assert _alive(first), "the spawned command runs on under the supervisor"
    store = SqliteStore(state)
    try:
        assert store.open_attempts() == []                  # no handle was ever written
        assert store.get_task("j", "t").state == "running"
    finally:
        store.close()

    svc = service(node_root, SqliteStore(state))
    try:
        assert await svc.start() == 1                       # requeued, after the sweep
        assert not _alive(first)
        loop = asyncio.create_task(svc.serve())
        await until(lambda: _completed(svc), "the requeued task to complete")
        info = (await svc.get_task("j", "t")).execution_info
        assert info.exit_code == 0 and info.requeue_count == 1 and info.retry_count == 0, info
        assert len(pids.read_text().split()) == 2
        loop.cancel()
    finally:
        await svc.aclose()
        if _alive(first):
            os.kill(first, signal.SIGKILL)


def test_the_sweep_matches_a_task_exactly_not_by_its_readable_prefix() -> None:
    from agent.process.runner import _attempt_id, _of_task, task_tag
    from agent.runner import RunRequest, TaskUser

    def attempt(job_id: str, task_id: str) -> str:
        return _attempt_id(RunRequest(job_id=job_id, task_id=task_id, attempt=0, argv=("true",), env={},
                                      cwd=Path("/"), stdout=Path("/o"), stderr=Path("/e"),
                                      user=TaskUser(name="agent", uid=None, gid=None)))
    one, other = attempt("job_a", "b"), attempt("job", "a_b")          # the same readable part
    assert one.startswith("job_a_b_0_") and other.startswith("job_a_b_0_")
    assert _of_task(one, task_tag("job_a", "b")) and not _of_task(other, task_tag("job_a", "b"))
    assert _of_task(attempt("JOB_A", "B"), task_tag("job_a", "b"))     # ids ignore case, as in Batch
