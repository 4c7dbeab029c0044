"""``NodeService``: the commands the API and ``run-job`` call, and the scheduler's loop.

Owns: validating a body with ``agent.spec`` before storing it, the lifecycle checks of each
command (typed ``agent.errors.ServiceError`` refusals), and the loop (``serve`` forever,
``run_until_idle`` in bursts). Must not: talk HTTP (the API maps the errors), or kill tasks on
``stop`` (a stopped or upgraded agent leaves its tasks running; the next one re-attaches).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent import errors
from agent.errors import ServiceError
from agent.exits import Outcome, decide
from agent.hooks.gate import GateHook
from agent.service import jobs
from agent.service.core import Core, key
from agent.service.journal import StoreJournal
from agent.service.prep_release import PrepRelease
from agent.service.recovery import recover
from agent.service.retention import Retention
from agent.service.scheduler import Scheduler
from agent.service.start_task import StartTaskGate
from agent.spec import JobSpec, StartTask, TaskCollection, TaskSpec, load_data
from agent.status import format_time, utcnow
from agent.store import (
    Conflict,
    Expect,
    JobChanges,
    JobRecord,
    Rejected,
    Store,
    StoreThread,
    TaskChanges,
    TaskRecord,
)
from agent.store import JobExists as StoreJobExists
from agent.store import JobNotFound as StoreJobNotFound
from agent.store import TaskExists as StoreTaskExists
from agent.store import TaskNotFound as StoreTaskNotFound
from agent.taskrunner import TaskRunner, ended_by_user
from agent.tokens import TaskClaims, TaskTokens
from agent.users import UserPolicy, policy_from_config

MAX_IDLE_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class AddResult:
    """One task of an add-collection: the record, or the Batch error code and reason."""

    id: str
    record: TaskRecord | None = None
    error: ServiceError | None = None


class NodeService:
    """The node's job and task service. Create it inside a running event loop, then ``await
    start()`` (recovery, start task), then ``serve()`` (or ``run_until_idle()``)."""

    def __init__(self, store: Store | StoreThread, runner: TaskRunner, *, slots: int = 1,
                 start_task: StartTask | None = None, state_dir: Path | None = None,
                 tokens: TaskTokens | None = None, user_policy: UserPolicy | None = None) -> None:
        thread = store if isinstance(store, StoreThread) else StoreThread(store)
        self.core = Core(thread, runner, slots, user_policy or policy_from_config(runner.config))
        self.gate = StartTaskGate(self.core, start_task, state_dir)
        self.journal = StoreJournal(self.core, after_task=self._after_task, start_status=self.gate.record)
        self.prep = PrepRelease(self.core, self.journal)
        self.retention = Retention(self.core)
        self.scheduler = Scheduler(self.core, self.journal, self.prep, self.retention)
        self.tokens = tokens.with_liveness(self.token_is_live) if tokens is not None else None
        if self.tokens is not None:
            runner.issue_token = self.tokens.issue
        # The fields this service implements on top of the runner's hooks: the gate lets them pass.
        served = {"dependsOn", *(("authenticationTokenSettings",) if self.tokens is not None else ())}
        runner.prestart = [GateHook(hook.supported | served) if isinstance(hook, GateHook) else hook
                           for hook in runner.prestart]
        self._started = False

    async def _after_task(self, request: Any, record: TaskRecord | None) -> None:
        await self.scheduler.after_task(request, record)

    # ---- life of the service -------------------------------------------------------------

    async def start(self) -> int:
        """Recover what a previous agent left (returns the number of tasks requeued), load the
        retention schedule, start the start task."""
        if self._started:
            return 0
        self._started = True
        requeued = await recover(self.core, self.scheduler, self.prep, self.gate, self.journal)
        await self.retention.load()
        if self.gate.spec is not None:
            self.core.spawn(self.gate.run(self.journal), "start task")
        return requeued

    async def _step(self) -> bool:
        self.core.wake_event.clear()
        self.scheduler.gate_open = self.gate.ready
        moved = await self.scheduler.pass_once()
        return await self.retention.run_due() or moved

    def _timeout(self) -> float:
        due = [d for d in (self.scheduler.next_deadline, self.retention.next_due()) if d is not None]
        if not due:
            return MAX_IDLE_WAIT
        return max(0.0, min(MAX_IDLE_WAIT, (min(due) - utcnow()).total_seconds()))

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.core.wake_event.wait(), self._timeout())

    async def serve(self) -> None:
        """Schedule until cancelled. Cancelling leaves running tasks alone (no kill)."""
        await self.start()
        while True:
            await self._step()
            await self._wait()

    async def run_until_idle(self) -> None:
        """Burst mode (tests, ``run-job``): schedule until nothing can make progress."""
        await self.start()
        while True:
            moved = await self._step()
            if not moved and not self.core.busy():
                return
            await self._wait()

    async def drain(self) -> None:
        """Stop admitting; return when the tasks running now have ended."""
        self.core.admitting = False
        while self.core.running:
            await asyncio.wait([e.task for e in self.core.running.values() if e.task is not None] or
                               [asyncio.ensure_future(asyncio.sleep(0))])

    async def stop(self) -> None:
        """Stop this agent's coroutines without touching the tasks' processes."""
        for task in list(self.core.background):
            task.cancel()
        if self.core.background:
            await asyncio.wait(list(self.core.background))

    async def aclose(self) -> None:
        await self.stop()
        await self.core.store.aclose()

    def token_is_live(self, claims: TaskClaims) -> bool:
        return key(claims.job_id, claims.task_id) in self.core.running

    # ---- helpers ----------------------------------------------------------------------

    async def _call(self, fn: Any, job_id: str, task_id: str | None = None) -> Any:
        try:
            return await self.core.call(fn)
        except (StoreJobNotFound, StoreTaskNotFound) as exc:
            raise jobs.not_found(exc, job_id, task_id) from None

    async def get_job(self, job_id: str) -> JobRecord:
        record: JobRecord = await self._call(lambda s: s.get_job(job_id), job_id)
        return record

    async def get_task(self, job_id: str, task_id: str) -> TaskRecord:
        record: TaskRecord = await self._call(lambda s: s.get_task(job_id, task_id), job_id, task_id)
        return record

    # ---- jobs -------------------------------------------------------------------------

    async def add_job(self, body: Mapping[str, Any]) -> JobRecord:
        """Validate and store a job (its job manager task as its first task). Raises SpecError, JobExists."""
        spec = load_data(dict(body), kind="job", source="job").model
        assert isinstance(spec, JobSpec)
        new = replace(jobs.new_job(spec, body), execution_info={"startTime": format_time(utcnow()),
                                                                 "poolId": self.core.runner.node.pool_id})
        jm = jobs.job_manager_task(spec)

        def go(s: Store) -> JobRecord:
            record = s.add_job(new)
            if jm is not None:
                s.add_task(record.id, jm)
            return record
        try:
            record: JobRecord = await self.core.call(go)
        except StoreJobExists:
            raise errors.JobExists(f"a job {spec.id!r} exists on this node (ids ignore case)") from None
        self.core.wake()
        return record

    async def update_job(self, job_id: str, body: Mapping[str, Any], *, replace_all: bool,
                         if_match: str | None = None) -> JobRecord:
        """PUT (``replace_all``) or PATCH of priority, constraints, onAllTasksComplete, onTaskFailure."""
        job = await self.get_job(job_id)
        jobs.refuse_for_job_state(job.state, job.id, what="update it")
        merged = jobs.merged_job_body(job.body, body, replace=replace_all)
        spec = load_data(merged, kind="job", source="job").model
        assert isinstance(spec, JobSpec)
        changes = JobChanges(body=merged, priority=spec.priority or 0,
                             on_all_tasks_complete=spec.on_all_tasks_complete or "noaction",
                             on_task_failure=spec.on_task_failure or "noaction")
        done = await self._call(lambda s: s.transition_job(job_id, Expect(etag=if_match or job.etag), changes), job_id)
        if isinstance(done, Conflict):
            raise errors.ConditionNotMet(f"job {job_id!r} changed meanwhile (eTag)")
        self.core.wake()
        assert isinstance(done, JobRecord)
        return done

    async def terminate_job(self, job_id: str, reason: str | None = None) -> None:
        job = await self.get_job(job_id)
        jobs.refuse_for_job_state(job.state, job.id, what="terminate it")
        if not await self.scheduler.end_job(job_id, reason or "UserTerminate"):
            job = await self.get_job(job_id)
            jobs.refuse_for_job_state(job.state, job.id, what="terminate it")

    async def delete_job(self, job_id: str) -> None:
        job = await self.get_job(job_id)
        if job.state == jobs.DELETING:
            raise errors.JobBeingDeleted(f"job {job_id!r} is being deleted already")
        await self.scheduler.end_job(job_id, "", delete=True)

    async def disable_job(self, job_id: str, disable_tasks: str) -> None:
        """``disableTasks``: requeue (running tasks back to active), terminate, or wait."""
        if disable_tasks not in ("requeue", "terminate", "wait"):
            raise errors.InvalidPropertyValue("disableTasks: use requeue, terminate or wait", path="disableTasks")
        job = await self.get_job(job_id)
        jobs.refuse_for_job_state(job.state, job.id, what="disable it")
        if not await self.scheduler.disable_job(job_id, disable_tasks):
            raise errors.JobNotActive(f"job {job_id!r} is {job.state}; only an active job can be disabled")

    async def enable_job(self, job_id: str) -> None:
        job = await self.get_job(job_id)
        jobs.refuse_for_job_state(job.state, job.id, what="enable it")
        if job.state not in (jobs.DISABLED, jobs.DISABLING):
            raise ServiceError(f"job {job_id!r} is {job.state}; only a disabled job can be enabled")
        await self.scheduler.set_job_state(job_id, jobs.ENABLING, frozenset({jobs.DISABLED, jobs.DISABLING}))
        await self.scheduler.set_job_state(job_id, jobs.ACTIVE, frozenset({jobs.ENABLING}))

    async def prep_release_status(self, job_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(jobPreparationTaskExecutionInfo, jobReleaseTaskExecutionInfo) on this node."""
        await self.get_job(job_id)
        return await self.prep.status(job_id)

    def start_task_info(self) -> dict[str, Any] | None:
        return self.gate.info()

    # ---- tasks ------------------------------------------------------------------------

    async def _job_for_add(self, job_id: str) -> tuple[JobRecord, JobSpec]:
        job = await self.get_job(job_id)
        jobs.refuse_for_job_state(job.state, job.id, what="add tasks")
        return job, self.scheduler.spec(job)

    async def add_task(self, job_id: str, body: Mapping[str, Any]) -> TaskRecord:
        job, spec = await self._job_for_add(job_id)
        task = load_data(dict(body), kind="task", source="task").model
        assert isinstance(task, TaskSpec)
        jobs.check_task(job, spec, task)
        try:
            done = await self._call(lambda s: s.add_task(job_id, jobs.new_task(task, body),
                                                         job_states=jobs.OPEN_JOB_STATES), job_id)
        except StoreTaskExists:
            raise errors.TaskExists(f"a task {task.id!r} exists in job {job_id!r} (ids ignore case)") from None
        if isinstance(done, Conflict):
            jobs.refuse_for_job_state(done.current.state, job_id, what="add tasks")
        self.core.wake()
        assert isinstance(done, TaskRecord)
        return done

    async def add_tasks(self, job_id: str, body: Mapping[str, Any]) -> list[AddResult]:
        """Add a collection (at most 100): one result per task, in the order sent."""
        job, spec = await self._job_for_add(job_id)
        collection = load_data(dict(body), kind="collection", source="collection").model
        assert isinstance(collection, TaskCollection)
        raw = list(body["value"])
        results: list[AddResult | None] = []
        new = []
        for i, task in enumerate(collection.value):
            try:
                jobs.check_task(job, spec, task, path=f"value[{i}].")
                new.append(jobs.new_task(task, raw[i]))
                results.append(None)
            except ServiceError as exc:
                results.append(AddResult(task.id, error=exc))
        done = await self._call(lambda s: s.add_tasks(job_id, new, job_states=jobs.OPEN_JOB_STATES), job_id)
        if isinstance(done, Conflict):
            jobs.refuse_for_job_state(done.current.state, job_id, what="add tasks")
        assert isinstance(done, list)
        added = iter(done)
        out: list[AddResult] = []
        for i, result in enumerate(results):
            if result is not None:
                out.append(result)
                continue
            item = next(added)
            if isinstance(item, Rejected):
                out.append(AddResult(item.id, error=errors.TaskExists(f"value[{i}].id: a task {item.id!r} exists")))
            else:
                out.append(AddResult(item.id, record=item))
        self.core.wake()
        return out

    async def update_task(self, job_id: str, task_id: str, constraints: Mapping[str, Any] | None) -> TaskRecord:
        """Replace a task's constraints (the only field a node lets a client change)."""
        task = await self.get_task(job_id, task_id)
        if task.state == jobs.T_COMPLETED:
            raise errors.TaskCompleted(f"task {task_id!r} is completed; its constraints no longer matter")
        body = {k: v for k, v in task.body.items() if k != "constraints"}
        if constraints is not None:
            body["constraints"] = dict(constraints)
        if not body.get(jobs.JM_MARK):
            load_data(dict(body), kind="task", source="task")
        done = await self._call(lambda s: s.transition_task(job_id, task_id, Expect(etag=task.etag),
                                                            TaskChanges(body=body)), job_id, task_id)
        if isinstance(done, Conflict):
            raise errors.ConditionNotMet(f"task {task_id!r} changed meanwhile (eTag)")
        assert isinstance(done, TaskRecord)
        return done

    async def terminate_task(self, job_id: str, task_id: str) -> None:
        task = await self.get_task(job_id, task_id)
        if task.state == jobs.T_COMPLETED:
            raise errors.TaskCompleted(f"task {task_id!r} is completed already")
        if key(job_id, task_id) in self.core.running:
            self.core.runner.terminate(task.job_id, task.id)
            return
        spec = jobs.task_spec(task)
        now = utcnow()
        info = replace(task.execution_info, end_time=now, failure_info=ended_by_user(), exit_code=None)
        decision = decide(getattr(spec, "exit_conditions", None), Outcome.pre_processing())
        done = await self._call(lambda s: s.transition_task(
            job_id, task_id, Expect(states=frozenset({jobs.T_ACTIVE})),
            TaskChanges(state=jobs.T_COMPLETED, execution_info=info,
                        dependency_action=decision.dependency_action)), job_id, task_id)
        if isinstance(done, Conflict):
            if key(job_id, task_id) in self.core.running:           # admitted meanwhile
                self.core.runner.terminate(task.job_id, task.id)
            else:
                raise errors.TaskCompleted(f"task {task_id!r} is completed already")
        self.core.wake()

    async def delete_task(self, job_id: str, task_id: str) -> None:
        """Delete a task; a running one is killed; its directory goes at once."""
        task = await self.get_task(job_id, task_id)
        entry = self.core.running.get(key(job_id, task_id))
        await self._call(lambda s: s.delete_task(job_id, task_id, Expect()), job_id, task_id)
        if entry is not None:
            entry.deleted = True                # its end removes the directory
            self.core.runner.terminate(task.job_id, task.id)
        else:
            await asyncio.to_thread(self.core.remove_task_dir, task.job_id, task.id)
        self.core.wake()

    async def reactivate_task(self, job_id: str, task_id: str) -> TaskRecord:
        """A failed completed task back to active, its retries counted again from 0."""
        job = await self.get_job(job_id)
        jobs.refuse_for_job_state(job.state, job.id, what="reactivate its tasks")
        task = await self.get_task(job_id, task_id)
        if task.state != jobs.T_COMPLETED:
            raise errors.TaskNotCompleted(f"task {task_id!r} is {task.state}; only a completed task can be "
                                          f"reactivated")
        if task.execution_info.failure_info is None:
            raise errors.TaskSucceeded(f"task {task_id!r} succeeded; only a failed task can be reactivated")
        info = replace(task.execution_info, start_time=None, end_time=None, exit_code=None, failure_info=None,
                       container_info=None, retry_count=0, last_retry_time=None)
        done = await self._call(lambda s: s.transition_task(
            job_id, task_id, Expect(etag=task.etag, states=frozenset({jobs.T_COMPLETED})),
            TaskChanges(state=jobs.T_ACTIVE, execution_info=info, dependency_action=None)), job_id, task_id)
        if isinstance(done, Conflict):
            raise errors.ConditionNotMet(f"task {task_id!r} changed meanwhile")
        self.core.wake()
        assert isinstance(done, TaskRecord)
        return done


__all__ = ["AddResult", "NodeService"]
