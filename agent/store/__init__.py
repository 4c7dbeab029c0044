"""The node service's durable state: jobs, tasks, attempts (run handles), prep/release status.

Public surface (import from here): the ``Store`` protocol, its two backends ``SqliteStore``
(one file, ``<state dir>/state.db``, WAL) and ``MemoryStore`` (pure tests), ``StoreThread`` (the
bridge from asyncio), and the records, change sets and exceptions of ``agent.store.records``.

Every write is one transaction and a compare-and-swap: ``Expect(etag=..., states=...)`` is
checked and the change applied under the write lock, or a ``Conflict(current)`` comes back.
The store records states; which transitions are legal is the service's business.

Must not: log anything (task bodies carry SAS URLs, passwords and tokens), import runners,
the scheduler or the API. Layout: ``records`` (values), ``protocol`` (the contract),
``common`` (rules both backends share), ``memory``, ``sqlite`` + ``schema`` + ``files``, ``aio``.
"""

from agent.store.aio import StoreThread
from agent.store.memory import MemoryStore
from agent.store.protocol import MAX_RESULTS, Store
from agent.store.records import (
    ANY,
    ATTEMPT_KINDS,
    JOB_STATES,
    TASK_STATES,
    UNSET,
    Attempt,
    BadToken,
    Conflict,
    Expect,
    JobChanges,
    JobExists,
    JobNotFound,
    JobRecord,
    NewJob,
    NewTask,
    Page,
    PrepReleaseRecord,
    Rejected,
    SchemaTooNew,
    StateCounts,
    StoreError,
    StoreUnsafe,
    TaskChanges,
    TaskCounts,
    TaskExists,
    TaskNotFound,
    TaskRecord,
)
from agent.store.sqlite import DB_NAME, SqliteStore

__all__ = [
    "ANY", "ATTEMPT_KINDS", "DB_NAME", "JOB_STATES", "MAX_RESULTS", "TASK_STATES", "UNSET", "Attempt", "BadToken",
    "Conflict", "Expect", "JobChanges", "JobExists", "JobNotFound", "JobRecord", "MemoryStore", "NewJob", "NewTask",
    "Page", "PrepReleaseRecord", "Rejected", "SchemaTooNew", "SqliteStore", "StateCounts", "Store", "StoreError",
    "StoreThread", "StoreUnsafe", "TaskChanges", "TaskCounts", "TaskExists", "TaskNotFound", "TaskRecord",
]
