"""Job preparation and release on this node (batch-semantics.md §9).

Owns: running a job's preparation task once on this node before its first task (every task
admitted meanwhile waits on the same run, in state ``preparing``), deciding from its record
whether the job's tasks may run (``waitForSuccess``: a failed preparation blocks them, they go
back to ``active``), running it again after a reboot when ``rerunOnNodeRebootAfterSuccess``,
and running the release task once when the job ends, only if preparation ran here (its 15-minute
cap comes from the spec; it takes no slot). The records are the store's ``prep_release`` row in
REST shape plus ``x-agent-bootId`` (``status`` strips it for the API). An interrupted release
(its record still ``running``) runs again. Must not: admit tasks or change job states.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from agent.lifecycle import JOB_PREPARATION, JOB_RELEASE
from agent.runner import RunHandle
from agent.service.core import Core
from agent.service.journal import BOOT_KEY, StoreJournal
from agent.spec import JobSpec
from agent.status import ExecutionInfo, parse_time
from agent.store import UNSET, Attempt, Conflict, JobNotFound, Store
from agent.store.records import PrepReleaseRecord


def _completed(info: Mapping[str, Any] | None) -> bool:
    return info is not None and info.get("state") == "completed"


def _succeeded(info: Mapping[str, Any] | None) -> bool:
    return _completed(info) and info is not None and info.get("result") == "success"


def public(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if info is None else {k: v for k, v in info.items() if not k.startswith("x-agent-")}


def _info(data: Mapping[str, Any]) -> ExecutionInfo:
    info = ExecutionInfo.from_json(data)
    start = parse_time(data.get("startTime"))
    return ExecutionInfo(start_time=start, retry_count=info.retry_count) if start else info


class PrepRelease:
    def __init__(self, core: Core, journal: StoreJournal) -> None:
        self.core = core
        self.journal = journal
        self._prep: dict[str, asyncio.Future[bool]] = {}
        self._release: dict[str, asyncio.Task[None]] = {}
        self.blocked: set[str] = set()          # jobs whose failed preparation blocks their tasks here

    async def _record(self, job_id: str) -> PrepReleaseRecord | None:
        try:
            return await self.core.call(lambda s: s.get_prep_release(job_id))
        except JobNotFound:
            return None

    async def _put(self, job_id: str, **fields: Any) -> None:
        def go(s: Store) -> None:
            for _ in range(10):
                try:
                    current = s.get_prep_release(job_id)
                except JobNotFound:
                    return
                if not isinstance(s.put_prep_release(job_id, current.etag if current else None, **fields), Conflict):
                    return
        await self.core.call(go)

    def _verdict(self, spec: JobSpec, info: Mapping[str, Any] | None) -> bool:
        prep = spec.job_preparation_task
        ok = prep is None or not prep.wait_for_success or _succeeded(info)
        if not ok:
            self.blocked.add(spec.id.casefold())
        return ok

    async def ensure(self, spec: JobSpec) -> bool:
        """Run the preparation task if it has not run here; True when the job's tasks may run."""
        prep = spec.job_preparation_task
        if prep is None:
            return True
        k = spec.id.casefold()
        running = self._prep.get(k)
        if running is not None:
            return await asyncio.shield(running)
        # Registered before the first await: a second task admitted while the record is read
        # waits on this run instead of starting the preparation task a second time.
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._prep[k] = future
        try:
            record = await self._record(spec.id)
            info = record.preparation if record else None
            rerun = (_succeeded(info) and info is not None and info.get(BOOT_KEY) != self.journal.boot
                     and prep.rerun_on_node_reboot_after_success)
            if _completed(info) and not rerun:
                ok = self._verdict(spec, info)
                future.set_result(ok)
                return ok
            outcome = await self.core.runner.run_durable(prep, job_id=spec.id, job=spec, kind=JOB_PREPARATION,
                                                         task_id=prep.id, journal=self.journal)
            if outcome is None:                 # lost: it runs again for the next task admitted
                await self.journal.abandon(JOB_PREPARATION, spec.id, prep.id)
                await self._put(spec.id, preparation=None)
                future.set_result(False)
                return False
            record = await self._record(spec.id)
            ok = self._verdict(spec, record.preparation if record else None)
            future.set_result(ok)
            return ok
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()          # retrieved: the waiters see it, not the loop's handler
            raise
        finally:
            self._prep.pop(k, None)

    async def resume_prep(self, spec: JobSpec, attempt: Attempt) -> None:
        """A preparation task's command survived a restart: wait for it, or run it again."""
        prep = spec.job_preparation_task
        record = await self._record(spec.id)
        if prep is None or record is None or record.preparation is None:
            await self.core.call(lambda s: s.end_attempt(attempt, attempt.started))
            return
        self.journal.adopt(attempt)
        k = spec.id.casefold()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._prep[k] = future
        try:
            outcome = await self.core.runner.resume(prep, job_id=spec.id, job=spec, kind=JOB_PREPARATION,
                                                    task_id=prep.id, handle=RunHandle.from_json(attempt.handle),
                                                    info=_info(record.preparation), journal=self.journal)
            if outcome is None:
                await self.core.call(lambda s: s.end_attempt(attempt, attempt.started))
                await self._put(spec.id, preparation=None)      # lost: it runs again before a task
                future.set_result(False)
                return
            record = await self._record(spec.id)
            future.set_result(self._verdict(spec, record.preparation if record else None))
        finally:
            if not future.done():
                future.set_result(False)
            self._prep.pop(k, None)

    def release_running(self, job_id: str) -> asyncio.Task[None] | None:
        return self._release.get(job_id.casefold())

    async def release(self, spec: JobSpec) -> None:
        """Run the job release task once, if the preparation task ran here (§9)."""
        running = self._release.get(spec.id.casefold())
        if running is not None:
            await asyncio.shield(running)
            return
        rel = spec.job_release_task
        record = await self._record(spec.id)
        if rel is None or record is None or record.preparation is None or _completed(record.release):
            return
        pending = self._prep.get(spec.id.casefold())
        if pending is not None:
            await asyncio.wait([pending])
        for _ in range(3):                      # a lost attempt runs again
            outcome = await self.core.runner.run_durable(rel, job_id=spec.id, job=spec, kind=JOB_RELEASE,
                                                         task_id=rel.id, journal=self.journal)
            if outcome is not None:
                return
            await self.journal.abandon(JOB_RELEASE, spec.id, rel.id)

    async def resume_release(self, spec: JobSpec, attempt: Attempt) -> None:
        rel = spec.job_release_task
        record = await self._record(spec.id)
        if rel is None or record is None or _completed(record.release):
            await self.core.call(lambda s: s.end_attempt(attempt, attempt.started))
            return
        self.journal.adopt(attempt)
        outcome = await self.core.runner.resume(rel, job_id=spec.id, job=spec, kind=JOB_RELEASE, task_id=rel.id,
                                                handle=RunHandle.from_json(attempt.handle),
                                                info=_info(record.release or {}), journal=self.journal)
        if outcome is None:
            await self.core.call(lambda s: s.end_attempt(attempt, attempt.started))
            await self._put(spec.id, release=None)      # lost: the job's end runs it again

    def track_release(self, job_id: str, task: asyncio.Task[None]) -> None:
        k = job_id.casefold()
        self._release[k] = task
        task.add_done_callback(lambda _t: self._release.pop(k, None))

    async def status(self, job_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(jobPreparationTaskExecutionInfo, jobReleaseTaskExecutionInfo) on this node, REST shape."""
        record = await self._record(job_id)
        if record is None:
            return None, None
        return public(record.preparation), public(record.release)


__all__ = ["UNSET", "PrepRelease", "public"]
