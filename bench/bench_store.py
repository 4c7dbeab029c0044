"""Benchmark of agent.store (SQLite) with 10,000 tasks, against baselines measured in the same run.

- insert 10,000 tasks as add-collection batches of 100: SqliteStore (synchronous FULL and NORMAL)
  vs raw sqlite3 executemany of the same JSON into a bare table (same pragmas), and vs a dict;
- one task transition (a write: CAS + attempt) p50/p99, FULL vs NORMAL vs a raw UPDATE;
- get-task p50/p99: SqliteStore.get_task vs a raw SELECT by key vs dict + json.loads;
- the same get through StoreThread from asyncio (what the service pays per call);
- list-by-state (one page of 1000) and task counts;
- RSS of a fresh process holding the store after reading every task, vs one holding a dict of JSON;
- database size vs the JSON bytes.

Run: .venv/bin/python bench/bench_store.py  (state under /var/tmp, on the root disk)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.store import ANY, Attempt, NewJob, NewTask, SqliteStore, Store, StoreThread, TaskChanges  # noqa: E402
from agent.store.common import utc_now  # noqa: E402

N, BATCH, GETS = 10_000, 100, 3000
SAS = "sv=2024-05-04&ss=b&srt=co&sp=rl&se=2026-12-31T00:00:00Z&sig=Zm9vYmFyYmF6cXV4cXV1eGZvb2Jhcg%3D%3D"


def body(i: int) -> dict[str, object]:
    return {
        "id": f"task-{i:05}", "displayName": f"render frame {i}",
        "commandLine": f"/bin/sh -c 'render --frame {i} --out $AZ_BATCH_TASK_WORKING_DIR/out'",
        "resourceFiles": [{"httpUrl": f"https://acct.blob.core.windows.net/in/scene-{i % 50}.blend?{SAS}",
                           "filePath": "scene.blend"}],
        "outputFiles": [{"filePattern": "out/*.png", "destination": {"container": {
            "containerUrl": f"https://acct.blob.core.windows.net/out?{SAS}", "path": f"frames/{i}"}},
            "uploadOptions": {"uploadCondition": "taskSuccess"}}],
        "environmentSettings": [{"name": "FRAME", "value": str(i)}, {"name": "QUALITY", "value": "high"}],
        "constraints": {"maxWallClockTime": "PT1H", "maxTaskRetryCount": 2, "retentionTime": "P7D"},
        "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}},
    }


BODIES = [body(i) for i in range(N)]
IDS = [f"task-{i:05}" for i in range(N)]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def timed_each(fn: Callable[[int], object], count: int) -> list[float]:
    out = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def line(name: str, ours: float, base: float, unit: str, base_name: str) -> None:
    print(f"  {name:<44} {ours:10.3f} {unit:<3} | {base_name:<28} {base:10.3f} {unit:<3} ratio {ours / base:6.2f}x")


def fill_store(state: Path, sync: str) -> tuple[SqliteStore, float]:
    store = SqliteStore(state, synchronous=sync)  # type: ignore[arg-type]
    store.add_job(NewJob("job", {"id": "job", "poolInfo": {"poolId": "local"}}))
    start = time.perf_counter()
    for b in range(0, N, BATCH):
        store.add_tasks("job", [NewTask(IDS[i], BODIES[i]) for i in range(b, b + BATCH)])
    return store, time.perf_counter() - start


def fill_raw(path: Path, sync: str) -> tuple[sqlite3.Connection, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync}")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, key TEXT UNIQUE, state TEXT, body TEXT)")
    conn.execute("CREATE INDEX t_state ON t (state, seq)")
    start = time.perf_counter()
    for b in range(0, N, BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t (key, state, body) VALUES (?, 'active', ?)",
                         [(IDS[i].lower(), json.dumps(BODIES[i])) for i in range(b, b + BATCH)])
        conn.execute("COMMIT")
    return conn, time.perf_counter() - start


RSS_CHILD = r"""
import json, sys, psutil
from pathlib import Path
kind, where, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "store":
    from agent.store import SqliteStore
    s = SqliteStore(Path(where))
    for i in range(n):
        s.get_task("job", f"task-{i:05}")
    page = s.list_tasks("job")
    s.task_counts("job")
    held = s
else:
    held = {f"task-{i:05}": json.dumps(json.loads(line)) for i, line in enumerate(open(where))}
