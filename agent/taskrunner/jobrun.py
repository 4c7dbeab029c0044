"""``run --job``: the job preparation task, one task and the job release task, as Batch would run
them around a task on one node (§9); and the prep / release execution info in Batch's shape."""


from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.lifecycle import (
    JOB_PREPARATION,
    JOB_RELEASE,
    TASK,
    TaskOutcome,
)
from agent.spec import JobSpec, TaskSpec
from agent.status import (
    JobState,
)
from agent.taskrunner.runner import TaskRunner


@dataclass(slots=True)
class JobOutcome:
    """A job run through ``run --job``: prep, the task, release, and the job's end state."""

    job_id: str
    task: TaskOutcome | None
    preparation: TaskOutcome | None = None
    release: TaskOutcome | None = None
    job_state: JobState = JobState.ACTIVE
    terminate_reason: str | None = None
    preparation_blocked: bool = False   # prep failed with waitForSuccess: the task never ran

    def start_time(self) -> datetime | None:
        return self.task.status.execution_info.start_time if self.task else None


def special_task_info(outcome: TaskOutcome, *, retries: bool) -> dict[str, Any]:
    """jobPreparationTaskExecutionInfo / jobReleaseTaskExecutionInfo in Batch's shape."""
    info = outcome.status.execution_info.to_json()
    info.pop("requeueCount", None)
    if not retries:
        info.pop("retryCount", None)
        info.pop("lastRetryTime", None)
    node = outcome.status.node_info
    out: dict[str, Any] = {"state": str(outcome.status.state), **info}
    if node is not None:
        out["taskRootDirectory"] = node.task_root_directory
        if node.task_root_directory_url:
            out["taskRootDirectoryUrl"] = node.task_root_directory_url
    return out


async def run_job_task(runner: TaskRunner, task: TaskSpec, *, job_id: str, job: JobSpec | None) -> JobOutcome:
    """Prep (waitForSuccess semantics) -> the task -> release, as Batch would on one node (§9).

    Stop requests (``TaskRunner.interrupt``): after the first the task is not started (it
    completes ``TaskEnded`` without running); the release task still runs, the second ends it.
    """
    outcome = JobOutcome(job_id, None)
    prep = job.job_preparation_task if job else None
    if prep is not None:
        outcome.preparation = await runner.run(prep, job_id=job_id, job=job, kind=JOB_PREPARATION,
                                               task_id=prep.id)
        failed = outcome.preparation.status.execution_info.failure_info is not None
        if failed and prep.wait_for_success:
            outcome.preparation_blocked = True
    if not outcome.preparation_blocked:
        if runner.interrupts:
            runner.terminate(job_id, task.id)
        outcome.task = await runner.run(task, job_id=job_id, job=job, kind=TASK)
        outcome.job_state = outcome.task.job_state
        outcome.terminate_reason = outcome.task.terminate_reason
    release = job.job_release_task if job else None
    if release is not None and outcome.preparation is not None:
        if runner.interrupts >= 2:
            runner.terminate(job_id, release.id)
        outcome.release = await runner.run(release, job_id=job_id, job=job, kind=JOB_RELEASE,
                                           task_id=release.id)
    return outcome
