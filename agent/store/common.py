"""What both backends share so that they cannot drift: building records, applying change sets,
eTags, continuation tokens and the paging walk.

Owns: the pure rules of a write (a state change moves previousState and the transition times; every
write gets a new eTag and lastModified). Must not: store anything or do I/O.

ETags look like Batch's (``0x8DE...``): the hex of a .NET ``DateTime.Ticks`` count (100 ns
since 0001-01-01, which is what Batch's own eTags decode to), forced strictly increasing per
store (``max(last + 1, now)``), so two writes in the same tick, or a clock stepped back, still
give different eTags. The SQLite backend keeps the last tick in the database, so eTags never
repeat across restarts either.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent.status import ExecutionInfo
from agent.store.records import (
    UNSET,
    BadToken,
    JobChanges,
    JobRecord,
    Json,
    NewJob,
    NewTask,
    Page,
    StateCounts,
    TaskChanges,
    TaskCounts,
    TaskRecord,
    _Unset,
)

_TICKS_EPOCH_OFFSET = 621_355_968_000_000_000     # .NET ticks: 0001-01-01 -> 1970-01-01, 100 ns
_INT_ID = re.compile(r"[0-9]+")

T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class EtagClock:
    """Strictly increasing .NET ticks rendered as Batch-style eTags."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self, now: datetime) -> str:
        tick = _TICKS_EPOCH_OFFSET + to_micros(now) * 10
        self.last = max(self.last + 1, tick)
        return f"0x{self.last:X}"


def to_micros(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def int_id(task_id: str) -> int | None:
    """The number a dependency range matches: integer ids only, leading zeros ignored (§10.5)."""
    return int(task_id) if _INT_ID.fullmatch(task_id) else None


def copy_json(value: Json) -> dict[str, Any]:
    """A private copy (and a check that it is JSON): callers may go on mutating their dict."""
    copied: dict[str, Any] = json.loads(dumps(value))
    return copied


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def pick(value: Json | _Unset | None, current: Json | None) -> Json | None:
    """A change-set field: left alone (UNSET), cleared (None) or replaced by a private copy."""
    if value is UNSET:
        return current
    return None if value is None else copy_json(value)


# ---- records ---------------------------------------------------------------------------------

def new_job(job: NewJob, seq: int, etag: str, now: datetime) -> JobRecord:
    return JobRecord(
        id=job.id, seq=seq, body=copy_json(job.body), state="active", etag=etag, creation_time=now,
        last_modified=now, state_transition_time=now, previous_state=None, previous_state_transition_time=None,
        priority=job.priority, uses_task_dependencies=job.uses_task_dependencies,
        on_all_tasks_complete=job.on_all_tasks_complete, on_task_failure=job.on_task_failure,
        execution_info=copy_json(job.execution_info))


def new_task(job_id: str, task: NewTask, seq: int, etag: str, now: datetime,
             body: dict[str, Any] | None = None) -> TaskRecord:
    """``body``: the caller's private copy of ``task.body`` when it made one already."""
    return TaskRecord(
        job_id=job_id, id=task.id, seq=seq, body=copy_json(task.body) if body is None else body, state="active",
        etag=etag, creation_time=now, last_modified=now, state_transition_time=now, previous_state=None,
        previous_state_transition_time=None, required_slots=task.required_slots,
        execution_info=ExecutionInfo(), node_info=None, dependency_action=None)


def check_state(state: str, allowed: frozenset[str], what: str) -> None:
    if state not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, not {state!r}")


def apply_job(rec: JobRecord, changes: JobChanges, etag: str, now: datetime) -> JobRecord:
    updates: dict[str, Any] = {"etag": etag, "last_modified": now}
    if changes.state is not UNSET and changes.state != rec.state:
        updates |= {"state": changes.state, "previous_state": rec.state,
                    "previous_state_transition_time": rec.state_transition_time, "state_transition_time": now}
    for name in ("priority", "on_all_tasks_complete", "on_task_failure"):
        value = getattr(changes, name)
        if value is not UNSET:
            updates[name] = value
    if changes.body is not UNSET:
        updates["body"] = copy_json(changes.body)
    if changes.execution_info is not UNSET:
        updates["execution_info"] = copy_json(changes.execution_info)
    return dataclasses.replace(rec, **updates)


def apply_task(rec: TaskRecord, changes: TaskChanges, etag: str, now: datetime) -> TaskRecord:
    updates: dict[str, Any] = {"etag": etag, "last_modified": now}
    if changes.state is not UNSET and changes.state != rec.state:
        updates |= {"state": changes.state, "previous_state": rec.state,
                    "previous_state_transition_time": rec.state_transition_time, "state_transition_time": now}
    for name in ("execution_info", "dependency_action", "required_slots"):
        value = getattr(changes, name)
        if value is not UNSET:
            updates[name] = value
    if changes.body is not UNSET:
        updates["body"] = copy_json(changes.body)
    if changes.node_info is not UNSET:
        updates["node_info"] = None if changes.node_info is None else copy_json(changes.node_info)
    return dataclasses.replace(rec, **updates)


def count(groups: Iterable[tuple[str, str | None, int, int]]) -> TaskCounts:
    """``(state, result, tasks, slots)`` groups -> task and slot counts (batch-api-routes.md §9.2)."""
    tasks_by: dict[str, int] = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
    slots_by = dict(tasks_by)
    for state, result, tasks, slots in groups:
        keys = ["running" if state == "preparing" else state]
        if state == "completed":
            keys.append("succeeded" if result == "success" else "failed")
        for key in keys:
            tasks_by[key] += tasks
            slots_by[key] += slots
    return TaskCounts(StateCounts(**tasks_by), StateCounts(**slots_by))


# ---- continuation tokens and the paging walk -------------------------------------------------

def encode_token(*parts: int) -> str:
    raw = ("s1:" + ":".join(str(p) for p in parts)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str | None, arity: int) -> tuple[int, ...] | None:
    if token is None:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        head, *parts = text.split(":")
        if head != "s1" or len(parts) != arity:
            raise ValueError(text)
        return tuple(int(p) for p in parts)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadToken("the continuation token is not one this node issued") from exc


def walk(rows: Iterator[T], max_results: int, match: Callable[[T], bool] | None,
         key: Callable[[T], tuple[int, ...]]) -> Page[T]:
    """Take up to ``max_results`` matching rows; a token only if another match follows."""
    if max_results < 1:
        raise ValueError("max_results must be at least 1")
    items: list[T] = []
    for row in rows:
        if match is not None and not match(row):
            continue
        if len(items) == max_results:
            return Page(tuple(items), encode_token(*key(items[-1])))
        items.append(row)
    return Page(tuple(items), None)
