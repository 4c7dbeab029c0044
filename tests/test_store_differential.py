"""The two backends are indistinguishable: random operation sequences (Hypothesis) applied to a
MemoryStore and a SqliteStore on a real file give equal results, eTags and seqs included (same
frozen clock, both eTag clocks start at zero), or the same exception type."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.status import ExecutionInfo
from agent.store import (
    ANY,
    JOB_STATES,
    TASK_STATES,
    Expect,
    JobChanges,
    MemoryStore,
    NewJob,
    NewTask,
    SqliteStore,
    Store,
    StoreError,
    TaskChanges,
)

NOW = datetime(2026, 5, 1, tzinfo=UTC)
jobs = st.sampled_from(["a", "A", "b"])
tasks = st.sampled_from(["t1", "T1", "2", "02", "x"])
states = st.frozensets(st.sampled_from(sorted(TASK_STATES)), max_size=2)

ops = st.one_of(
    st.tuples(st.just("add_job"), jobs, st.integers(-5, 5)),
    st.tuples(st.just("add_tasks"), jobs, st.lists(tasks, min_size=1, max_size=4), st.none() | st.just("active")),
    st.tuples(st.just("transition_task"), jobs, tasks, st.none() | states, st.sampled_from(sorted(TASK_STATES)),
              st.booleans()),
    st.tuples(st.just("transition_job"), jobs, st.sampled_from(sorted(JOB_STATES)), st.integers(-5, 5)),
    st.tuples(st.just("delete_task"), jobs, tasks),
    st.tuples(st.just("delete_job"), jobs),
    st.tuples(st.just("list_tasks"), jobs, st.none() | states, st.integers(1, 3)),
    st.tuples(st.just("counts"), jobs),
    st.tuples(st.just("runnable"), st.integers(1, 3)),
    st.tuples(st.just("find"), jobs, st.lists(tasks, max_size=2), st.booleans()),
)


def apply(store: Store, op: tuple[Any, ...]) -> Any:
    name, *args = op
    try:
        if name == "add_job":
            return store.add_job(NewJob(args[0], {"id": args[0]}, priority=args[1]))
        if name == "add_tasks":
            guard = None if args[2] is None else frozenset({args[2]})
            return store.add_tasks(args[0], [NewTask(t, {"id": t}) for t in args[1]], job_states=guard)
        if name == "transition_task":
            info = ExecutionInfo(end_time=NOW, exit_code=0) if args[3] == "completed" else ExecutionInfo()
            return store.transition_task(args[0], args[1], Expect(states=args[2]), TaskChanges(
                state=args[3], execution_info=info, required_slots=2 if args[4] else 1))
        if name == "transition_job":
            return store.transition_job(args[0], ANY, JobChanges(state=args[1], priority=args[2]))
        if name == "delete_task":
            return store.delete_task(args[0], args[1], ANY)
        if name == "delete_job":
            return store.delete_job(args[0], ANY)
        if name == "list_tasks":
            pages, token = [], None
            while True:
                page = store.list_tasks(args[0], states=args[1], max_results=args[2], token=token)
                pages.append(page.items)
                if page.next_token is None:
                    return pages
                token = page.next_token
        if name == "counts":
            return (store.task_counts(args[0]), store.slots_in_use())
        if name == "runnable":
            first = store.next_runnable(args[0])
            return first.items, store.next_runnable(10, first.next_token).items if first.next_token else ()
        if name == "find":
            return store.find_tasks(args[0], args[1], [(1, 2)] if args[2] else [])
    except StoreError as exc:
        return type(exc).__name__
    raise AssertionError(name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=25))
@example([("add_job", "a", 0), ("add_tasks", "a", ["t1", "t1", "2"], None)])       # a rejected id takes no eTag
@example([("add_job", "a", 0), ("add_job", "b", 5), ("add_tasks", "a", ["t1"], None),
          ("add_tasks", "B", ["x", "2"], None), ("runnable", 1), ("transition_job", "b", "active", -1),
          ("runnable", 2)])
def test_memory_and_sqlite_agree(sequence: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(Path(tmp) / "state", clock=lambda: NOW)
        memory = MemoryStore(clock=lambda: NOW)
        try:
            for step, op in enumerate(sequence):
                assert apply(memory, op) == apply(sqlite, op), f"step {step}: {op}"
        finally:
            sqlite.close()
