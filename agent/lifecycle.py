"""The task lifecycle's shared vocabulary: the per-attempt context and the hook protocols.

A task attempt is: prestart hooks (task dir, resource files, container image) -> start ->
wait under the wall clock -> exited hooks (output files) -> exit evaluation. Hooks live in
``agent.hooks`` (one file each); the task runner knows only these protocols.

Hooks report a task failure as a ``FailureInfo`` value. A prestart hook may fill in
``ctx.container`` (the container to create) and adjust ``ctx.env``: the context is the one
mutable object of an attempt, owned by the task runner.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.config import AgentConfig
from agent.layout import NodeLayout, TaskDirs
from agent.runner import ContainerRequest, ExitResult, TaskUser
from agent.spec import JobSpec, TaskBase
from agent.status import FailureInfo

# Task kinds, as the semantics doc names them.
TASK = "task"
JOB_MANAGER = "jobmanager"
JOB_PREPARATION = "jobpreparation"
JOB_RELEASE = "jobrelease"


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
