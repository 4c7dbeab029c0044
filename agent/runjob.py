"""``batch-agent run-job JOB.json TASKS.json``: a whole job on this machine, through the same
``NodeService`` the daemon drives (slots, dependencies, job preparation and release, retries,
exit conditions), with no API, until the job is done.

Owns: loading the two files, the run's life (burst mode: ``run_until_idle``), ending the job and
collecting every task's record. Must not: print (the CLI renders ``agent.report``), or keep
state after it returns.

Choices
- The store is a fresh SQLite database in a private directory below the node's state dir
  (``<root>/batch-agent-state/run-job-*``, 0700), removed at the end: a run-job shares nothing
  with another run or with a service's state, and task bodies (SAS URLs, passwords) never land
  in a world-readable temp dir. The node lock is held shared, as ``run`` does: it refuses to
  start on a node root a service holds.
- Tasks spawn from the agent itself (no supervisor): nothing re-attaches a run-job's tasks, and
  on SIGINT / SIGTERM the job is terminated (running tasks killed, the release task runs), then
  the summary is printed. A second signal stops waiting for the release task.
- Done means: nothing can make progress any more (every task completed, or the rest blocked by
  dependencies or by a failed job preparation task). The job is then terminated if it is not
  already (``terminateReason`` ``AllTasksComplete`` when every task completed, else
  ``TasksBlocked``) so its release task runs, as Batch would on terminate.
- No start task (``[node] start_task`` is a service setting) and no task tokens (there is no
  API to accept them): a task with ``authenticationTokenSettings`` fails with the gate's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.compose import build_service, lock_node, state_dir
from agent.config import AgentConfig
from agent.errors import InputError, ServiceError
from agent.store import JobRecord, TaskRecord

COLLECTION_LIMIT = 100


@dataclass(frozen=True, slots=True)
class RunJobResult:
    job: JobRecord
    tasks: tuple[TaskRecord, ...]
    preparation: dict[str, Any] | None       # jobPreparationTaskExecutionInfo
    release: dict[str, Any] | None           # jobReleaseTaskExecutionInfo
    interrupted: bool


def load_inputs(job_file: Path, tasks_file: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Create Job body and the task bodies (a collection ``{"value": [...]}``, a list, or one task)."""
    job = _read(job_file)
    if not isinstance(job, dict):
        raise InputError(f"{job_file}: a job file holds one JSON object (a Create Job body)")
    tasks = _read(tasks_file)
    if isinstance(tasks, dict) and isinstance(tasks.get("value"), list):
        tasks = tasks["value"]
    elif isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise InputError(f"{tasks_file}: give a task, a list of tasks or a task collection ({{\"value\": [...]}})")
    return job, tasks


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON: {exc}") from None


def run_job(config: AgentConfig, job: dict[str, Any], tasks: list[dict[str, Any]], *, slots: int) -> RunJobResult:
    lock = lock_node(config, exclusive=False)
    store_dir = Path(tempfile.mkdtemp(prefix="run-job-", dir=state_dir(config)))
    try:
        return asyncio.run(_run(config, store_dir, job, tasks, slots))
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
        lock.release()


async def _run(config: AgentConfig, store_dir: Path, job_body: dict[str, Any], task_bodies: list[dict[str, Any]],
               slots: int) -> RunJobResult:
    svc, store = build_service(config, store_dir, slots=slots, start_task=None, supervised=False, tokens=False)
    job_body = {"poolInfo": {"poolId": config.node.pool_id}, **job_body}   # a node runs it on its pool
    signals: list[int] = []
    try:
        await svc.start()
        job = await svc.add_job(job_body)
        for first in range(0, len(task_bodies), COLLECTION_LIMIT):
            chunk = task_bodies[first:first + COLLECTION_LIMIT]
            for i, result in enumerate(await svc.add_tasks(job.id, {"value": chunk})):
                if result.error is not None:
                    raise InputError(f"tasks[{first + i}] ({result.id}): {result.error.code}: {result.error}")

        loop = asyncio.get_running_loop()
        waiting: asyncio.Task[None] | None = None

        def on_signal(sig: int) -> None:
            signals.append(sig)
            if len(signals) == 1:
                svc.core.spawn(_terminate(svc, job.id, "UserTerminate"), "terminate job")
            elif waiting is not None:
                waiting.cancel()                 # a second signal: stop waiting for the release
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, on_signal, sig)

        waiting = asyncio.create_task(_until_done(svc, job.id))
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        records: list[TaskRecord] = []
        token: str | None = None
        while True:
            page = await store.run(lambda s, t=token: s.list_tasks(job.id, token=t))  # type: ignore[misc]
            records += page.items
            token = page.next_token
            if token is None:
                break
        final = await svc.get_job(job.id)
        preparation, release = await svc.prep_release_status(job.id)
        return RunJobResult(final, tuple(records), preparation, release, bool(signals))
    finally:
        await svc.stop()
        await store.aclose()


async def _until_done(svc: Any, job_id: str) -> None:
    await svc.run_until_idle()
    job = await svc.get_job(job_id)
    if job.state in ("active", "disabled", "disabling", "enabling"):
        tasks = await svc.core.call(lambda s: s.task_counts(job_id))
        reason = "AllTasksComplete" if tasks.tasks.active == tasks.tasks.running == 0 else "TasksBlocked"
        await _terminate(svc, job_id, reason)
    await svc.run_until_idle()


async def _terminate(svc: Any, job_id: str, reason: str) -> None:
    with contextlib.suppress(ServiceError):
        await svc.terminate_job(job_id, reason)
