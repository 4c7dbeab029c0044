"""The ``Store`` contract, run against both backends (SQLite on a real file, and in memory)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.status import ExecutionInfo, FailureInfo
from agent.store import (
    ANY,
    Attempt,
    BadToken,
    Conflict,
    Expect,
    JobChanges,
    JobExists,
    JobNotFound,
    MemoryStore,
    NewJob,
    NewTask,
    Rejected,
    SqliteStore,
    Store,
    StoreThread,
    TaskChanges,
    TaskExists,
    TaskNotFound,
    TaskRecord,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


class Clock:
    """Time as an input: it moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s: Store = SqliteStore(tmp_path / "state", clock=clock) if request.param == "sqlite" else MemoryStore(clock=clock)
    yield s
    s.close()


def job(store: Store, job_id: str = "Job1", **kw: object) -> None:
    store.add_job(NewJob(job_id, {"id": job_id, "poolInfo": {"poolId": "p"}}, **kw))  # type: ignore[arg-type]


def task(task_id: str, slots: int = 1) -> NewTask:
    return NewTask(task_id, {"id": task_id, "commandLine": "/bin/true"}, required_slots=slots)


def ok(result: object) -> TaskRecord:
    assert isinstance(result, TaskRecord), result
    return result


# ---- jobs ------------------------------------------------------------------------------------

def test_add_get_job_stamps_and_finds_any_case(store: Store) -> None:
    rec = store.add_job(NewJob("MyJob", {"id": "MyJob", "priority": 5}, priority=5, uses_task_dependencies=True,
                               on_all_tasks_complete="terminatejob", on_task_failure="performexitoptionsjobaction"))
    assert re.fullmatch(r"0x8D[0-9A-F]{13}", rec.etag)
    assert (rec.state, rec.creation_time, rec.last_modified, rec.state_transition_time) == ("active", T0, T0, T0)
    assert rec.previous_state is None and rec.previous_state_transition_time is None
    got = store.get_job("MYJOB")
    assert got == rec and got.id == "MyJob" and got.body == {"id": "MyJob", "priority": 5}
    assert (got.priority, got.uses_task_dependencies, got.on_all_tasks_complete) == (5, True, "terminatejob")
    with pytest.raises(JobExists):
        store.add_job(NewJob("myjob", {}))
    with pytest.raises(JobNotFound):
        store.get_job("other")


def test_transition_job_moves_previous_state_and_guards(store: Store, clock: Clock) -> None:
    first = store.add_job(NewJob("j", {}))
    t1 = clock.tick()
    moved = store.transition_job("j", Expect(etag=first.etag, states=frozenset({"active"})),
                                 JobChanges(state="terminating", execution_info={"terminateReason": "UserTerminate"}))
    assert not isinstance(moved, Conflict)
    assert (moved.state, moved.previous_state, moved.previous_state_transition_time) == ("terminating", "active", T0)
    assert moved.state_transition_time == t1 == moved.last_modified and moved.etag != first.etag
    assert moved.execution_info == {"terminateReason": "UserTerminate"}
    stale = store.transition_job("j", Expect(etag=first.etag), JobChanges(priority=3))
    assert isinstance(stale, Conflict) and stale.current == moved
    wrong = store.transition_job("j", Expect(states=frozenset({"active"})), JobChanges(state="disabling"))
    assert isinstance(wrong, Conflict) and wrong.current.state == "terminating"
    clock.tick()
    same = store.transition_job("j", ANY, JobChanges(priority=7, state="terminating"))
    assert not isinstance(same, Conflict)
    assert same.state_transition_time == t1 and same.priority == 7 and same.etag != moved.etag
    assert store.get_job("J") == same
    with pytest.raises(JobNotFound):
        store.transition_job("nope", ANY, JobChanges(priority=1))
    with pytest.raises(ValueError, match="job state"):
        store.transition_job("j", ANY, JobChanges(state="paused"))


