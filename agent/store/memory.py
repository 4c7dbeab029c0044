"""``MemoryStore``: the ``Store`` protocol in a process's memory, for pure tests of the scheduler
and the API (no file, nothing survives the process).

Owns: dicts of records behind one lock, so each call is atomic like a transaction; what it
hands out is a copy (``_fresh``), as SQLite's rows are, so a caller mutating a body cannot
change the store behind its back. Must not:
differ from ``SqliteStore`` in any observable way; both run the contract tests in
``tests/test_store.py``. The rules of a write live in ``agent.store.common``.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from agent.store import common
from agent.store.protocol import MAX_RESULTS
from agent.store.records import (
    ATTEMPT_KINDS,
    JOB_STATES,
    RUNNING_STATES,
    TASK_STATES,
    UNSET,
    Attempt,
    Conflict,
    Expect,
    JobChanges,
    JobExists,
    JobNotFound,
    JobRecord,
    Json,
    NewJob,
    NewTask,
    Page,
    PrepReleaseRecord,
    Rejected,
    TaskChanges,
    TaskCounts,
    TaskExists,
    TaskNotFound,
    TaskRecord,
    _Unset,
    id_key,
)

_AttemptKey = tuple[str, str, str, int]
P = ParamSpec("P")
T = TypeVar("T")


def _copy(value: Any) -> Any:
    """A copy of a result whose JSON parts the caller may mutate, as SQLite's fresh rows allow."""
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, Page):
        return Page(tuple(_copy(v) for v in value.items), value.next_token)
    if isinstance(value, Conflict):
        return Conflict(_copy(value.current))
    if isinstance(value, JobRecord):
        return dataclasses.replace(value, body=common.copy_json(value.body),
                                   execution_info=common.copy_json(value.execution_info))
    if isinstance(value, TaskRecord):
        return dataclasses.replace(value, body=common.copy_json(value.body),
                                   node_info=common.pick(value.node_info, None))
    if isinstance(value, PrepReleaseRecord):
        return dataclasses.replace(value, preparation=common.pick(value.preparation, None),
                                   release=common.pick(value.release, None))
    if isinstance(value, Attempt):
        return dataclasses.replace(value, handle=common.copy_json(value.handle))
    return value


