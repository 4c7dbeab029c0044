"""``StoreJournal``: the task runner's journal (``agent.lifecycle.Journal``) written to the store.

Owns: turning each phase of a task, job preparation, job release or start task into one store
transaction. A task: ``starting`` -> executionInfo of the attempt (state running); ``started`` ->
``TaskChanges(state="running", attempt=Attempt(...))``, the run handle in the same transaction;
``killing`` -> the open attempt marked as being killed by the agent (before the kill);
``retrying`` -> retryCount / lastRetryTime and the attempt ended, one transaction; ``finished``
-> completed (or requeued) and the attempt ended, one transaction, then the service's
``after_task`` hook (job actions, retention). Three writes per one-attempt task: running,
handle, completed (each an fsync with synchronous=FULL, on the store's one thread; writes of
several tasks that come together share one by the store thread's group commit). Prep /
release: their record on this node (``put_prep_release``), REST shape plus ``x-agent-bootId``;
the start task: ``StartTaskGate``.

Crashes: the result and the attempt's end are one transaction, so a restarted agent never waits
on an old handle of a recorded result; an open attempt of a completed task (a deleted task's,
or an older agent's) is just ended by recovery. Must not: decide job actions (``scheduler`` does, in ``after_task``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from agent.lifecycle import (
    JOB_PREPARATION,
    JOB_RELEASE,
    START,
    AttemptRetrying,
    AttemptStarted,
    AttemptStarting,
    TaskFinished,
)
from agent.service.core import Core, key
from agent.service.jobs import T_ACTIVE, T_COMPLETED, T_LIVE, T_RUNNING
from agent.status import ExecutionInfo, format_time, utcnow
from agent.store import (
    UNSET,
    Attempt,
    Conflict,
    Expect,
    JobNotFound,
    Store,
    TaskChanges,
    TaskNotFound,
    TaskRecord,
)
from agent.taskrunner import special_task_info

BOOT_KEY = "x-agent-bootId"
KILL_KEY = "x-agent-killing"        # in an attempt's handle: the agent was killing it, and why
LIVE = Expect(states=T_LIVE)
STARTABLE = Expect(states=frozenset({T_ACTIVE, *T_LIVE}))
ATTEMPT_KIND = {JOB_PREPARATION: "jobpreparation", JOB_RELEASE: "jobrelease", START: "starttask"}


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def attempt_kind(kind: str) -> str:
    return ATTEMPT_KIND.get(kind, "task")


def running_info(info: ExecutionInfo, task_root: str) -> dict[str, Any]:
    out: dict[str, Any] = {"state": "running", **info.to_json(), "taskRootDirectory": task_root}
    out.pop("requeueCount", None)
    return out


def requeued(info: ExecutionInfo) -> ExecutionInfo:
    """Back to active, not a retry (§10.2): requeueCount + 1, the attempt's times cleared."""
    return replace(info, start_time=None, end_time=None, exit_code=None, failure_info=None, container_info=None,
                   requeue_count=info.requeue_count + 1, last_requeue_time=utcnow())


async def requeue_task(core: Core, job_id: str, task_id: str) -> TaskRecord | None:
    def go(s: Store) -> TaskRecord | None:
        try:
            rec = s.get_task(job_id, task_id)
            done = s.transition_task(job_id, task_id, LIVE,
                                     TaskChanges(state=T_ACTIVE, execution_info=requeued(rec.execution_info)))
        except (JobNotFound, TaskNotFound):
            return None
        return None if isinstance(done, Conflict) else done
    return await core.call(go)


