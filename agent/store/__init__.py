"""The node service's durable state: jobs, tasks, attempts (run handles), prep/release status.

Public surface (import from here): the ``Store`` protocol, its two backends ``SqliteStore``
(one file, ``<state dir>/state.db``, WAL) and ``MemoryStore`` (pure tests), ``StoreThread`` (the
bridge from asyncio), and the records, change sets and exceptions of ``agent.store.records``.

Every write is one transaction and a compare-and-swap: ``Expect(etag=..., states=...)`` is
checked and the change applied under the write lock, or a ``Conflict(current)`` comes back.
The store records states; which transitions are legal is the service's business.

Decisions, with figures from bench/bench_store.py (10,000 tasks of ~0.9 KB, this 2-CPU VM
under a load average of about 7 from other work; three runs, ranges):
- ``synchronous=FULL``: a commit fsyncs the WAL, so what the API acknowledged and every
  "written before trusted" step survives a power loss, not only a crash of the agent. One
  transition (CAS + run handle) costs 0.3-2.8 ms p50 with FULL against 0.11-0.14 ms with
  NORMAL; 10,000 tasks in add-collections of 100 take 0.8-1.9 s with FULL against 0.4-2.4 s with
  NORMAL (an fsync per 100 tasks is amortised). NORMAL could, after a power cut, roll back a
  task's "completed" and run it twice; the agent's write rate (a few writes per task) is far
  below what FULL allows, so FULL it is (``SqliteStore(synchronous="NORMAL")`` exists for tests).
- Group commit (``StoreThread`` with ``SqliteStore.batch``): the calls queued while a commit's
  fsync runs share the next transaction, a savepoint each, and are answered after its COMMIT,
  so "durable before answered" and "one state change, all or nothing" hold per call while
  concurrent tasks share fsyncs. With it, the service's per-task path (3 writes a task) is not
  mostly bound by fsync: 1000 trivial tasks on 4 slots take 6.2-6.5 s with FULL against 5.9 s
  with NORMAL (bench/bench_service.py); the rest of the time is CPU (agent, supervisor, tasks).
- Off the event loop: a write's fsync (p99 1.2-14 ms here) would stall the loop, so every call
  goes through ``StoreThread`` (one worker thread, calls in order). The hop costs ~35 us:
  get_task 0.035 ms direct, 0.07 ms through the thread (p50); p99 0.09-5 ms follows the load.
- 10,000 tasks: a process holding the store and having read every task has 32 MiB RSS (a dict of
  the same JSON: 24 MiB); the database is 11 MiB for 8.9 MiB of JSON; task counts 1 ms (a
  covering index); one page of 1000 tasks by state 18-70 ms (record decoding, 3x raw sqlite3).

Must not: log anything (task bodies carry SAS URLs, passwords and tokens), import runners,
the scheduler or the API. Layout: ``records`` (values), ``protocol`` (the contract),
``common`` (rules both backends share), ``memory``, ``sqlite`` + ``rows`` + ``schema`` + ``files``, ``aio``.
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
