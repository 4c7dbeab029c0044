"""The ``Store`` protocol: every operation the node service needs from its durable state.

Owns: the contract both backends (``SqliteStore``, ``MemoryStore``) keep and the contract
tests in ``tests/test_store.py`` check. Must not: know Batch's lifecycle rules (which state may
follow which is the service's; the store records what it is told, guarded by ``Expect``).

Shape, chosen so that a later backend on Azure Storage tables (ETag-guarded writes) can follow:
- every write is one transaction on one record or one job's records, guarded by compare-and-swap
  (``Expect``: an eTag and/or a set of states); a lost race comes back as ``Conflict(current)``,
  a value, because it is ordinary flow for a service answering concurrent clients;
- a missing job or task raises (``JobNotFound`` / ``TaskNotFound``); adding a taken id raises
  (``JobExists`` / ``TaskExists``), except in ``add_tasks`` where each task gets its own result;
- ids are compared regardless of case and returned as first spelled;
- the store stamps ``creationTime``, ``lastModified``, ``stateTransitionTime`` and a new eTag on
  every write; ``executionInfo`` times are the caller's;
- lists page by an opaque continuation token on the creation order, so rows added while a client
  pages appear at the end and never shift a page; ``match`` is an extra predicate (the parts of an
  OData ``$filter`` the store does not index) applied before ``max_results`` counts.

The calls are synchronous and short; ``agent.store.aio.StoreThread`` runs them off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from agent.store.records import (
    UNSET,
    Attempt,
    Conflict,
    Expect,
    JobChanges,
    JobRecord,
    Json,
    NewJob,
    NewTask,
    Page,
    PrepReleaseRecord,
    Rejected,
    TaskChanges,
    TaskCounts,
    TaskRecord,
    _Unset,
)

MAX_RESULTS = 1000


class Store(Protocol):
    # ---- jobs
    def add_job(self, job: NewJob) -> JobRecord:
        """Add a job in state active. Raises JobExists."""
        ...

    def get_job(self, job_id: str) -> JobRecord:
        """Raises JobNotFound."""
        ...

    def list_jobs(self, *, states: frozenset[str] | None = None, max_results: int = MAX_RESULTS,
                  token: str | None = None, match: Callable[[JobRecord], bool] | None = None) -> Page[JobRecord]:
        ...

    def transition_job(self, job_id: str, expect: Expect, changes: JobChanges) -> JobRecord | Conflict[JobRecord]:
        """Apply ``changes`` if ``expect`` holds. Raises JobNotFound."""
        ...

    def delete_job(self, job_id: str, expect: Expect) -> Conflict[JobRecord] | None:
        """Remove the job with its tasks, attempts and prep/release status. Raises JobNotFound."""
        ...

    # ---- tasks
    def add_task(self, job_id: str, task: NewTask, *,
                 job_states: frozenset[str] | None = None) -> TaskRecord | Conflict[JobRecord]:
        """Add a task in state active; Conflict if the job's state is not in ``job_states``.

        Raises JobNotFound, TaskExists."""
        ...

    def add_tasks(self, job_id: str, tasks: Sequence[NewTask], *, job_states: frozenset[str] | None = None,
                  ) -> list[TaskRecord | Rejected] | Conflict[JobRecord]:
        """Add a collection in one transaction, one result per task in the order given.

        A taken id (also a repeat inside ``tasks``) is ``Rejected(id, "TaskExists")``; the
        others are added. Raises JobNotFound."""
        ...

    def get_task(self, job_id: str, task_id: str) -> TaskRecord:
        """Raises JobNotFound, TaskNotFound."""
        ...

    def find_tasks(self, job_id: str, ids: Iterable[str] = (),
                   ranges: Iterable[tuple[int, int]] = ()) -> list[TaskRecord]:
        """Tasks named in ``ids`` (any case) or whose id is an integer string within one of the
        inclusive ``ranges`` (leading zeros ignored): a dependent's parents. Missing ids are left out."""
        ...

    def list_tasks(self, job_id: str, *, states: frozenset[str] | None = None, max_results: int = MAX_RESULTS,
                   token: str | None = None, match: Callable[[TaskRecord], bool] | None = None,
                   ) -> Page[TaskRecord]:
        """Raises JobNotFound, BadToken."""
        ...

    def transition_task(self, job_id: str, task_id: str, expect: Expect,
                        changes: TaskChanges) -> TaskRecord | Conflict[TaskRecord]:
        """Apply ``changes`` (and save ``changes.attempt``) if ``expect`` holds, in one transaction.

        Raises JobNotFound, TaskNotFound."""
        ...

    def delete_task(self, job_id: str, task_id: str, expect: Expect) -> Conflict[TaskRecord] | None:
        """Remove the task and its attempts. Raises JobNotFound, TaskNotFound."""
        ...

    def task_counts(self, job_id: str) -> TaskCounts:
        """Tasks and their required slots by state. Raises JobNotFound."""
        ...

    # ---- scheduling
    def slots_in_use(self) -> int:
        """Sum of ``required_slots`` over tasks preparing or running, all jobs."""
        ...

    def next_runnable(self, limit: int, token: str | None = None) -> Page[TaskRecord]:
        """Active tasks of active jobs, in admission order: job priority (high first), then
        submission order. Dependencies are the scheduler's (``find_tasks``)."""
        ...

    # ---- job preparation / release status on this node
    def get_prep_release(self, job_id: str) -> PrepReleaseRecord | None:
        """None when neither ran yet. Raises JobNotFound."""
        ...

    def put_prep_release(self, job_id: str, expect_etag: str | None, *,
                         preparation: Json | _Unset | None = UNSET, release: Json | _Unset | None = UNSET,
                         ) -> PrepReleaseRecord | Conflict[PrepReleaseRecord | None]:
        """Write one or both infos if the current eTag is ``expect_etag`` (None: no record yet).

        Raises JobNotFound."""
        ...

    # ---- attempts (run handles)
    def save_attempt(self, attempt: Attempt) -> None:
        """Insert or replace the attempt (kind, job, task, number)."""
        ...

    def end_attempt(self, attempt: Attempt, ended: datetime) -> None:
        """Mark the attempt ended (its result is recorded elsewhere, e.g. transition_task)."""
        ...

    def open_attempts(self) -> list[Attempt]:
        """Attempts not ended, oldest first: what a restarted agent re-attaches or requeues."""
        ...

    def close(self) -> None:
        ...