class StoreJournal:
    def __init__(self, core: Core, *, after_task: Callable[[TaskFinished, TaskRecord | None], Awaitable[None]],
                 start_status: Callable[[Mapping[str, Any]], None]) -> None:
        self.core = core
        self.after_task = after_task
        self.start_status = start_status
        self.boot = boot_id()
        self._attempts: dict[tuple[str, str, str], Attempt] = {}

    def adopt(self, attempt: Attempt) -> None:
        """An open attempt found at start: ``finished`` / ``retrying`` end it."""
        self._attempts[(attempt.kind, attempt.job_id.casefold(), attempt.task_id.casefold())] = attempt

    def _owner(self, kind: str, job_id: str, task_id: str) -> tuple[str, str, str]:
        k = attempt_kind(kind)
        if k == "task":
            return k, job_id, task_id
        return k, ("" if kind == START else job_id), ""

    async def abandon(self, kind: str, job_id: str, task_id: str) -> None:
        """The runner lost the attempt (``run_durable`` gave None): end its record."""
        await self._end_attempt(kind, job_id, task_id)

    async def _end_attempt(self, kind: str, job_id: str, task_id: str) -> None:
        attempt = self._ended(kind, job_id, task_id)
        if attempt is not None:
            await self.core.call(lambda s: s.save_attempt(attempt))

    def _ended(self, kind: str, job_id: str, task_id: str) -> Attempt | None:
        """The open attempt of this owner, marked ended now (saved by the caller's transaction)."""
        k, j, t = self._owner(kind, job_id, task_id)
        attempt = self._attempts.pop((k, j.casefold(), t.casefold()), None)
        return None if attempt is None else replace(attempt, ended=utcnow())

    async def _task(self, job_id: str, task_id: str, changes: TaskChanges,
                    expect: Expect = LIVE) -> TaskRecord | None:
        def go(s: Store) -> TaskRecord | None:
            try:
                done = s.transition_task(job_id, task_id, expect, changes)
            except (JobNotFound, TaskNotFound):
                return None
            return None if isinstance(done, Conflict) else done
        return await self.core.call(go)

    async def _special(self, kind: str, job_id: str, info: Mapping[str, Any]) -> None:
        field = "preparation" if kind == JOB_PREPARATION else "release"

        def go(s: Store) -> None:
            for _ in range(10):
                try:
                    current = s.get_prep_release(job_id)
                except JobNotFound:
                    return
                done = s.put_prep_release(job_id, current.etag if current else None, **{field: dict(info)})
                if not isinstance(done, Conflict):
                    return
        await self.core.call(go)

    # ---- the Journal protocol ------------------------------------------------------------

    async def starting(self, request: AttemptStarting) -> None:
        dirs = self.core.runner.dirs_for(request.kind, request.job_id, request.task_id)
        if request.kind in (JOB_PREPARATION, JOB_RELEASE):
            await self._special(request.kind, request.job_id, running_info(request.info, dirs.relative))
        elif request.kind == START:
            self.start_status(running_info(request.info, dirs.relative))
        else:
            await self._task(request.job_id, request.task_id, TaskChanges(
                state=T_RUNNING, execution_info=request.info,
                node_info=self.core.runner.node_info(dirs).to_json()), STARTABLE)

    async def started(self, request: AttemptStarted) -> None:
        k, j, t = self._owner(request.kind, request.job_id, request.task_id)
        attempt = Attempt(kind=k, job_id=j, task_id=t, number=request.attempt,
                          handle=request.handle.to_json(), started=utcnow())
        self._attempts[(k, j.casefold(), t.casefold())] = attempt
        if k == "task":
            await self._task(request.job_id, request.task_id, TaskChanges(state=T_RUNNING, attempt=attempt))
        else:
            await self.core.call(lambda s: s.save_attempt(attempt))

    async def killing(self, kind: str, job_id: str, task_id: str, why: str) -> None:
        """The agent is about to kill the attempt (terminate, wall clock): recorded in its open
        attempt, one transaction, before the first signal, so a restarted agent ends it as
        killed by the agent (``recovery``: ``TaskRunner.resume(killed=why)``)."""
        k, j, t = self._owner(kind, job_id, task_id)
        owner = (k, j.casefold(), t.casefold())
        attempt = self._attempts.get(owner)
        if attempt is None:
            return
        marked = self._attempts[owner] = replace(attempt, handle={**attempt.handle, KILL_KEY: why})
        await self.core.call(lambda s: s.save_attempt(marked))

    async def retrying(self, request: AttemptRetrying) -> None:
        if attempt_kind(request.kind) != "task":
            await self._end_attempt(request.kind, request.job_id, request.task_id)
            return
        ended = self._ended(request.kind, request.job_id, request.task_id)      # one transaction
        await self._task(request.job_id, request.task_id, TaskChanges(execution_info=request.info, attempt=ended))

    async def finished(self, request: TaskFinished) -> None:
        status = request.outcome.status
        if request.kind in (JOB_PREPARATION, JOB_RELEASE):
            info = special_task_info(request.outcome, retries=request.kind == JOB_PREPARATION)
            if request.kind == JOB_PREPARATION:
                info[BOOT_KEY] = self.boot
            await self._special(request.kind, request.job_id, info)
            await self._end_attempt(request.kind, request.job_id, request.task_id)
            return
        if request.kind == START:
            self.start_status({**special_task_info(request.outcome, retries=True), BOOT_KEY: self.boot})
            await self._end_attempt(request.kind, request.job_id, request.task_id)
            return
        entry = self.core.running.get(key(request.job_id, request.task_id))
        ended = self._ended(request.kind, request.job_id, request.task_id)      # in the same transaction
        record: TaskRecord | None
        if entry is not None and entry.requeue:
            record = await self._task(request.job_id, request.task_id, TaskChanges(
                state=T_ACTIVE, execution_info=requeued(status.execution_info), attempt=ended))
        else:
            decision = status.decision
            record = await self._task(request.job_id, request.task_id, TaskChanges(
                state=T_COMPLETED, execution_info=status.execution_info,
                node_info=status.node_info.to_json() if status.node_info else UNSET,
                dependency_action=decision.dependency_action if decision else
                ("satisfy" if status.execution_info.failure_info is None else "block"), attempt=ended))
        if record is None and ended is not None:                # the task was deleted meanwhile
            await self.core.call(lambda s: s.save_attempt(ended))
        await self.after_task(request, record)


def format_now() -> str | None:
    return format_time(utcnow())
