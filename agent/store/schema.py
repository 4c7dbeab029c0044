"""The SQLite schema, versioned with ``PRAGMA user_version``, and the in-place upgrade.

Owns: the DDL and ``migrate``. Must not: hold queries of the store's operations (``sqlite.py``).

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``; each runs in its own
``BEGIN IMMEDIATE`` transaction together with the new ``user_version``, so a crash mid-upgrade
leaves the previous version intact and the next start runs the step again. A database newer than
the agent (a downgrade) is refused with ``SchemaTooNew`` rather than guessed at. A later version
appends a step (SQL or a function of the connection) and never edits an old one.

Times are integer microseconds since the epoch (UTC); bodies and infos are compact JSON text.
Ids keep their spelling in ``id``; ``key`` (lowercase) carries uniqueness and lookups.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from agent.store.records import SchemaTooNew

Step = str | Callable[[sqlite3.Connection], None]

V1 = """
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (name, value) VALUES ('etag_tick', 0);
CREATE TABLE jobs (
    seq                            INTEGER PRIMARY KEY AUTOINCREMENT,
    key                            TEXT NOT NULL UNIQUE,
    id                             TEXT NOT NULL,
    state                          TEXT NOT NULL CHECK (state IN ('active', 'disabling', 'disabled', 'enabling',
                                                                  'terminating', 'completed', 'deleting')),
    etag                           TEXT NOT NULL,
    creation_time                  INTEGER NOT NULL,
    last_modified                  INTEGER NOT NULL,
    state_transition_time          INTEGER NOT NULL,
    previous_state                 TEXT,
    previous_state_transition_time INTEGER,
    priority                       INTEGER NOT NULL,
    uses_task_dependencies         INTEGER NOT NULL,
    on_all_tasks_complete          TEXT NOT NULL,
    on_task_failure                TEXT NOT NULL,
    body                           TEXT NOT NULL,
    execution_info                 TEXT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, priority);
CREATE TABLE tasks (
    seq                            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_seq                        INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    key                            TEXT NOT NULL,
    id                             TEXT NOT NULL,
    id_num                         INTEGER,
    state                          TEXT NOT NULL CHECK (state IN ('active', 'preparing', 'running', 'completed')),
    result                         TEXT,
    etag                           TEXT NOT NULL,
    creation_time                  INTEGER NOT NULL,
    last_modified                  INTEGER NOT NULL,
    state_transition_time          INTEGER NOT NULL,
    previous_state                 TEXT,
    previous_state_transition_time INTEGER,
    required_slots                 INTEGER NOT NULL,
    body                           TEXT NOT NULL,
    execution_info                 TEXT NOT NULL,
    node_info                      TEXT,
    dependency_action              TEXT,
    UNIQUE (job_seq, key)
);
CREATE INDEX tasks_by_job_state ON tasks (job_seq, state, seq);
CREATE INDEX tasks_counts ON tasks (job_seq, state, result, required_slots);
CREATE INDEX tasks_by_state ON tasks (state, seq);
CREATE INDEX tasks_by_number ON tasks (job_seq, id_num) WHERE id_num IS NOT NULL;
CREATE TABLE prep_release (
    job_seq       INTEGER PRIMARY KEY REFERENCES jobs (seq) ON DELETE CASCADE,
    etag          TEXT NOT NULL,
    last_modified INTEGER NOT NULL,
    preparation   TEXT,
    release       TEXT
);
CREATE TABLE attempts (
    kind     TEXT NOT NULL CHECK (kind IN ('task', 'jobpreparation', 'jobrelease', 'starttask')),
    job_key  TEXT NOT NULL,
    task_key TEXT NOT NULL,
    number   INTEGER NOT NULL,
    job_id   TEXT NOT NULL,
    task_id  TEXT NOT NULL,
    handle   TEXT NOT NULL,
    started  INTEGER NOT NULL,
    ended    INTEGER,
    PRIMARY KEY (kind, job_key, task_key, number)
) WITHOUT ROWID;
CREATE INDEX attempts_open ON attempts (started) WHERE ended IS NULL;
"""

MIGRATIONS: tuple[Step, ...] = (V1,)


def version(conn: sqlite3.Connection) -> int:
    value: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return value


def migrate(conn: sqlite3.Connection, migrations: Sequence[Step] = MIGRATIONS) -> int:
    """Bring the database to ``len(migrations)``; return the version it had before.

    ``conn`` must be in autocommit mode (``isolation_level=None``): each step is one transaction.
    """
    before = version(conn)
    if before > len(migrations):
        raise SchemaTooNew(f"the state database has schema version {before}; this agent knows up to "
                           f"{len(migrations)}: run the newer agent, or move the state directory aside")
    for target in range(before + 1, len(migrations) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version(conn) >= target:          # another process upgraded meanwhile
                conn.execute("ROLLBACK")
                continue
            step = migrations[target - 1]
            if isinstance(step, str):
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                step(conn)
            conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return before
