"""The values the store keeps and hands back: jobs, tasks, attempts, prep/release status.

Owns: the record types (frozen, slotted), the change sets a transition applies, the guard a
compare-and-swap write checks (``Expect``), the ``Conflict`` value a lost race returns, pages
and counts, and the store's exceptions. Must not: parse Batch JSON semantics (a job's priority
or ``onTaskFailure`` are handed in by the service, not read out of the body here), log, or do
I/O. Both backends build exactly these values, so a test of one holds for the other.

The exceptions live here and not in ``agent.errors`` because that module is shared by work in
flight; they derive from ``agent.errors.StateError`` so the tree stays one tree:

    StateError
    └── StoreError              base of the store's own exceptions
        ├── StoreUnsafe         the state dir or a database file is readable by others / not ours
        ├── SchemaTooNew        the database was written by a newer agent
        ├── JobNotFound         no job with that id (any case)
        ├── TaskNotFound        no task with that id (any case) in that job
        ├── JobExists           add_job: the id is taken (any case)
        ├── TaskExists          add_task: the id is taken in the job (any case)
        └── BadToken            a continuation token this store did not issue
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from agent.errors import StateError
from agent.status import ExecutionInfo

JOB_STATES = frozenset({"active", "disabling", "disabled", "enabling", "terminating", "completed", "deleting"})
TASK_STATES = frozenset({"active", "preparing", "running", "completed"})
# Task counts report preparing under running (batch-api-routes.md §9.2).
RUNNING_STATES = frozenset({"preparing", "running"})
ATTEMPT_KINDS = frozenset({"task", "jobpreparation", "jobrelease", "starttask"})

Json = Mapping[str, Any]


class _Unset(enum.Enum):
    UNSET = 0


UNSET: Literal[_Unset.UNSET] = _Unset.UNSET
"""A field of a change set left alone (``None`` is a value: it clears the field)."""


def id_key(value: str) -> str:
    """The comparison key of a job or task id: ids are unique regardless of case (§10.6)."""
    return value.lower()


# ---- records ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str                              # as the client spelled it
    seq: int                             # creation order; the list order and paging key
    body: Json                           # the REST body as stored (create, then replace/patch)
    state: str
    etag: str
    creation_time: datetime
    last_modified: datetime
    state_transition_time: datetime
    previous_state: str | None
    previous_state_transition_time: datetime | None
    priority: int
    uses_task_dependencies: bool
    on_all_tasks_complete: str           # noaction | terminatejob
    on_task_failure: str                 # noaction | performexitoptionsjobaction
    execution_info: Json                 # Batch job executionInfo: startTime, endTime, terminateReason...


@dataclass(frozen=True, slots=True)
class TaskRecord:
    job_id: str
    id: str                              # as the client spelled it
    seq: int                             # submission order across the node: FIFO admission
    body: Json
    state: str
    etag: str
    creation_time: datetime
    last_modified: datetime
    state_transition_time: datetime
    previous_state: str | None
    previous_state_transition_time: datetime | None
    required_slots: int
    execution_info: ExecutionInfo
    node_info: Json | None
    dependency_action: str | None        # satisfy | block, set when it completes (dependents read it)


@dataclass(frozen=True, slots=True)
class PrepReleaseRecord:
    """Job preparation and release status on this node (batch-api-routes.md §9.4)."""

    job_id: str
    etag: str
    last_modified: datetime
    preparation: Json | None             # jobPreparationTaskExecutionInfo, REST shape
    release: Json | None                 # jobReleaseTaskExecutionInfo, REST shape


@dataclass(frozen=True, slots=True)
class Attempt:
    """One started command and its runner's handle (``RunHandle.to_json()``), opaque here.

    Persisted right after start, before waiting, so a restarted agent finds it again.
    ``owner`` says whose it is: ``kind`` task with job and task ids; jobpreparation / jobrelease
    with the job id and an empty task id; starttask with both empty.
    """

    kind: str
    job_id: str
    task_id: str
    number: int
    handle: Json
    started: datetime
    ended: datetime | None = None


# ---- inputs ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NewJob:
    id: str
    body: Json
    priority: int = 0
    uses_task_dependencies: bool = False
    on_all_tasks_complete: str = "noaction"
    on_task_failure: str = "noaction"
    execution_info: Json = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewTask:
    id: str
    body: Json
    required_slots: int = 1


@dataclass(frozen=True, slots=True)
class Expect:
    """The compare half of compare-and-swap: the write happens only if every given part holds.

    ``etag``: the record's eTag is exactly this (If-Match, or a read-modify-write).
    ``states``: the record's state is one of these (the lifecycle rule the service checks).
    """

    etag: str | None = None
    states: frozenset[str] | None = None

    def holds(self, etag: str, state: str) -> bool:
        return (self.etag is None or self.etag == etag) and (self.states is None or state in self.states)


ANY = Expect()


@dataclass(frozen=True, slots=True)
class TaskChanges:
    """The swap half for a task; a state change moves previousState and the transition times."""

    state: str | _Unset = UNSET
    execution_info: ExecutionInfo | _Unset = UNSET
    node_info: Json | _Unset | None = UNSET
    dependency_action: str | _Unset | None = UNSET
    body: Json | _Unset = UNSET                   # update constraints (PUT) replaces the body
    required_slots: int | _Unset = UNSET
    attempt: Attempt | None = None                # saved in the same transaction (start + handle)


@dataclass(frozen=True, slots=True)
class JobChanges:
    state: str | _Unset = UNSET
    body: Json | _Unset = UNSET
    priority: int | _Unset = UNSET
    on_all_tasks_complete: str | _Unset = UNSET
    on_task_failure: str | _Unset = UNSET
    execution_info: Json | _Unset = UNSET


# ---- outputs ---------------------------------------------------------------------------------

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Conflict(Generic[R]):
    """A compare-and-swap lost: ``current`` is the record as it is now (eTag or state moved)."""

    current: R


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    items: tuple[R, ...]
    next_token: str | None                        # None: the last page


@dataclass(frozen=True, slots=True)
class Rejected:
    """One task of an add-collection that was not added (``code``: TaskExists)."""

    id: str
    code: str


@dataclass(frozen=True, slots=True)
class StateCounts:
    active: int = 0
    running: int = 0                              # preparing + running
    completed: int = 0
    succeeded: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """``BatchTaskCountsResult``: tasks and their slots by state."""

    tasks: StateCounts
    slots: StateCounts


# ---- exceptions ------------------------------------------------------------------------------

class StoreError(StateError):
    """Base of the store's exceptions."""


class StoreUnsafe(StoreError):
    """The state directory or a database file is not root-only (or not owned by the agent)."""


class SchemaTooNew(StoreError):
    """The database's schema version is newer than this agent knows."""


class JobNotFound(StoreError):
    """No job with that id."""


class TaskNotFound(StoreError):
    """No task with that id in that job."""


class JobExists(StoreError):
    """A job with that id (in any case) exists."""


class TaskExists(StoreError):
    """A task with that id (in any case) exists in the job."""


class BadToken(StoreError):
    """A continuation token that this store did not issue (the API answers 400)."""