def _fresh(method: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        result: T = _copy(method(*args, **kwargs))
        return result
    return wrapper


class MemoryStore:
    def __init__(self, clock: Callable[[], datetime] = common.utc_now) -> None:
        self._clock = clock
        self._etags = common.EtagClock()
        self._lock = threading.Lock()
        self._job_seq = 0
        self._task_seq = 0
        self._jobs: dict[str, JobRecord] = {}
        self._tasks: dict[str, dict[str, TaskRecord]] = {}           # job key -> task key -> record
        self._prep: dict[str, PrepReleaseRecord] = {}
        self._attempts: dict[_AttemptKey, Attempt] = {}


    def _job(self, job_id: str) -> JobRecord:
        try:
            return self._jobs[id_key(job_id)]
        except KeyError:
            raise JobNotFound(job_id) from None

    def _task(self, job_id: str, task_id: str) -> TaskRecord:
        self._job(job_id)
        try:
            return self._tasks[id_key(job_id)][id_key(task_id)]
        except KeyError:
            raise TaskNotFound(task_id) from None

    # ---- jobs
    @_fresh
    def add_job(self, job: NewJob) -> JobRecord:
        with self._lock:
            if id_key(job.id) in self._jobs:
                raise JobExists(job.id)
            now = self._clock()
            self._job_seq += 1
            rec = common.new_job(job, self._job_seq, self._etags.next(now), now)
            self._jobs[id_key(job.id)] = rec
            self._tasks[id_key(job.id)] = {}
            return rec

    @_fresh
    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._job(job_id)

    @_fresh
    def list_jobs(self, *, states: frozenset[str] | None = None, max_results: int = MAX_RESULTS,
                  token: str | None = None, match: Callable[[JobRecord], bool] | None = None) -> Page[JobRecord]:
        after = (common.decode_token(token, 1) or (0,))[0]
        with self._lock:
            rows = sorted((j for j in self._jobs.values() if j.seq > after and (states is None or j.state in states)),
                          key=lambda j: j.seq)
        return common.walk(iter(rows), max_results, match, lambda j: (j.seq,))

    @_fresh
    def transition_job(self, job_id: str, expect: Expect, changes: JobChanges) -> JobRecord | Conflict[JobRecord]:
        if changes.state is not UNSET:
            common.check_state(changes.state, JOB_STATES, "job state")
        with self._lock:
            rec = self._job(job_id)
            if not expect.holds(rec.etag, rec.state):
                return Conflict(rec)
            now = self._clock()
            new = common.apply_job(rec, changes, self._etags.next(now), now)
            self._jobs[id_key(job_id)] = new
            return new

    @_fresh
    def delete_job(self, job_id: str, expect: Expect) -> Conflict[JobRecord] | None:
        with self._lock:
            rec = self._job(job_id)
            if not expect.holds(rec.etag, rec.state):
                return Conflict(rec)
            key = id_key(job_id)
            del self._jobs[key], self._tasks[key]
            self._prep.pop(key, None)
            for akey in [k for k in self._attempts if k[1] == key and k[0] != "starttask"]:
                del self._attempts[akey]
            return None

    # ---- tasks
    def add_task(self, job_id: str, task: NewTask, *,
                 job_states: frozenset[str] | None = None) -> TaskRecord | Conflict[JobRecord]:
        result = self.add_tasks(job_id, [task], job_states=job_states)
        if isinstance(result, Conflict):
            return result
        if isinstance(result[0], Rejected):
            raise TaskExists(task.id)
        return result[0]

    @_fresh
    def add_tasks(self, job_id: str, tasks: Sequence[NewTask], *, job_states: frozenset[str] | None = None,
                  ) -> list[TaskRecord | Rejected] | Conflict[JobRecord]:
        bodies = [common.copy_json(t.body) for t in tasks]            # all or nothing: check first
        with self._lock:
            job = self._job(job_id)
            if job_states is not None and job.state not in job_states:
                return Conflict(job)
            table = self._tasks[id_key(job_id)]
            now = self._clock()
            out: list[TaskRecord | Rejected] = []
            for task, body in zip(tasks, bodies, strict=True):
                if id_key(task.id) in table:
                    out.append(Rejected(task.id, "TaskExists"))
                    continue
                self._task_seq += 1
                rec = common.new_task(job.id, task, self._task_seq, self._etags.next(now), now, body=body)
                table[id_key(task.id)] = rec
                out.append(rec)
            return out

    @_fresh
    def get_task(self, job_id: str, task_id: str) -> TaskRecord:
        with self._lock:
            return self._task(job_id, task_id)

    @_fresh
    def find_tasks(self, job_id: str, ids: Iterable[str] = (),
                   ranges: Iterable[tuple[int, int]] = ()) -> list[TaskRecord]:
        keys, spans = {id_key(i) for i in ids}, list(ranges)
        with self._lock:
            self._job(job_id)
            out = []
            for key, rec in self._tasks[id_key(job_id)].items():
                number = common.int_id(rec.id)
                if key in keys or (number is not None and any(lo <= number <= hi for lo, hi in spans)):
                    out.append(rec)
        return sorted(out, key=lambda t: t.seq)

    @_fresh
    def list_tasks(self, job_id: str, *, states: frozenset[str] | None = None, max_results: int = MAX_RESULTS,
                   token: str | None = None, match: Callable[[TaskRecord], bool] | None = None,
                   ) -> Page[TaskRecord]:
        after = (common.decode_token(token, 1) or (0,))[0]
        with self._lock:
            self._job(job_id)
            rows = sorted((t for t in self._tasks[id_key(job_id)].values()
                           if t.seq > after and (states is None or t.state in states)), key=lambda t: t.seq)
        return common.walk(iter(rows), max_results, match, lambda t: (t.seq,))

    @_fresh
    def transition_task(self, job_id: str, task_id: str, expect: Expect,
                        changes: TaskChanges) -> TaskRecord | Conflict[TaskRecord]:
        if changes.state is not UNSET:
            common.check_state(changes.state, TASK_STATES, "task state")
        with self._lock:
            rec = self._task(job_id, task_id)
            if not expect.holds(rec.etag, rec.state):
                return Conflict(rec)
            now = self._clock()
            new = common.apply_task(rec, changes, self._etags.next(now), now)
            if changes.attempt is not None:
                self._save_attempt(changes.attempt)
            self._tasks[id_key(job_id)][id_key(task_id)] = new
            return new

    @_fresh
    def delete_task(self, job_id: str, task_id: str, expect: Expect) -> Conflict[TaskRecord] | None:
        with self._lock:
            rec = self._task(job_id, task_id)
            if not expect.holds(rec.etag, rec.state):
                return Conflict(rec)
            del self._tasks[id_key(job_id)][id_key(task_id)]
            owner = ("task", id_key(job_id), id_key(task_id))
            for akey in [k for k in self._attempts if k[:3] == owner]:
                del self._attempts[akey]
            return None

    def task_counts(self, job_id: str) -> TaskCounts:
        with self._lock:
            self._job(job_id)
            rows = [(t.state, str(t.execution_info.result) if t.execution_info.result else None, 1, t.required_slots)
                    for t in self._tasks[id_key(job_id)].values()]
        return common.count(rows)

    # ---- scheduling
    def slots_in_use(self) -> int:
        with self._lock:
            return sum(t.required_slots for table in self._tasks.values() for t in table.values()
                       if t.state in RUNNING_STATES)

    @_fresh
    def next_runnable(self, limit: int, token: str | None = None) -> Page[TaskRecord]:
        after = common.decode_token(token, 2)
        with self._lock:
            rows = sorted(((-job.priority, t.seq), t) for key, job in self._jobs.items() if job.state == "active"
                          for t in self._tasks[key].values() if t.state == "active")
        order = {t.seq: k for k, t in rows}
        keyed = (t for k, t in rows if after is None or k > after)
        return common.walk(keyed, limit, None, lambda t: order[t.seq])

    # ---- prep / release
    @_fresh
    def get_prep_release(self, job_id: str) -> PrepReleaseRecord | None:
        with self._lock:
            self._job(job_id)
            return self._prep.get(id_key(job_id))

    @_fresh
    def put_prep_release(self, job_id: str, expect_etag: str | None, *,
                         preparation: Json | _Unset | None = UNSET, release: Json | _Unset | None = UNSET,
                         ) -> PrepReleaseRecord | Conflict[PrepReleaseRecord | None]:
        with self._lock:
            job = self._job(job_id)
            current = self._prep.get(id_key(job_id))
            if (current.etag if current else None) != expect_etag:
                return Conflict(current)
            now = self._clock()
            new = PrepReleaseRecord(
                job_id=job.id, etag=self._etags.next(now), last_modified=now,
                preparation=common.pick(preparation, current.preparation if current else None),
                release=common.pick(release, current.release if current else None))
            self._prep[id_key(job_id)] = new
            return new

    # ---- attempts
    def _save_attempt(self, attempt: Attempt) -> None:
        common.check_state(attempt.kind, ATTEMPT_KINDS, "attempt kind")
        self._attempts[_akey(attempt)] = dataclasses.replace(attempt, handle=common.copy_json(attempt.handle))

    def save_attempt(self, attempt: Attempt) -> None:
        with self._lock:
            self._save_attempt(attempt)

    def end_attempt(self, attempt: Attempt, ended: datetime) -> None:
        key = _akey(attempt)
        with self._lock:
            if key in self._attempts:
                self._attempts[key] = dataclasses.replace(self._attempts[key], ended=ended)

    @_fresh
    def open_attempts(self) -> list[Attempt]:
        with self._lock:
            return sorted((a for a in self._attempts.values() if a.ended is None),
                          key=lambda a: (a.started, *_akey(a)))

    def close(self) -> None:
        pass


def _akey(attempt: Attempt) -> _AttemptKey:
    return (attempt.kind, id_key(attempt.job_id), id_key(attempt.task_id), attempt.number)
