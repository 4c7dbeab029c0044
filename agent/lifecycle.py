"""The task lifecycle's shared vocabulary: the per-attempt context and the hook protocols.

A task attempt is: prestart hooks (task dir, resource files, container image) -> start ->
wait under the wall clock -> exited hooks (output files) -> exit evaluation. Hooks live in
``agent.hooks`` (one file each); the task runner knows only these protocols.

Hooks report a task failure as a ``FailureInfo`` value. A prestart hook may fill in
``ctx.container`` (the container to create) and adjust ``ctx.env``: the context is the one
mutable object of an attempt, owned by the task runner.

The journal (``Journal``) is how a task's life becomes durable: the task runner tells it each
phase as a typed request (``AttemptStarting`` -> ``AttemptStarted`` (the run handle, written
before the runner is waited on) -> ``AttemptRetrying`` or ``TaskFinished``), and awaits each
write before it goes on, so a restarted agent finds either no handle (the command never started:
requeue) or the handle of the command that runs. ``agent.service`` implements it on the store;
``batch-agent run`` passes none.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from agent.config import AgentConfig
from agent.layout import NodeLayout, TaskDirs
from agent.runner import ContainerRequest, ExitResult, RunHandle, TaskUser
from agent.spec import JobSpec, TaskBase
from agent.status import ExecutionInfo, FailureInfo, JobState, TaskStatus

# Task kinds, as the semantics doc names them.
TASK = "task"
JOB_MANAGER = "jobmanager"
JOB_PREPARATION = "jobpreparation"
JOB_RELEASE = "jobrelease"
START = "start"


class Progress(Protocol):
    """Where transfer progress goes (the CLI passes a rich bar, ``agent.report.TransferProgress``).
    ``add`` grows the total as files become known; ``advance`` may be called from transfer
    threads, and with a negative count when a failed try's bytes are taken back."""

    def add(self, total_bytes: int) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass(slots=True)
class TaskContext:
    """Everything one attempt of one task needs. Built by the task runner per attempt."""

    kind: str
    job_id: str
    task_id: str
    attempt: int
    spec: TaskBase
    job: JobSpec | None
    layout: NodeLayout
    dirs: TaskDirs
    user: TaskUser
    env: dict[str, str]
    argv: tuple[str, ...]
    config: AgentConfig
    log: Any                                   # a structlog BoundLogger with job/task/attempt bound
    container: ContainerRequest | None = None
    progress: Progress | None = None           # transfer progress sink (the CLI's rich bar)
    notes: dict[str, Any] = field(default_factory=dict)  # facts hooks record (bytes moved, ...)
    # Attempt-scoped objects the hooks share (the blob transport), and their clean-up: the task
    # runner closes ``cleanup`` when the attempt ends, whatever happened (a later prestart hook
    # failed, the process never started, the wall clock expired).
    shared: dict[str, Any] = field(default_factory=dict)
    cleanup: AsyncExitStack = field(default_factory=AsyncExitStack)


class PrestartHook(Protocol):
    name: str
    handles: frozenset[str]                    # task fields this hook implements

    async def prestart(self, ctx: TaskContext) -> FailureInfo | None: ...


class ExitedHook(Protocol):
    name: str
    handles: frozenset[str]

    async def exited(self, ctx: TaskContext, result: ExitResult) -> FailureInfo | None: ...


# ---- what a run produced, and the journal of its phases ------------------------------------

@dataclass(frozen=True, slots=True)
class Limits:
    wall_clock: timedelta | None
    max_retries: int            # -1 = unlimited
    retention: timedelta | None


@dataclass(slots=True)
class TaskOutcome:
    """What running a task produced: the Batch status plus the job effect and the limits."""

    status: TaskStatus
    job_state: JobState = JobState.ACTIVE
    terminate_reason: str | None = None
    ran: bool = False           # the command started at least once
    limits: Limits | None = None


@dataclass(frozen=True, slots=True)
class AttemptStarting:
    """An attempt begins (task dir, downloads, then the command): state ``running``."""

    kind: str
    job_id: str
    task_id: str
    attempt: int                # 0 for the first try, the retry count after
    info: ExecutionInfo         # startTime of this attempt, counts so far


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """The command runs: persist ``handle`` (``handle.to_json()``) before anything waits on it."""

    kind: str
    job_id: str
    task_id: str
    attempt: int
    handle: RunHandle
    info: ExecutionInfo


@dataclass(frozen=True, slots=True)
class AttemptRetrying:
    """Attempt ``attempt`` failed and will be retried: ``info`` has retryCount / lastRetryTime."""

    kind: str
    job_id: str
    task_id: str
    attempt: int
    info: ExecutionInfo


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """The task is done (no retry left or none due): executionInfo, result, exit decision."""

    kind: str
    job_id: str
    task_id: str
    attempt: int
    outcome: TaskOutcome


class Journal(Protocol):
    """Where the task runner records each phase; every call is awaited before the run goes on."""

    async def starting(self, request: AttemptStarting) -> None: ...

    async def started(self, request: AttemptStarted) -> None: ...

    async def retrying(self, request: AttemptRetrying) -> None: ...

    async def finished(self, request: TaskFinished) -> None: ...
