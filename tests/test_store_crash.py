"""Crash safety for real: a child process writes transitions in a loop and is SIGKILLed at random
points; after every kill the database opens, passes ``PRAGMA integrity_check``, holds every
transition the child acknowledged, and no transaction is half applied."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.store import DB_NAME, SqliteStore

REPO = Path(__file__).resolve().parents[1]
KILLS = 10

# Each round i is two transactions: add b{i}-0..2 (one add-collection), then move b{i}-0 to running
# together with its attempt (run handle). "add i" / "run i" are printed only after the commit
# returned, so a printed line is an acknowledged transition.
CHILD = r"""
import sys
from datetime import UTC, datetime
from pathlib import Path
from agent.store import ANY, Attempt, JobExists, NewJob, NewTask, SqliteStore, TaskChanges, TaskNotFound

store = SqliteStore(Path(sys.argv[1]), synchronous=sys.argv[2])
try:
    store.add_job(NewJob("j", {"id": "j"}))
except JobExists:
    pass
i = 0
while True:
    try:
        store.get_task("j", f"b{i}-0")
    except TaskNotFound:
        break
    i += 1
print(f"ready {i}", flush=True)
while True:
    store.add_tasks("j", [NewTask(f"b{i}-{k}", {"round": i, "k": k}) for k in range(3)])
    print(f"add {i}", flush=True)
    store.transition_task("j", f"b{i}-0", ANY, TaskChanges(
        state="running", attempt=Attempt("task", "j", f"b{i}-0", 1, {"pid": i}, datetime.now(UTC))))
    print(f"run {i}", flush=True)
    i += 1
"""


def check(state: Path, acked_add: set[int], acked_run: set[int]) -> None:
    conn = sqlite3.connect(state / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    rounds: dict[int, set[int]] = {}
    for (task_id,) in conn.execute("SELECT id FROM tasks"):
        r, k = task_id[1:].split("-")
        rounds.setdefault(int(r), set()).add(int(k))
    running = {int(t[1:].split("-")[0]) for (t,) in conn.execute("SELECT id FROM tasks WHERE state = 'running'")}
    attempts = {int(t[1:].split("-")[0]) for (t,) in conn.execute("SELECT task_id FROM attempts")}
    conn.close()
    assert all(ks == {0, 1, 2} for ks in rounds.values()), "an add-collection was half applied"
    assert running == attempts, "a state change and its run handle were not written together"
    assert acked_add <= rounds.keys(), f"acknowledged adds lost: {sorted(acked_add - rounds.keys())}"
    assert acked_run <= running, f"acknowledged transitions lost: {sorted(acked_run - running)}"
    SqliteStore(state).close()                                # the store itself opens it again


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_sigkill_at_random_points_loses_nothing_acknowledged(tmp_path: Path, synchronous: str) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    state = tmp_path / "state"
    acked_add: set[int] = set()
    acked_run: set[int] = set()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for kill in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(state), synchronous], stdout=subprocess.PIPE,
                                 text=True, env=env)
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[0] == "ready", ready
        assert int(ready[1]) >= max(acked_add, default=-1) + 1
        target = rng.randint(1, 60)
        for _ in range(target):
            verb, number = child.stdout.readline().split()
            (acked_add if verb == "add" else acked_run).add(int(number))
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        for line in child.stdout:                             # printed before the kill landed: also acked
            verb, number = line.split()
            (acked_add if verb == "add" else acked_run).add(int(number))
        child.stdout.close()
        check(state, acked_add, acked_run)
        print(f"seed {seed} kill {kill}: {len(acked_add)} adds, {len(acked_run)} runs acknowledged")
    assert len(acked_run) >= KILLS
