"""Admission onto the node's slots, and what a job does as its tasks end (§6, §9, §10, §13).

Owns, per pass (``pass_once``, run whenever something changed and at the next deadline):
- jobs: a terminating / deleting job has its running tasks ended, its release task run (if its
  preparation ran here), then becomes ``completed`` (or is removed with its directories); a
  ``disabling`` job becomes ``disabled`` once none of its tasks runs; an active job past its
  ``constraints.maxWallClockTime`` terminates (``MaxWallClockTimeExpiry``); an active job with
  ``onAllTasksComplete: terminatejob`` and no active or running task terminates
  (``AllTasksComplete``; a job without tasks counts as all complete, as in Batch);
- tasks: ``store.next_runnable`` (job priority, then submission order) admitted while free
  slots hold their ``requiredSlots``. A task needing more slots than the node has stays
  ``active`` (Batch places a task only on a node with that many free slots, §10.4, and a
  single-node pool has no other: it is never placed; adding it is not refused). A task with
  ``dependsOn`` waits for its parents (a missing parent too) and stays active for good when one
  blocks; a job whose preparation failed with ``waitForSuccess`` has its tasks left active.
  An admitted task goes ``preparing`` (its job's preparation runs once here, shared by every
  task admitted meanwhile), then ``running`` through ``TaskRunner.run`` with the store journal.
- after a task: the exit decision's job action (``onTaskFailure: performexitoptionsjobaction``:
  ``terminate`` -> the job terminates with ``TaskFailed``; ``disable`` -> disabled, tasks
  requeued), ``killJobOnCompletion`` of the job manager (``JMComplete``), retention.

The job manager task is a task of its job (added with the job, so it is first in submission
order); ``runExclusive`` is not honoured: on a one-node pool it would starve the very tasks
the manager waits for. Must not: talk HTTP, kill a task on its own account (only through
``TaskRunner.terminate``), or block the loop (the store is reached through its thread).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from agent.lifecycle import JOB_MANAGER, TASK, TaskFinished
from agent.service import jobs
from agent.service.core import Core, Running, jobs_page, key, runnable_page, tasks_page
from agent.service.jobs import Deps
from agent.service.journal import StoreJournal, requeue_task
from agent.service.prep_release import PrepRelease
from agent.service.retention import Retention
from agent.spec import JobManagerTask, JobSpec
from agent.status import JobState, format_time, parse_time, utcnow
from agent.store import Conflict, Expect, JobChanges, JobRecord, Store, TaskChanges, TaskRecord

PAGE = 200


class Scheduler:
    def __init__(self, core: Core, journal: StoreJournal, prep: PrepRelease, retention: Retention) -> None:
        self.core = core
        self.journal = journal
        self.prep = prep
        self.retention = retention
        self.gate_open = True               # the start task's waitForSuccess
        self._ending: dict[str, asyncio.Task[None]] = {}
        self._specs: dict[tuple[str, str], JobSpec] = {}
        self._deps: dict[tuple[str, str, str], jobs.DependsOn | None] = {}
        self.next_deadline: datetime | None = None
        self._pass_jobs: dict[str, JobRecord] = {}      # active jobs as this pass read them

    def spec(self, job: JobRecord) -> JobSpec:
        k = (job.id.casefold(), job.etag)
        spec = self._specs.get(k)
        if spec is None:
            if len(self._specs) > 1000:
                self._specs.clear()
            spec = self._specs[k] = jobs.job_spec(job)
        return spec

    # ---- one pass ------------------------------------------------------------------------

    async def pass_once(self) -> bool:
        """Act on everything that can move now; True if something did."""
        self.next_deadline = None
        moved = await self._jobs_pass()
        if self.core.admitting and self.gate_open:
            moved = await self._admit() or moved
        return moved

    async def _all_jobs(self, states: frozenset[str]) -> list[JobRecord]:
        out: list[JobRecord] = []
        token: str | None = None
        while True:
            page = await self.core.call(jobs_page(token, states))
            out += page.items
            token = page.next_token
            if token is None:
                return out

    async def _jobs_pass(self) -> bool:
        moved = False
        now = utcnow()
        found = await self._all_jobs(frozenset({jobs.ACTIVE, jobs.DISABLING, *jobs.ENDING_JOB_STATES}))
        self._pass_jobs = {job.id.casefold(): job for job in found if job.state == jobs.ACTIVE}
        for job in found:
            if job.state in jobs.ENDING_JOB_STATES:
                if job.id.casefold() not in self._ending:
                    self._ending[job.id.casefold()] = self.core.spawn(self._end(job), f"end job {job.id}")
                    moved = True
            elif job.state == jobs.DISABLING:
                if not any(r.job_id.casefold() == job.id.casefold() for r in self.core.running.values()):
                    moved = await self.set_job_state(job.id, jobs.DISABLED, frozenset({jobs.DISABLING})) or moved
            else:
                moved = await self._check_active(job, now) or moved
        return moved

    async def _check_active(self, job: JobRecord, now: datetime) -> bool:
        spec = self.spec(job)
        limit = spec.constraints.max_wall_clock_time if spec.constraints else None
        started = parse_time(job.execution_info.get("startTime")) or job.creation_time
        if limit is not None:
            deadline = started + limit
            if deadline <= now:
                return await self.end_job(job.id, "MaxWallClockTimeExpiry")
            if self.next_deadline is None or deadline < self.next_deadline:
                self.next_deadline = deadline
        if job.on_all_tasks_complete == "terminatejob":
            counts = await self.core.call(lambda s: s.task_counts(job.id))
            if counts.tasks.active == 0 and counts.tasks.running == 0:
                return await self.end_job(job.id, "AllTasksComplete")
        return False

    async def _admit(self) -> bool:
        free = self.core.slots - self.core.used_slots()
        moved = False
        token: str | None = None
        # The first page is sized to what can be admitted (the tasks this agent runs may still
        # read active, and a few may wait on dependencies or slots): reading and decoding 200
        # records at every task's end was a third of the store thread's time.
        limit = min(PAGE, free + len(self.core.running) + 16)
        while free > 0:
            page = await self.core.call(runnable_page(limit, token))
            limit = PAGE
            for rec in page.items:
                if free <= 0:
                    break
                if (key(rec.job_id, rec.id) in self.core.running or rec.required_slots > free
                        or rec.job_id.casefold() in self.prep.blocked):
                    continue
                if not await self._dependencies_met(rec):
                    continue
                if await self._claim(rec):
                    free -= rec.required_slots
                    moved = True
            token = page.next_token
            if token is None:
                break
        return moved

    async def _dependencies_met(self, rec: TaskRecord) -> bool:
        k = (rec.job_id.casefold(), rec.id.casefold(), rec.etag)
        if k not in self._deps:
            if len(self._deps) > 10000:
                self._deps.clear()
            self._deps[k] = jobs.depends_on(jobs.task_spec(rec))       # parsed once per body
        dep = self._deps[k]
        if dep is None:
            return True
        parents = await self.core.call(lambda s: s.find_tasks(rec.job_id, dep.ids, dep.ranges))
        return jobs.dependency_verdict(dep, parents) is Deps.READY

    async def _claim(self, rec: TaskRecord) -> bool:
        job = self._pass_jobs.get(rec.job_id.casefold())       # read by this pass's job scan
        if job is None:
            job = await self.core.call(lambda s: s.get_job(rec.job_id))
        spec = self.spec(job)
        done: TaskRecord | Conflict[TaskRecord] = rec
        if spec.job_preparation_task is not None:
            # Batch shows the task preparing while its job's preparation runs. Without one, the
            # journal's ``starting`` makes it running (one write less; the in-memory table keeps
            # it from being admitted twice).
            done = await self.core.call(lambda s: s.transition_task(rec.job_id, rec.id, Expect(states=frozenset(
                {jobs.T_ACTIVE})), TaskChanges(state=jobs.T_PREPARING)))
            if isinstance(done, Conflict):
                return False
        assert isinstance(done, TaskRecord)
        self.core.runner.clear_stop(rec.job_id, rec.id)     # no await from here to the entry
        entry = Running(rec.job_id, rec.id, rec.required_slots)
        self.core.running[key(rec.job_id, rec.id)] = entry
        entry.task = self.core.spawn(self._run(done, spec), f"task {rec.job_id}/{rec.id}")
        return True

    async def _run(self, rec: TaskRecord, spec: JobSpec) -> None:
        k = key(rec.job_id, rec.id)
        try:
            if not await self.prep.ensure(spec):
                await self.core.call(lambda s: s.transition_task(rec.job_id, rec.id, Expect(states=jobs.T_LIVE),
                                                                 TaskChanges(state=jobs.T_ACTIVE)))
                return
            task = jobs.task_spec(rec)
            kind = JOB_MANAGER if isinstance(task, JobManagerTask) else TASK
            outcome = await self.core.runner.run_durable(task, job_id=rec.job_id, job=spec, kind=kind,
                                                         task_id=rec.id, journal=self.journal, info=rec.execution_info)
            if outcome is None:
                await self.journal.abandon(kind, rec.job_id, rec.id)
                await requeue_task(self.core, rec.job_id, rec.id)
        finally:
            entry = self.core.running.pop(k, None)
            if entry is not None and entry.deleted:
                self.core.remove_task_dir(rec.job_id, rec.id)

    # ---- after a task --------------------------------------------------------------------

    async def after_task(self, request: TaskFinished, record: TaskRecord | None) -> None:
        """The job's reaction to a finished task (journal hook)."""
        entry = self.core.running.get(key(request.job_id, request.task_id))
        if record is None or (entry is not None and (entry.requeue or entry.deleted)):
            return
        outcome = request.outcome
        retention = outcome.limits.retention if outcome.limits else None
        end = outcome.status.execution_info.end_time
        if retention is not None and end is not None:
            self.retention.schedule(request.job_id, request.task_id, end + retention)
        if request.kind == JOB_MANAGER:
            task = jobs.task_spec(record)
            if isinstance(task, JobManagerTask) and task.kill_job_on_completion:
                await self.end_job(request.job_id, "JMComplete")
                return
        if outcome.job_state == JobState.COMPLETED:
            await self.end_job(request.job_id, outcome.terminate_reason or "TaskFailed")
        elif outcome.job_state == JobState.DISABLED:
            await self.disable_job(request.job_id, "requeue")
        self.core.wake()

    # ---- job transitions -----------------------------------------------------------------

    async def set_job_state(self, job_id: str, state: str, expect: frozenset[str],
                            info: dict[str, Any] | None = None) -> bool:
        def go(s: Store) -> bool:
            job = s.get_job(job_id)
            changes = JobChanges(state=state, execution_info={**job.execution_info, **(info or {})})
            return not isinstance(s.transition_job(job_id, Expect(etag=job.etag, states=expect), changes), Conflict)
        moved = await self.core.call(go)
        if moved:
            self.core.wake()
        return moved

    async def end_job(self, job_id: str, reason: str, *, delete: bool = False) -> bool:
        """Terminate (or delete) a job: terminating / deleting now, the rest in ``_end``."""
        expect = frozenset({*jobs.OPEN_JOB_STATES, *( {jobs.TERMINATING, jobs.COMPLETED} if delete else ())})
        info = {} if delete else {"terminateReason": reason}
        return await self.set_job_state(job_id, jobs.DELETING if delete else jobs.TERMINATING, expect, info)

    async def disable_job(self, job_id: str, disable_tasks: str) -> bool:
        if not await self.set_job_state(job_id, jobs.DISABLING, frozenset({jobs.ACTIVE, jobs.ENABLING})):
            return False
        for entry in list(self.core.running.values()):
            if entry.job_id.casefold() != job_id.casefold():
                continue
            if disable_tasks == "requeue":
                entry.requeue = True
                self.core.runner.terminate(entry.job_id, entry.task_id)
            elif disable_tasks == "terminate":
                self.core.runner.terminate(entry.job_id, entry.task_id)
        return True

    async def _end(self, job: JobRecord) -> None:
        try:
            await self._end_job(job)
        finally:
            self._ending.pop(job.id.casefold(), None)

    async def _end_job(self, job: JobRecord) -> None:
        spec = self.spec(job)
        mine = [r for r in self.core.running.values() if r.job_id.casefold() == job.id.casefold()]
        for entry in mine:
            entry.deleted = entry.deleted or job.state == jobs.DELETING
            self.core.runner.terminate(entry.job_id, entry.task_id)
        waits = [e.task for e in mine if e.task is not None]
        if waits:
            await asyncio.wait(waits)
        resuming = self.prep.release_running(job.id)
        if resuming is not None:
            await asyncio.wait([resuming])
        await self.prep.release(spec)
        if job.state == jobs.DELETING:
            ids = await self._task_ids(job.id)
            await self.core.call(lambda s: s.delete_job(job.id, Expect()))
            await asyncio.to_thread(self.core.remove_job_dir, job.id, ids)
            self.retention.forget_job(job.id)
        else:
            await self.set_job_state(job.id, jobs.COMPLETED, frozenset({jobs.TERMINATING}),
                                     {"endTime": format_time(utcnow())})

    async def _task_ids(self, job_id: str) -> list[str]:
        ids: list[str] = []
        token: str | None = None
        while True:
            page = await self.core.call(tasks_page(job_id, token))
            ids += [t.id for t in page.items]
            token = page.next_token
            if token is None:
                return ids

    async def requeue(self, job_id: str, task_id: str) -> None:
        await requeue_task(self.core, job_id, task_id)
        self.core.wake()
