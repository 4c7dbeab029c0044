"""Retention (§5): a completed task's directory is deleted after its ``retentionTime``.

Owns: the schedule of deletions (a heap of due times, filled as tasks complete and, at start,
from the completed tasks in the store), and running the due ones. The deletion itself is
``Core.remove_task_dir``: through ``agent.nodefs`` (a link the task planted is deleted, never
followed), then the task's per-task account (``userdel`` once no process of its uid is left).
Deletion at once when a task or job is deleted is the commands' (``node``), not this schedule's.
Must not: delete anything of a task that is not completed.
"""

from __future__ import annotations

import asyncio
import heapq
from datetime import datetime

from agent.service.core import Core, get_task, jobs_page, key, tasks_page
from agent.service.jobs import T_COMPLETED
from agent.status import utcnow
from agent.store import JobNotFound, TaskNotFound
from agent.taskrunner import limits_for


class Retention:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._due: list[tuple[datetime, str, str]] = []

    def schedule(self, job_id: str, task_id: str, when: datetime) -> None:
        heapq.heappush(self._due, (when, job_id, task_id))
        self.core.wake()

    def forget_job(self, job_id: str) -> None:
        self._due = [d for d in self._due if d[1].casefold() != job_id.casefold()]
        heapq.heapify(self._due)

    def next_due(self) -> datetime | None:
        return self._due[0][0] if self._due else None

    async def load(self) -> None:
        """At start: every completed task whose directory is still there."""
        from agent.service import jobs

        token: str | None = None
        while True:
            page = await self.core.call(jobs_page(token))
            for job in page.items:
                spec = jobs.job_spec(job)
                ttoken: str | None = None
                while True:
                    tpage = await self.core.call(tasks_page(job.id, ttoken, frozenset({T_COMPLETED})))
                    for task in tpage.items:
                        end = task.execution_info.end_time
                        limits = limits_for(jobs.task_spec(task), spec)
                        if end is not None and limits.retention is not None and \
                                self.core.layout.task(job.id, task.id).task_dir.exists():
                            heapq.heappush(self._due, (end + limits.retention, job.id, task.id))
                    ttoken = tpage.next_token
                    if ttoken is None:
                        break
            token = page.next_token
            if token is None:
                return

    async def run_due(self) -> bool:
        now = utcnow()
        moved = False
        while self._due and self._due[0][0] <= now:
            _, job_id, task_id = heapq.heappop(self._due)
            if key(job_id, task_id) in self.core.running:
                continue
            try:
                task = await self.core.call(get_task(job_id, task_id))
            except (JobNotFound, TaskNotFound):
                task = None
            if task is not None and task.state != T_COMPLETED:
                continue                # reactivated meanwhile: a later completion schedules it again
            await asyncio.to_thread(self.core.remove_task_dir, job_id, task_id)
            moved = True
        return moved