def test_list_jobs_pages_and_filters(store: Store) -> None:
    for i in range(5):
        job(store, f"job{i}")
    store.transition_job("job2", ANY, JobChanges(state="completed"))
    first = store.list_jobs(max_results=2)
    assert [j.id for j in first.items] == ["job0", "job1"] and first.next_token
    rest = store.list_jobs(max_results=10, token=first.next_token)
    assert [j.id for j in rest.items] == ["job2", "job3", "job4"] and rest.next_token is None
    assert [j.id for j in store.list_jobs(states=frozenset({"completed"})).items] == ["job2"]
    odd = store.list_jobs(max_results=1, match=lambda j: j.id in {"job1", "job3"})
    assert [j.id for j in odd.items] == ["job1"]
    assert [j.id for j in store.list_jobs(token=odd.next_token, match=lambda j: j.id in {"job1", "job3"}).items] \
        == ["job3"]


def test_delete_job_removes_tasks_attempts_and_prep(store: Store, clock: Clock) -> None:
    job(store, "j")
    job(store, "keep")
    store.add_task("j", task("t"))
    store.add_task("keep", task("t"))
    store.transition_task("j", "t", ANY, TaskChanges(state="running", attempt=Attempt("task", "j", "t", 1, {"pid": 1},
                                                                                        clock())))
    store.save_attempt(Attempt("starttask", "", "", 1, {"pid": 2}, clock()))
    store.put_prep_release("j", None, preparation={"state": "completed"})
    rec = store.get_job("j")
    assert isinstance(store.delete_job("j", Expect(etag="0x1")), Conflict)
    assert store.delete_job("J", Expect(etag=rec.etag)) is None
    with pytest.raises(JobNotFound):
        store.get_job("j")
    with pytest.raises(JobNotFound):
        store.get_task("j", "t")
    assert [(a.kind, a.job_id) for a in store.open_attempts()] == [("starttask", "")]
    assert store.get_task("keep", "t").id == "t"
    job(store, "j")                                     # the id is free again, with nothing left over
    assert store.list_tasks("j").items == () and store.get_prep_release("j") is None


# ---- tasks -----------------------------------------------------------------------------------

def test_task_ids_unique_regardless_of_case_and_case_preserving(store: Store) -> None:
    job(store)
    rec = ok(store.add_task("job1", task("TaskA", slots=2)))
    assert (rec.id, rec.job_id, rec.state, rec.required_slots) == ("TaskA", "Job1", "active", 2)
    assert rec.execution_info == ExecutionInfo() and rec.node_info is None
    with pytest.raises(TaskExists):
        store.add_task("Job1", task("taska"))
    assert store.get_task("JOB1", "TASKA") == rec
    with pytest.raises(TaskNotFound):
        store.get_task("Job1", "TaskB")
    with pytest.raises(JobNotFound):
        store.add_task("nojob", task("x"))


def test_add_tasks_gives_one_result_per_task(store: Store) -> None:
    job(store)
    store.add_task("Job1", task("a"))
    results = store.add_tasks("Job1", [task("b"), task("A"), task("c"), task("B")])
    assert not isinstance(results, Conflict)
    assert [r.id if isinstance(r, TaskRecord) else r for r in results] == \
        ["b", Rejected("A", "TaskExists"), "c", Rejected("B", "TaskExists")]
    added = [r for r in results if isinstance(r, TaskRecord)]
    assert added[0].seq < added[1].seq and len({r.etag for r in added}) == 2
    assert [t.id for t in store.list_tasks("Job1").items] == ["a", "b", "c"]


def test_add_tasks_guarded_by_job_state(store: Store) -> None:
    job(store)
    store.transition_job("Job1", ANY, JobChanges(state="terminating"))
    result = store.add_tasks("Job1", [task("a"), task("b")], job_states=frozenset({"active", "disabled"}))
    assert isinstance(result, Conflict) and result.current.state == "terminating"
    single = store.add_task("Job1", task("a"), job_states=frozenset({"active"}))
    assert isinstance(single, Conflict)
    assert store.list_tasks("Job1").items == ()


def test_bodies_are_private_copies(store: Store) -> None:
    body = {"id": "t", "commandLine": "echo", "environmentSettings": [{"name": "A", "value": "1"}]}
    job(store)
    store.add_task("Job1", NewTask("t", body))
    body["environmentSettings"][0]["value"] = "changed"  # type: ignore[index]
    assert store.get_task("Job1", "t").body["environmentSettings"][0]["value"] == "1"
    with pytest.raises(TypeError):
        store.add_task("Job1", NewTask("u", {"x": object()}))
    with pytest.raises(TaskNotFound):
        store.get_task("Job1", "u")


