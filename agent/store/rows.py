"""Rows of the SQLite schema <-> records: column lists, decoding, and small SQL helpers.

Owns: the mapping between ``schema.V1`` columns and ``agent.store.records`` types. Must not:
open connections or run statements (``sqlite.py`` does).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from agent.status import ExecutionInfo
from agent.store import common
from agent.store.records import JobRecord, TaskRecord

JOB_COLS = ("seq, id, body, state, etag, creation_time, last_modified, state_transition_time, previous_state, "
             "previous_state_transition_time, priority, uses_task_dependencies, on_all_tasks_complete, "
             "on_task_failure, execution_info")
TASK_COLS = ("t.seq, t.id, t.body, t.state, t.etag, t.creation_time, t.last_modified, t.state_transition_time, "
              "t.previous_state, t.previous_state_transition_time, t.required_slots, t.execution_info, "
              "t.node_info, t.dependency_action")
INT64 = 2**63 - 1
R = TypeVar("R", JobRecord, TaskRecord)


def _t(value: int | None) -> datetime | None:
    return None if value is None else common.from_micros(value)


def job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row[1], seq=row[0], body=json.loads(row[2]), state=row[3], etag=row[4],
        creation_time=common.from_micros(row[5]), last_modified=common.from_micros(row[6]),
        state_transition_time=common.from_micros(row[7]), previous_state=row[8],
        previous_state_transition_time=_t(row[9]), priority=row[10], uses_task_dependencies=bool(row[11]),
        on_all_tasks_complete=row[12], on_task_failure=row[13], execution_info=json.loads(row[14]))


def task(job_id: str, row: Sequence[Any]) -> TaskRecord:
    return TaskRecord(
        job_id=job_id, id=row[1], seq=row[0], body=json.loads(row[2]), state=row[3], etag=row[4],
        creation_time=common.from_micros(row[5]), last_modified=common.from_micros(row[6]),
        state_transition_time=common.from_micros(row[7]), previous_state=row[8],
        previous_state_transition_time=_t(row[9]), required_slots=row[10],
        execution_info=ExecutionInfo.from_json(json.loads(row[11])),
        node_info=None if row[12] is None else json.loads(row[12]), dependency_action=row[13])


def us(value: datetime | None) -> int | None:
    return None if value is None else common.to_micros(value)


def result(rec: TaskRecord) -> str | None:
    return str(rec.execution_info.result) if rec.execution_info.result else None


def states(column: str, states: frozenset[str] | None) -> tuple[str, tuple[str, ...]]:
    if states is None:
        return "", ()
    ordered = tuple(sorted(states))
    return f" AND {column} IN ({','.join('?' * len(ordered))})" if ordered else " AND 0", ordered


def with_seq(rec: R, seq: int) -> R:
    return dataclasses.replace(rec, seq=seq)


EMPTY_EXECUTION_INFO = common.dumps(ExecutionInfo().to_json())
