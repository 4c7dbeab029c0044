"""``SqliteStore``: the ``Store`` protocol on one SQLite file under the node root.

Owns: the connection, its pragmas, and one transaction per operation. Must not: log (values in
here are task definitions with secrets), or decide lifecycle rules (``Expect`` carries them in).

- WAL journal; every write is ``BEGIN IMMEDIATE`` ... ``COMMIT``, so the compare and the swap of a
  compare-and-swap happen under SQLite's write lock (also against a second process).
- ``synchronous=FULL`` by default: a commit returns after the WAL is fsynced, so an answer the
  API gave (201 on add task) survives a power loss. ``NORMAL`` would lose at most the last
  commits on power loss (never on a crash of the agent) for less fsync; bench/bench_store.py
  measures both; the figures and the decision are in the package docstring.
- ``busy_timeout`` so a second connection waits for the lock instead of failing;
  ``foreign_keys`` so deleting a job removes its tasks and prep/release status.
- ``temp_store=MEMORY`` and ``secure_delete=FAST``: no secret in a temp file, less of one
  left in free pages after a delete.
- One connection behind a lock: safe from any thread; ``agent.store.aio`` calls it from one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Literal

from agent.store import common, files, rows, schema
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
    StoreError,
    StoreUnsafe,
    TaskChanges,
    TaskCounts,
    TaskExists,
    TaskNotFound,
    TaskRecord,
    _Unset,
    id_key,
)

DB_NAME = "state.db"
Synchronous = Literal["FULL", "NORMAL"]


class SqliteStore:
    def __init__(self, state_dir: Path, *, synchronous: Synchronous = "FULL",
                 clock: Callable[[], datetime] = common.utc_now, busy_timeout_ms: int = 5000) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(state_dir) / DB_NAME
        files.prepare_dir(Path(state_dir))
        files.prepare_db(self.path)
        self._clock = clock
        self._lock = threading.RLock()        # re-entered by a write inside ``batch``
        self._batching = False
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            with _faults("open"):
                self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise StoreUnsafe(f"{self.path}: SQLite refused WAL mode ({mode})")
                self._conn.execute(f"PRAGMA synchronous = {synchronous}")
                self._conn.execute("PRAGMA foreign_keys = ON")
                self._conn.execute("PRAGMA trusted_schema = OFF")
                # Task bodies hold secrets: sort spills stay in memory, not in a shared temp dir, and
                # deleted rows are zeroed where that costs no extra I/O.
                self._conn.execute("PRAGMA temp_store = MEMORY")
                self._conn.execute("PRAGMA secure_delete = FAST")
                schema.migrate(self._conn)
                files.check_files(self.path)         # -wal / -shm now exist: same mode as the database
                # A damaged file is named at start, not met mid-run (16 ms for 10,000 tasks).
                verdict = self._conn.execute("PRAGMA quick_check(1)").fetchone()[0]
                if verdict != "ok":
                    raise StoreError(f"{self.path}: the state database is damaged ({verdict}); move it aside "
                                     "to start empty, or restore it")
        except BaseException:
            self._conn.close()
            raise
        self._etags = common.EtagClock()

    # ---- plumbing
    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit (``StoreThread`` uses it): the writes and reads of this thread inside it
        share one transaction, each write a savepoint of its own (a write that raises is rolled
        back alone), and one COMMIT, hence one fsync, at the end. Nothing inside is durable
        before this returns, so the caller answers no one before that."""
        with self._lock, _faults("write"):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            self._batching = True
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._batching = False

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (a savepoint inside ``batch``); the eTag clock's last tick is
        read and written inside it."""
        with self._lock, _faults("write"):
            conn = self._conn
            nested = self._batching
            conn.execute("SAVEPOINT w" if nested else "BEGIN IMMEDIATE")
            try:
                before = conn.execute("SELECT value FROM meta WHERE name = 'etag_tick'").fetchone()[0]
                self._etags.last = before
                yield conn
                if self._etags.last != before:
                    conn.execute("UPDATE meta SET value = ? WHERE name = 'etag_tick'", (self._etags.last,))
                conn.execute("RELEASE w" if nested else "COMMIT")
            except BaseException:
                if nested:
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: a consistent snapshot across the statements of one call (inside
        ``batch``, the batch's transaction is that snapshot)."""
        with self._lock, _faults("read"):
            if self._batching:
                yield self._conn
                return
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def _job_row(self, conn: sqlite3.Connection, job_id: str) -> JobRecord:
        row = conn.execute(f"SELECT {rows.JOB_COLS} FROM jobs WHERE key = ?", (id_key(job_id),)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return rows.job(row)

    def _task_row(self, conn: sqlite3.Connection, job_id: str, task_id: str) -> TaskRecord:
        job = self._job_row(conn, job_id)
        row = conn.execute(f"SELECT {rows.TASK_COLS} FROM tasks t WHERE t.job_seq = ? AND t.key = ?",
                           (job.seq, id_key(task_id))).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return rows.task(job.id, row)

    # ---- jobs
    def add_job(self, job: NewJob) -> JobRecord:
        with self._write() as conn:
            now = self._clock()
            rec = common.new_job(job, 0, self._etags.next(now), now)
            try:
                cur = conn.execute(
                    "INSERT INTO jobs (key, id, state, etag, creation_time, last_modified, state_transition_time, "
                    "priority, uses_task_dependencies, on_all_tasks_complete, on_task_failure, body, execution_info)"
                    " VALUES (?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (id_key(job.id), job.id, rec.etag, rows.us(now), rows.us(now), rows.us(now), rec.priority,
                     int(rec.uses_task_dependencies), rec.on_all_tasks_complete, rec.on_task_failure,
                     common.dumps(rec.body), common.dumps(rec.execution_info)))
            except sqlite3.IntegrityError:
                raise JobExists(job.id) from None
            assert cur.lastrowid is not None
            return rows.with_seq(rec, cur.lastrowid)

    def get_job(self, job_id: str) -> JobRecord:
        with self._read() as conn:
            return self._job_row(conn, job_id)

    def list_jobs(self, *, states: frozenset[str] | None = None, max_results: int = MAX_RESULTS,
                  token: str | None = None, match: Callable[[JobRecord], bool] | None = None) -> Page[JobRecord]:
        after = (common.decode_token(token, 1) or (0,))[0]
        where, args = rows.states("state", states)
        limit = "" if match else f" LIMIT {int(max_results) + 1}"
        with self._read() as conn:
            cur = conn.execute(f"SELECT {rows.JOB_COLS} FROM jobs WHERE seq > ?{where} ORDER BY seq{limit}",
                               (after, *args))
            return common.walk((rows.job(r) for r in cur), max_results, match, lambda j: (j.seq,))

    def transition_job(self, job_id: str, expect: Expect, changes: JobChanges) -> JobRecord | Conflict[JobRecord]:
        if changes.state is not UNSET:
            common.check_state(changes.state, JOB_STATES, "job state")
        with self._write() as conn:
            rec = self._job_row(conn, job_id)
            if not expect.holds(rec.etag, rec.state):
                return Conflict(rec)
            now = self._clock()
            new = common.apply_job(rec, changes, self._etags.next(now), now)
            conn.execute(
                "UPDATE jobs SET state = ?, etag = ?, last_modified = ?, state_transition_time = ?, "
                "previous_state = ?, previous_state_transition_time = ?, priority = ?, on_all_tasks_complete = ?, "
                "on_task_failure = ?, body = ?, execution_info = ? WHERE seq = ?",
                (new.state, new.etag, rows.us(now), rows.us(new.state_transition_time), new.previous_state,
                 rows.us(new.previous_state_transition_time), new.priority, new.on_all_tasks_complete,
                 new.on_task_failure, common.dumps(new.body), common.dumps(new.execution_info), rec.seq))
            return new

    def delete_job(self, job_id: str, expect: Expect) -> Conflict[JobRecord] | None:
        with self._write() as conn:
            rec = self._job_row(conn, job_id)
            if not expect.holds(rec.etag, rec.state):
                return Conflict(rec)
            conn.execute("DELETE FROM attempts WHERE kind != 'starttask' AND job_key = ?", (id_key(job_id),))
            conn.execute("DELETE FROM jobs WHERE seq = ?", (rec.seq,))     # cascades to tasks, prep_release
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

    def add_tasks(self, job_id: str, tasks: Sequence[NewTask], *, job_states: frozenset[str] | None = None,
                  ) -> list[TaskRecord | Rejected] | Conflict[JobRecord]:
        out: list[TaskRecord | Rejected] = []
        with self._write() as conn:
            job = self._job_row(conn, job_id)
            if job_states is not None and job.state not in job_states:
                return Conflict(job)
            now = self._clock()
            for task in tasks:
                text = common.dumps(task.body)                 # encoded once: stored, and copied for the record
                last_tick = self._etags.last
                rec = common.new_task(job.id, task, 0, self._etags.next(now), now, body=json.loads(text))
                number = common.int_id(task.id)
                try:
                    cur = conn.execute(
                        "INSERT INTO tasks (job_seq, key, id, id_num, state, etag, creation_time, last_modified, "
                        "state_transition_time, required_slots, body, execution_info) "
                        "VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?)",
                        (job.seq, id_key(task.id), task.id, number if number is not None and number <= rows.INT64
                         else None, rec.etag, rows.us(now), rows.us(now), rows.us(now), rec.required_slots, text,
                         rows.EMPTY_EXECUTION_INFO))
                except sqlite3.IntegrityError:
                    self._etags.last = last_tick                 # never shown: the next write may use it
                    out.append(Rejected(task.id, "TaskExists"))
                    continue
                assert cur.lastrowid is not None
                out.append(rows.with_seq(rec, cur.lastrowid))
        return out

    def get_task(self, job_id: str, task_id: str) -> TaskRecord:
        with self._read() as conn:
            return self._task_row(conn, job_id, task_id)

    def find_tasks(self, job_id: str, ids: Iterable[str] = (),
                   ranges: Iterable[tuple[int, int]] = ()) -> list[TaskRecord]:
        keys, found = sorted({id_key(i) for i in ids}), {}
        with self._read() as conn:
            job = self._job_row(conn, job_id)
            select = f"SELECT {rows.TASK_COLS} FROM tasks t WHERE t.job_seq = ? AND "
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                for row in conn.execute(select + f"t.key IN ({','.join('?' * len(chunk))})", (job.seq, *chunk)):
                    found[row[0]] = rows.task(job.id, row)
            for lo, hi in ranges:
                for row in conn.execute(select + "t.id_num BETWEEN ? AND ?", (job.seq, lo, hi)):
                    found[row[0]] = rows.task(job.id, row)
        return [found[seq] for seq in sorted(found)]

    def list_tasks(self, job_id: str, *, states: frozenset[str] | None = None, max_results: int = MAX_RESULTS,
                   token: str | None = None, match: Callable[[TaskRecord], bool] | None = None,
                   ) -> Page[TaskRecord]:
        after = (common.decode_token(token, 1) or (0,))[0]
        where, args = rows.states("t.state", states)
        limit = "" if match else f" LIMIT {int(max_results) + 1}"
        with self._read() as conn:
            job = self._job_row(conn, job_id)
            cur = conn.execute(f"SELECT {rows.TASK_COLS} FROM tasks t WHERE t.job_seq = ? AND t.seq > ?{where} "
                               f"ORDER BY t.seq{limit}", (job.seq, after, *args))
            return common.walk((rows.task(job.id, r) for r in cur), max_results, match, lambda t: (t.seq,))

    def transition_task(self, job_id: str, task_id: str, expect: Expect,
                        changes: TaskChanges) -> TaskRecord | Conflict[TaskRecord]:
        if changes.state is not UNSET:
            common.check_state(changes.state, TASK_STATES, "task state")
        with self._write() as conn:
            rec = self._task_row(conn, job_id, task_id)
            if not expect.holds(rec.etag, rec.state):
                return Conflict(rec)
            now = self._clock()
            new = common.apply_task(rec, changes, self._etags.next(now), now)
            # The body and node info are encoded and written only when they change (a state
            # change leaves the body, the largest column, as it is).
            extra, args = "", list[str | None]()
            if changes.body is not UNSET:
                extra += ", body = ?"
                args.append(common.dumps(new.body))
            if changes.node_info is not UNSET:
                extra += ", node_info = ?"
                args.append(None if new.node_info is None else common.dumps(new.node_info))
            conn.execute(
                "UPDATE tasks SET state = ?, result = ?, etag = ?, last_modified = ?, state_transition_time = ?, "
                "previous_state = ?, previous_state_transition_time = ?, required_slots = ?, "
                f"execution_info = ?, dependency_action = ?{extra} WHERE seq = ?",
                (new.state, rows.result(new), new.etag, rows.us(now), rows.us(new.state_transition_time),
                 new.previous_state, rows.us(new.previous_state_transition_time), new.required_slots,
                 common.dumps(new.execution_info.to_json()), new.dependency_action, *args, rec.seq))
            if changes.attempt is not None:
                self._save_attempt(conn, changes.attempt)
            return new

    def delete_task(self, job_id: str, task_id: str, expect: Expect) -> Conflict[TaskRecord] | None:
        with self._write() as conn:
            rec = self._task_row(conn, job_id, task_id)
            if not expect.holds(rec.etag, rec.state):
                return Conflict(rec)
            conn.execute("DELETE FROM tasks WHERE seq = ?", (rec.seq,))
            conn.execute("DELETE FROM attempts WHERE kind = 'task' AND job_key = ? AND task_key = ?",
                         (id_key(job_id), id_key(task_id)))
            return None

    def task_counts(self, job_id: str) -> TaskCounts:
        with self._read() as conn:
            job = self._job_row(conn, job_id)
            rows = conn.execute("SELECT state, result, count(*), sum(required_slots) FROM tasks WHERE job_seq = ? "
                                "GROUP BY state, result", (job.seq,))
            return common.count(rows)

    # ---- scheduling
    def slots_in_use(self) -> int:
        where, args = rows.states("state", RUNNING_STATES)
        with self._read() as conn:
            total: int = conn.execute(f"SELECT coalesce(sum(required_slots), 0) FROM tasks WHERE 1{where}",
                                      args).fetchone()[0]
            return total

    def next_runnable(self, limit: int, token: str | None = None) -> Page[TaskRecord]:
        after = common.decode_token(token, 2) or (-rows.INT64, 0)
        with self._read() as conn:
            cur = conn.execute(
                f"SELECT -j.priority, j.id, {rows.TASK_COLS} FROM tasks t JOIN jobs j ON t.job_seq = j.seq "
                "WHERE t.state = 'active' AND j.state = 'active' AND (-j.priority, t.seq) > (?, ?) "
                f"ORDER BY j.priority DESC, t.seq LIMIT {int(limit) + 1}", after)
            order: dict[int, tuple[int, int]] = {}

            def records() -> Iterator[TaskRecord]:
                for row in cur:
                    order[row[2]] = (row[0], row[2])
                    yield rows.task(row[1], row[2:])

            return common.walk(records(), limit, None, lambda t: order[t.seq])

    # ---- prep / release
    def get_prep_release(self, job_id: str) -> PrepReleaseRecord | None:
        with self._read() as conn:
            job = self._job_row(conn, job_id)
            return self._prep_row(conn, job)

    def _prep_row(self, conn: sqlite3.Connection, job: JobRecord) -> PrepReleaseRecord | None:
        row = conn.execute("SELECT etag, last_modified, preparation, release FROM prep_release WHERE job_seq = ?",
                           (job.seq,)).fetchone()
        if row is None:
            return None
        return PrepReleaseRecord(job.id, row[0], common.from_micros(row[1]),
                                 None if row[2] is None else json.loads(row[2]),
                                 None if row[3] is None else json.loads(row[3]))

    def put_prep_release(self, job_id: str, expect_etag: str | None, *,
                         preparation: Json | _Unset | None = UNSET, release: Json | _Unset | None = UNSET,
                         ) -> PrepReleaseRecord | Conflict[PrepReleaseRecord | None]:
        with self._write() as conn:
            job = self._job_row(conn, job_id)
            current = self._prep_row(conn, job)
            if (current.etag if current else None) != expect_etag:
                return Conflict(current)
            now = self._clock()
            prep = common.pick(preparation, current.preparation if current else None)
            rel = common.pick(release, current.release if current else None)
            new = PrepReleaseRecord(job.id, self._etags.next(now), now, prep, rel)
            conn.execute("INSERT OR REPLACE INTO prep_release (job_seq, etag, last_modified, preparation, release) "
                         "VALUES (?, ?, ?, ?, ?)", (job.seq, new.etag, rows.us(now),
                                                    None if prep is None else common.dumps(prep),
                                                    None if rel is None else common.dumps(rel)))
            return new

    # ---- attempts
    @staticmethod
    def _save_attempt(conn: sqlite3.Connection, a: Attempt) -> None:
        common.check_state(a.kind, ATTEMPT_KINDS, "attempt kind")
        conn.execute("INSERT OR REPLACE INTO attempts (kind, job_key, task_key, number, job_id, task_id, handle, "
                     "started, ended) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (a.kind, id_key(a.job_id), id_key(a.task_id), a.number, a.job_id, a.task_id,
                      common.dumps(a.handle), rows.us(a.started), rows.us(a.ended)))

    def save_attempt(self, attempt: Attempt) -> None:
        with self._write() as conn:
            self._save_attempt(conn, attempt)

    def end_attempt(self, attempt: Attempt, ended: datetime) -> None:
        with self._write() as conn:
            conn.execute("UPDATE attempts SET ended = ? "
                         "WHERE kind = ? AND job_key = ? AND task_key = ? AND number = ?",
                         (rows.us(ended), attempt.kind, id_key(attempt.job_id), id_key(attempt.task_id),
                          attempt.number))

    def open_attempts(self) -> list[Attempt]:
        with self._read() as conn:
            rows = conn.execute("SELECT kind, job_id, task_id, number, handle, started FROM attempts "
                                "WHERE ended IS NULL ORDER BY started, kind, job_key, task_key, number").fetchall()
        return [Attempt(r[0], r[1], r[2], r[3], json.loads(r[4]), common.from_micros(r[5])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@contextmanager
def _faults(what: str) -> Iterator[None]:
    """SQLite's own errors (locked past busy_timeout, disk full, I/O error) as StoreError.

    Their messages name tables and columns, never values, so they may be shown.
    """
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"the state database {what} failed: {exc}") from exc