def test_records_handed_out_are_the_callers_to_mutate(store: Store, clock: Clock) -> None:
    job(store)
    ok(store.add_task("Job1", task("t")))
    store.transition_task("Job1", "t", ANY, TaskChanges(node_info={"nodeId": "n"}))
    store.put_prep_release("Job1", None, preparation={"state": "running"})
    store.save_attempt(Attempt("task", "Job1", "t", 1, {"pid": 1}, clock()))
    got = store.get_task("Job1", "t")
    got.body["commandLine"] = "changed"  # type: ignore[index]
    got.node_info["nodeId"] = "changed"  # type: ignore[index]
    store.list_tasks("Job1").items[0].body["id"] = "changed"  # type: ignore[index]
    store.get_job("Job1").body["id"] = "changed"  # type: ignore[index]
    prep = store.get_prep_release("Job1")
    assert prep is not None and prep.preparation is not None
    prep.preparation["state"] = "changed"  # type: ignore[index]
    store.open_attempts()[0].handle["pid"] = 99  # type: ignore[index]
    again = store.get_task("Job1", "t")
    assert again.body == {"id": "t", "commandLine": "/bin/true"} and again.node_info == {"nodeId": "n"}
    assert store.get_job("Job1").body["id"] == "Job1"
    assert store.get_prep_release("Job1").preparation == {"state": "running"}  # type: ignore[union-attr]
    assert store.open_attempts()[0].handle == {"pid": 1}


def test_transition_task_is_compare_and_swap(store: Store, clock: Clock) -> None:
    job(store)
    added = ok(store.add_task("Job1", task("t")))
    t1 = clock.tick()
    handle = {"kind": "process", "pid": 42, "pgid": 42, "create_time": 1.5}
    running = ok(store.transition_task(
        "Job1", "T", Expect(etag=added.etag, states=frozenset({"active"})),
        TaskChanges(state="running", execution_info=ExecutionInfo(start_time=t1),
                    node_info={"nodeId": "n1", "poolId": "p"},
                    attempt=Attempt("task", "Job1", "t", 1, handle, t1))))
    assert (running.state, running.previous_state, running.state_transition_time) == ("running", "active", t1)
    assert running.previous_state_transition_time == T0 and running.node_info == {"nodeId": "n1", "poolId": "p"}
    assert running.execution_info.start_time == t1 and running.id == "t"
    assert [(a.number, a.handle) for a in store.open_attempts()] == [(1, handle)]
    lost = store.transition_task("Job1", "t", Expect(etag=added.etag), TaskChanges(state="completed"))
    assert isinstance(lost, Conflict) and lost.current == running
    t2 = clock.tick()
    failure = FailureInfo.user("FailureExitCode", "The task exited with an exit code representing a failure")
    done = ok(store.transition_task("Job1", "t", Expect(etag=running.etag), TaskChanges(
        state="completed", dependency_action="block",
        execution_info=ExecutionInfo(start_time=t1, end_time=t2, exit_code=3, failure_info=failure, retry_count=2))))
    store.end_attempt(Attempt("task", "job1", "T", 1, {}, t1), t2)
    assert store.open_attempts() == []
    got = store.get_task("Job1", "t")
    assert got == done and got.execution_info.failure_info == failure and got.dependency_action == "block"
    assert str(got.execution_info.result) == "failure"
    again = ok(store.transition_task("Job1", "t", ANY, TaskChanges(
        state="active", execution_info=ExecutionInfo(), node_info=None, dependency_action=None)))
    assert again.node_info is None and again.execution_info.exit_code is None and again.previous_state == "completed"
    with pytest.raises(ValueError, match="task state"):
        store.transition_task("Job1", "t", ANY, TaskChanges(state="waiting"))
    with pytest.raises(TaskNotFound):
        store.transition_task("Job1", "nope", ANY, TaskChanges(state="running"))


def test_every_write_gets_a_new_increasing_etag(store: Store) -> None:
    seen = [store.add_job(NewJob("j", {})).etag]      # the clock stands still: eTags still move
    adds = store.add_tasks("j", [task(f"t{i}") for i in range(3)])
    assert not isinstance(adds, Conflict)
    seen += [r.etag for r in adds if isinstance(r, TaskRecord)]
    for state in ("running", "completed", "active"):
        seen.append(ok(store.transition_task("j", "t0", ANY, TaskChanges(state=state))).etag)
    rec = store.transition_job("j", ANY, JobChanges(priority=1))
    assert not isinstance(rec, Conflict)
    seen.append(rec.etag)
    assert len(set(seen)) == len(seen) and [int(e, 16) for e in seen] == sorted(int(e, 16) for e in seen)