print(psutil.Process().memory_info().rss)
"""


def rss(kind: str, where: Path) -> float:
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, kind, str(where), str(N)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return int(out.stdout) / 2**20


async def through_thread(store: Store, ids: list[str]) -> list[float]:
    bridge = StoreThread(store)
    out = []
    for tid in ids:
        start = time.perf_counter()
        await bridge.run(lambda s, tid=tid: s.get_task("job", tid))  # type: ignore[misc]
        out.append(time.perf_counter() - start)
    bridge._executor.shutdown()
    return out


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-store-", dir="/var/tmp"))
    os.chmod(base, 0o700)
    rng = random.Random(8)
    probe = [rng.choice(IDS) for _ in range(GETS)]
    try:
        print(f"== agent.store, {N} tasks of ~{len(json.dumps(BODIES[0]))} B JSON, batches of {BATCH} "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: p99s follow the load)")
        stores, raws = {}, {}
        for sync in ("FULL", "NORMAL"):
            stores[sync], ours = fill_store(base / f"state-{sync}", sync)
            raws[sync], raw = fill_raw(base / f"raw-{sync}.db", sync)
            line(f"insert {N} (add_tasks x{N // BATCH}), {sync}", ours * 1e3, raw * 1e3, "ms", "raw executemany")
        start = time.perf_counter()
        plain = {IDS[i]: json.dumps(BODIES[i]) for i in range(N)}
        print(f"  {'(dict of JSON strings: insert ' + str(N) + ')':<44} {(time.perf_counter() - start) * 1e3:10.3f} ms")

        print("-- one write (transition_task to running + attempt; raw: one UPDATE), 1000 each")
        for sync in ("FULL", "NORMAL"):
            s, conn = stores[sync], raws[sync]
            ours_w = timed_each(lambda i, s=s: s.transition_task("job", IDS[i], ANY, TaskChanges(  # type: ignore[misc]
                state="running", attempt=Attempt("task", "job", IDS[i], 1, {"pid": i}, utc_now()))), 1000)

            def raw_update(i: int, conn: sqlite3.Connection = conn) -> None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE t SET state = 'running' WHERE key = ?", (IDS[i].lower(),))
                conn.execute("COMMIT")

            raw_w = timed_each(raw_update, 1000)
            line(f"write p50, {sync}", pct(ours_w, 50) * 1e3, pct(raw_w, 50) * 1e3, "ms", "raw UPDATE txn")
            line(f"write p99, {sync}", pct(ours_w, 99) * 1e3, pct(raw_w, 99) * 1e3, "ms", "raw UPDATE txn")

        print(f"-- get one task by id, {GETS} random ids")
        s, conn = stores["FULL"], raws["FULL"]
        ours_g = timed_each(lambda i: s.get_task("job", probe[i]), GETS)
        raw_g = timed_each(lambda i: json.loads(conn.execute("SELECT body FROM t WHERE key = ?",
                                                             (probe[i].lower(),)).fetchone()[0]), GETS)
        dict_g = timed_each(lambda i: json.loads(plain[probe[i]]), GETS)
        thread_g = asyncio.run(through_thread(s, probe))
        for q in (50, 99):
            line(f"get_task p{q}", pct(ours_g, q) * 1e3, pct(raw_g, q) * 1e3, "ms", "raw SELECT + json.loads")
            line(f"get_task p{q}", pct(ours_g, q) * 1e3, pct(dict_g, q) * 1e3, "ms", "dict + json.loads")
            line(f"get_task via StoreThread p{q}", pct(thread_g, q) * 1e3, pct(ours_g, q) * 1e3, "ms", "direct call")

        print("-- list by state (first page of 1000) and task counts, 50 runs each")
        ours_l = timed_each(lambda i: s.list_tasks("job", states=frozenset({"active"})), 50)
        raw_l = timed_each(lambda i: [json.loads(r[0]) for r in conn.execute(
            "SELECT body FROM t WHERE state = 'active' ORDER BY seq LIMIT 1001")], 50)
        line("list_tasks(state=active) p50", pct(ours_l, 50) * 1e3, pct(raw_l, 50) * 1e3, "ms", "raw SELECT+loads")
        line("list_tasks(state=active) p99", pct(ours_l, 99) * 1e3, pct(raw_l, 99) * 1e3, "ms", "raw SELECT+loads")
        ours_c = timed_each(lambda i: s.task_counts("job"), 50)
        raw_c = timed_each(lambda i: conn.execute("SELECT state, count(*) FROM t GROUP BY state").fetchall(), 50)
        line("task_counts p50", pct(ours_c, 50) * 1e3, pct(raw_c, 50) * 1e3, "ms", "raw GROUP BY")
        line("task_counts p99", pct(ours_c, 99) * 1e3, pct(raw_c, 99) * 1e3, "ms", "raw GROUP BY")

        for st in stores.values():
            st.close()
        for c in raws.values():
            c.close()
        jsonl = base / "tasks.jsonl"
        jsonl.write_text("".join(json.dumps(b) + "\n" for b in BODIES))
        print("-- memory and size")
        ours_rss, dict_rss = rss("store", base / "state-FULL"), rss("dict", jsonl)
        line("RSS, process holding the store (read all)", ours_rss, dict_rss, "MiB", "process holding a dict")
        size = sum(f.stat().st_size for f in (base / "state-FULL").iterdir())
        line("database size (db + wal + shm)", size / 2**20, jsonl.stat().st_size / 2**20, "MiB", "the JSON bytes")
        print("  aims (issue 8, whole service): RSS < 150 MB and get-task p99 < 20 ms with 10,000 tasks")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
