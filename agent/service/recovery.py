"""Recovery at start: every attempt a previous agent left open is resumed or requeued.

Owns the rules (issue 8, "Restart safety"):
- an open task attempt: its task completed already -> the attempt is just ended; else
  ``TaskRunner.resume`` from the persisted handle (an attempt the agent was killing, marked
  by ``StoreJournal.killing``, has its kill finished and ends as killed by the agent; the
  runner's ``recover`` says whether its real exit result can still be had): resumed attempts
  finish as if never interrupted; a lost one (``recover`` False, or a runner without
  ``recover``: it kills what is left) is requeued:
  back to ``active``, ``requeueCount + 1``, ``lastRequeueTime`` (not a retry); the next attempt
  starts clean (the task dir hook empties ``wd``; downloads were temp files);
- a task found ``preparing`` / ``running`` without an open attempt (the agent died before its
  handle was written, e.g. during downloads, or right after the spawn) -> whatever the
  supervisor runs of it is killed (``TaskRunner.sweep_task``), then it is requeued;
- a preparation / release / start task attempt: resumed, or run again if lost; a release that
  was interrupted before its command started runs again when the scheduler ends the job.
Must not: kill a command whose result can still be had.
"""

from __future__ import annotations

from agent.lifecycle import JOB_MANAGER, TASK
from agent.runner import RunHandle
from agent.service import jobs
from agent.service.core import Core, Running, end_attempt, get_job, key, tasks_page
from agent.service.journal import KILL_KEY, StoreJournal, requeue_task
from agent.service.prep_release import PrepRelease
from agent.service.scheduler import Scheduler
from agent.service.start_task import StartTaskGate
from agent.spec import JobManagerTask, JobSpec
from agent.store import Attempt, JobNotFound, Store, TaskNotFound, TaskRecord
from agent.taskrunner import KILL_USER, KILL_WALL_CLOCK


async def recover(core: Core, scheduler: Scheduler, prep: PrepRelease, gate: StartTaskGate,
                  journal: StoreJournal) -> int:
    """Resume or requeue what a previous agent left; the number of tasks requeued."""
    attempts = await core.call(lambda s: s.open_attempts())
    resumed: set[tuple[str, str]] = set()
    for attempt in attempts:
        if attempt.kind == "task":
            if await _resume_task(core, scheduler, journal, attempt):
                resumed.add(key(attempt.job_id, attempt.task_id))
        elif attempt.kind == "starttask":
            core.spawn(gate.resume(attempt, journal), "resume start task")
        else:
            try:
                job = await core.call(get_job(attempt.job_id))
            except JobNotFound:
                await core.call(end_attempt(attempt))
                continue
            spec = scheduler.spec(job)
            if attempt.kind == "jobpreparation":
                core.spawn(prep.resume_prep(spec, attempt), f"resume prep {job.id}")
            else:
                prep.track_release(job.id, core.spawn(prep.resume_release(spec, attempt), f"resume release {job.id}"))
    requeued = 0
    for job in await scheduler._all_jobs(frozenset(jobs.OPEN_JOB_STATES | jobs.ENDING_JOB_STATES)):
        token: str | None = None
        while True:
            page = await core.call(tasks_page(job.id, token, jobs.T_LIVE))
            for task in page.items:
                if key(task.job_id, task.id) not in resumed:
                    # No handle: the agent may have died after its spawn; nothing of it may run on.
                    await core.runner.sweep_task(task.job_id, task.id)
                    await requeue_task(core, task.job_id, task.id)
                    requeued += 1
            token = page.next_token
            if token is None:
                break
    return requeued


async def _resume_task(core: Core, scheduler: Scheduler, journal: StoreJournal, attempt: Attempt) -> bool:
    def read(s: Store) -> tuple[TaskRecord | None, object]:
        try:
            task = s.get_task(attempt.job_id, attempt.task_id)
            return task, s.get_job(attempt.job_id)
        except (JobNotFound, TaskNotFound):
            return None, None
    task, job = await core.call(read)
    if task is None or task.state not in jobs.T_LIVE or job is None:
        await core.call(lambda s: s.end_attempt(attempt, attempt.started))
        return False
    from agent.store import JobRecord

    assert isinstance(job, JobRecord)
    spec = scheduler.spec(job)
    journal.adopt(attempt)
    core.runner.clear_stop(task.job_id, task.id)
    entry = Running(task.job_id, task.id, task.required_slots)
    core.running[key(task.job_id, task.id)] = entry
    entry.task = core.spawn(_resume(core, journal, task, spec, attempt), f"resume {task.job_id}/{task.id}")
    return True


async def _resume(core: Core, journal: StoreJournal, task: TaskRecord, spec: JobSpec, attempt: Attempt) -> None:
    k = key(task.job_id, task.id)
    try:
        body = jobs.task_spec(task)
        kind = JOB_MANAGER if isinstance(body, JobManagerTask) else TASK
        killing = attempt.handle.get(KILL_KEY)
        outcome = await core.runner.resume(body, job_id=task.job_id, job=spec, kind=kind, task_id=task.id,
                                           handle=RunHandle.from_json(attempt.handle), info=task.execution_info,
                                           journal=journal,
                                           killed=killing if killing in (KILL_USER, KILL_WALL_CLOCK) else None)
        if outcome is None:
            await core.call(lambda s: s.end_attempt(attempt, attempt.started))
            await requeue_task(core, task.job_id, task.id)
    finally:
        entry = core.running.pop(k, None)
        if entry is not None and entry.deleted:
            core.remove_task_dir(task.job_id, task.id)