def test_delete_task(store: Store, clock: Clock) -> None:
    job(store)
    rec = ok(store.add_task("Job1", task("t")))
    store.save_attempt(Attempt("task", "Job1", "t", 1, {"pid": 5}, clock()))
    assert isinstance(store.delete_task("Job1", "t", Expect(states=frozenset({"completed"}))), Conflict)
    assert store.delete_task("job1", "T", Expect(etag=rec.etag)) is None
    assert store.open_attempts() == []
    with pytest.raises(TaskNotFound):
        store.delete_task("Job1", "t", ANY)
    ok(store.add_task("Job1", task("T")))


def test_list_tasks_pages_stay_stable_while_rows_are_added(store: Store) -> None:
    job(store)
    store.add_tasks("Job1", [task(f"t{i:02}") for i in range(5)])
    page1 = store.list_tasks("Job1", max_results=2)
    assert [t.id for t in page1.items] == ["t00", "t01"]
    store.add_tasks("Job1", [task("a-new"), task("t99")])  # added between two page fetches
    page2 = store.list_tasks("Job1", max_results=3, token=page1.next_token)
    page3 = store.list_tasks("Job1", max_results=3, token=page2.next_token)
    assert [t.id for t in page2.items + page3.items] == ["t02", "t03", "t04", "a-new", "t99"]
    assert page3.next_token is None
    exact = store.list_tasks("Job1", max_results=7)
    assert len(exact.items) == 7 and exact.next_token is None
    with pytest.raises(BadToken):
        store.list_tasks("Job1", token="garbage!")
    with pytest.raises(JobNotFound):
        store.list_tasks("none")


def test_list_tasks_by_state_and_predicate(store: Store) -> None:
    job(store)
    store.add_tasks("Job1", [task(f"t{i}") for i in range(6)])
    for tid in ("t1", "t3", "t4"):
        store.transition_task("Job1", tid, ANY, TaskChanges(state="completed"))
    store.transition_task("Job1", "t5", ANY, TaskChanges(state="running"))
    done = store.list_tasks("Job1", states=frozenset({"completed"}))
    assert [t.id for t in done.items] == ["t1", "t3", "t4"]
    both = store.list_tasks("Job1", states=frozenset({"completed", "running"}), max_results=3)
    assert [t.id for t in both.items] == ["t1", "t3", "t4"] and both.next_token
    assert [t.id for t in store.list_tasks("Job1", states=frozenset(), max_results=3).items] == []
    pred = store.list_tasks("Job1", match=lambda t: t.id > "t2", max_results=2)
    assert [t.id for t in pred.items] == ["t3", "t4"] and pred.next_token
    tail = store.list_tasks("Job1", match=lambda t: t.id > "t2", token=pred.next_token)
    assert [t.id for t in tail.items] == ["t5"] and tail.next_token is None


def test_task_counts_and_slots(store: Store) -> None:
    job(store)
    job(store, "other")
    store.add_tasks("Job1", [task("a", 1), task("b", 2), task("c", 3), task("d", 4), task("e", 5)])
    store.add_task("other", task("x", 7))
    store.transition_task("Job1", "b", ANY, TaskChanges(state="preparing"))
    store.transition_task("Job1", "c", ANY, TaskChanges(state="running"))
    store.transition_task("other", "x", ANY, TaskChanges(state="running"))
    end = datetime(2026, 1, 3, tzinfo=UTC)
    store.transition_task("Job1", "d", ANY, TaskChanges(state="completed", execution_info=ExecutionInfo(
        end_time=end, exit_code=0)))
    store.transition_task("Job1", "e", ANY, TaskChanges(state="completed", execution_info=ExecutionInfo(
        end_time=end, exit_code=1, failure_info=FailureInfo.user("FailureExitCode", "m"))))
    counts = store.task_counts("job1")
    assert (counts.tasks.active, counts.tasks.running, counts.tasks.completed) == (1, 2, 2)
    assert (counts.tasks.succeeded, counts.tasks.failed) == (1, 1)
    assert (counts.slots.active, counts.slots.running, counts.slots.completed) == (1, 5, 9)
    assert (counts.slots.succeeded, counts.slots.failed) == (4, 5)
    assert store.slots_in_use() == 2 + 3 + 7


