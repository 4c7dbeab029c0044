"""The task runner's pure helpers: effective limits, command splitting, stop races, clocks.

Owns: ``limits_for`` and ``split_command`` (spec-derived, also used by ``plan`` and ``preflight``),
``ended_by_user``, and the asyncio helpers the runner uses to race a phase against a stop
request. Must not: run anything.
"""


from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent import cmdline
from agent.lifecycle import (
    AttemptStarted,
    Journal,
    Limits,
)
from agent.runner import RunHandle
from agent.spec import JobPreparationTask, JobReleaseTask, JobSpec, StartTask, TaskBase
from agent.status import (
    ExecutionInfo,
    FailureInfo,
)

StartedSink = Callable[[RunHandle], Awaitable[None]]
KillSink = Callable[[str], Awaitable[None]]
KILL_USER, KILL_WALL_CLOCK = "user", "wallclock"      # why the agent kills an attempt (``KillSink``)
T = TypeVar("T")


def ended_by_user() -> FailureInfo:
    return FailureInfo.user("TaskEnded", "Task was ended by user request.")


def limits_for(spec: TaskBase, job: JobSpec | None) -> Limits:
    """The effective constraints of a task (task constraints, else the job's; §5, §9)."""
    if isinstance(spec, JobReleaseTask):
        return Limits(spec.max_wall_clock_time, 0, spec.retention_time)
    if isinstance(spec, StartTask):
        return Limits(None, spec.max_task_retry_count or 0, None)
    constraints = getattr(spec, "constraints", None)
    job_retries = job.constraints.max_task_retry_count if job and job.constraints else None
    if isinstance(spec, JobPreparationTask):
        job_retries = None  # the prep task's retries come from its own constraints only
    if constraints is None:
        from agent.spec.task import DEFAULT_RETENTION
        return Limits(None, job_retries or 0, DEFAULT_RETENTION)
    retries = constraints.max_task_retry_count
    if retries is None:
        retries = job_retries or 0
    return Limits(constraints.max_wall_clock_time, retries, constraints.retention_time)


def split_command(command_line: str) -> tuple[str, ...]:
    """POSIX word splitting without any expansion (§3; exact Batch rules UNCONFIRMED), as
    ``shlex.split`` does it but in linear time (``agent.cmdline``)."""
    return tuple(cmdline.split(command_line))


def started_sink(journal: Journal | None, kind: str, job_id: str, task_id: str, attempt: int,
                  info: ExecutionInfo) -> StartedSink | None:
    if journal is None:
        return None

    async def sink(handle: RunHandle) -> None:
        await journal.started(AttemptStarted(kind, job_id, task_id, attempt, handle, info))
    return sink


def kill_sink(journal: Journal | None, kind: str, job_id: str, task_id: str) -> KillSink | None:
    """Where a kill is recorded before it is sent (``journal.killing(kind, job_id, task_id,
    why)``, a journal that has it: the service's), so a restart mid-kill still ends the attempt
    as killed by the agent (TaskEnded / the user's terminate), not as a plain failure."""
    killing = getattr(journal, "killing", None)
    if killing is None:
        return None

    async def sink(why: str) -> None:
        await killing(kind, job_id, task_id, why)
    return sink


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """``(False, result of work)``, or ``(True, None)`` when ``stop`` is set first: then ``work``
    is cancelled (a transfer's threads stop with it, see ``agent.blob``) and awaited."""
    job = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    stopped = False
    try:
        await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopped = not job.done()
    finally:
        stopper.cancel()
        if not job.done():
            job.cancel()
            await asyncio.wait({job})
    if stopped:
        if not job.cancelled():
            job.exception()         # retrieved: an error while being cancelled is not news
        return True, None
    return False, job.result()


def loop_deadline(deadline: float | None) -> float | None:
    """Convert a time.monotonic() deadline to the event loop's clock."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