def test_next_runnable_in_priority_then_submission_order(store: Store) -> None:
    job(store, "low", priority=-10)
    job(store, "high", priority=100)
    job(store, "off")
    store.add_tasks("low", [task("l1"), task("l2")])
    store.add_tasks("off", [task("o1")])
    store.add_tasks("high", [task("h1"), task("h2"), task("h3")])
    store.transition_job("off", ANY, JobChanges(state="disabled"))
    store.transition_task("high", "h2", ANY, TaskChanges(state="running"))
    page = store.next_runnable(2)
    assert [(t.job_id, t.id) for t in page.items] == [("high", "h1"), ("high", "h3")] and page.next_token
    rest = store.next_runnable(10, page.next_token)
    assert [t.id for t in rest.items] == ["l1", "l2"] and rest.next_token is None
    store.transition_job("low", ANY, JobChanges(priority=1000))
    assert [t.id for t in store.next_runnable(10).items] == ["l1", "l2", "h1", "h3"]


def test_find_tasks_by_ids_and_ranges(store: Store) -> None:
    job(store)
    store.add_tasks("Job1", [task(i) for i in ("1", "02", "003", "4", "10", "abc", "Named", "9" * 30)])
    assert [t.id for t in store.find_tasks("Job1", ids=["named", "ABC", "missing"])] == ["abc", "Named"]
    assert [t.id for t in store.find_tasks("Job1", ranges=[(2, 4)])] == ["02", "003", "4"]
    assert [t.id for t in store.find_tasks("Job1", ids=["1"], ranges=[(10, 2**31 - 1)])] == ["1", "10"]
    with pytest.raises(JobNotFound):
        store.find_tasks("none", ids=["1"])


def test_prep_release_status_is_compare_and_swap(store: Store) -> None:
    job(store)
    assert store.get_prep_release("job1") is None
    first = store.put_prep_release("Job1", None, preparation={"state": "running", "retryCount": 0})
    assert not isinstance(first, Conflict) and first.release is None and first.job_id == "Job1"
    assert isinstance(store.put_prep_release("Job1", None, release={}), Conflict)
    second = store.put_prep_release("Job1", first.etag, release={"state": "completed", "exitCode": 0})
    assert not isinstance(second, Conflict)
    assert second.preparation == {"state": "running", "retryCount": 0} and second.etag != first.etag
    assert store.get_prep_release("Job1") == second
    stale = store.put_prep_release("Job1", first.etag, preparation=None)
    assert isinstance(stale, Conflict) and stale.current == second
    with pytest.raises(JobNotFound):
        store.get_prep_release("none")


def test_attempts_for_every_kind(store: Store, clock: Clock) -> None:
    job(store)
    made = [Attempt("starttask", "", "", 1, {"pid": 1}, clock()),
            Attempt("jobpreparation", "Job1", "", 1, {"pid": 2}, clock.tick()),
            Attempt("task", "Job1", "t", 2, {"container_id": "abc"}, clock.tick())]
    for a in made:
        store.save_attempt(a)
    assert store.open_attempts() == made
    store.save_attempt(Attempt("jobpreparation", "Job1", "", 1, {"pid": 3}, made[1].started))   # replaced
    assert store.open_attempts()[1].handle == {"pid": 3}
    with pytest.raises(ValueError, match="attempt kind"):
        store.save_attempt(Attempt("daemon", "", "", 1, {}, clock()))


async def test_store_thread_serves_the_loop_and_one_cas_wins(store: Store) -> None:
    bridge = StoreThread(store)
    await bridge.run(lambda s: s.add_job(NewJob("j", {})))
    rec = ok(await bridge.run(lambda s: s.add_task("j", task("t"))))
    results = await asyncio.gather(*[
        bridge.run(lambda s: s.transition_task("j", "t", Expect(etag=rec.etag), TaskChanges(state="running")))
        for _ in range(20)])
    assert sum(not isinstance(r, Conflict) for r in results) == 1
    assert (await bridge.run(lambda s: s.get_task("j", "t"))).state == "running"
    with pytest.raises(TaskNotFound):
        await bridge.run(lambda s: s.get_task("j", "missing"))
    await bridge.aclose()
