"""What only the SQLite backend has: a real file that survives, root-only modes, pragmas, the
schema version and its in-place upgrade, a second connection racing for the same row."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.store import (
    ANY,
    DB_NAME,
    Conflict,
    Expect,
    NewJob,
    NewTask,
    SchemaTooNew,
    SqliteStore,
    StoreError,
    StoreThread,
    StoreUnsafe,
    TaskChanges,
    TaskRecord,
)
from agent.store import schema as store_schema

SECRET = "sv=2024&sig=PLANTEDSECRETabc123%3D"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_files_are_created_root_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = SqliteStore(state)
    store.add_job(NewJob("j", {}))
    db = state / DB_NAME
    assert mode(state) == 0o700
    for path in (db, db.with_name(DB_NAME + "-wal"), db.with_name(DB_NAME + "-shm")):
        assert path.exists() and mode(path) == 0o600, path
        assert os.lstat(path).st_uid == os.geteuid()
    store.close()


@pytest.mark.parametrize("loosen", ["dir-group", "dir-world", "db", "wal"])
def test_refuses_state_open_to_others(tmp_path: Path, loosen: str) -> None:
    state = tmp_path / "state"
    SqliteStore(state).close()
    target = {"dir-group": state, "dir-world": state, "db": state / DB_NAME,
              "wal": state / (DB_NAME + "-wal")}[loosen]
    if not target.exists():
        target.touch(mode=0o600)
    os.chmod(target, {"dir-group": 0o750, "dir-world": 0o701, "db": 0o644, "wal": 0o640}[loosen])
    with pytest.raises(StoreUnsafe, match="open to group or others"):
        SqliteStore(state)


def test_refuses_state_not_owned_by_the_agent(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test changes ownership: run it as root (the agent's own user)")
    state = tmp_path / "state"
    SqliteStore(state).close()
    os.chown(state / DB_NAME, 65534, 65534)
    with pytest.raises(StoreUnsafe, match="owned by uid 65534"):
        SqliteStore(state)
    os.chown(state / DB_NAME, 0, 0)
    os.chown(state, 65534, 65534)
    with pytest.raises(StoreUnsafe, match="owned by uid 65534"):
        SqliteStore(state)


def test_refuses_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real"
    SqliteStore(real).close()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(StoreUnsafe, match="not a symlink"):
        SqliteStore(tmp_path / "link")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / DB_NAME).symlink_to(real / DB_NAME)
    with pytest.raises(StoreUnsafe, match="regular file"):
        SqliteStore(state)


def test_pragmas(tmp_path: Path) -> None:
    for sync, number in (("FULL", 2), ("NORMAL", 1)):
        store = SqliteStore(tmp_path / sync, synchronous=sync)  # type: ignore[arg-type]
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == number
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2          # memory
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 2       # fast
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store_schema.MIGRATIONS)
        store.close()
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        SqliteStore(tmp_path / "x", synchronous="OFF")  # type: ignore[arg-type]


def test_state_and_etags_survive_a_reopen_even_with_the_clock_stepped_back(tmp_path: Path) -> None:
    later = datetime(2030, 1, 1, tzinfo=UTC)
    store = SqliteStore(tmp_path / "s", clock=lambda: later)
    store.add_job(NewJob("j", {"id": "j"}))
    rec = store.add_task("j", NewTask("T", {"commandLine": SECRET}))
    assert isinstance(rec, TaskRecord)
    store.close()
    earlier = later - timedelta(days=365)
    again = SqliteStore(tmp_path / "s", clock=lambda: earlier)
    got = again.get_task("J", "t")
    assert got == rec
    moved = again.transition_task("j", "t", Expect(etag=rec.etag), TaskChanges(state="running"))
    assert isinstance(moved, TaskRecord) and int(moved.etag, 16) > int(rec.etag, 16)
    assert moved.last_modified == earlier
    again.close()


def test_upgrade_in_place_keeps_the_data(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    store.add_job(NewJob("j", {"id": "j"}))
    store.add_task("j", NewTask("t", {"commandLine": "x"}))
    store.close()

    def v2(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE tasks ADD COLUMN affinity TEXT")
        conn.execute("UPDATE tasks SET affinity = 'TVM:' || id")

    conn = sqlite3.connect(tmp_path / "s" / DB_NAME, isolation_level=None)
    assert store_schema.migrate(conn, (*store_schema.MIGRATIONS, v2)) == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT id, affinity FROM tasks").fetchall() == [("t", "TVM:t")]
    assert store_schema.migrate(conn, (*store_schema.MIGRATIONS, v2)) == 2          # idempotent
    conn.close()
    with pytest.raises(SchemaTooNew, match="schema version 2"):
        SqliteStore(tmp_path / "s")


def test_a_failed_upgrade_step_leaves_the_old_version(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s").close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("step failed")

    conn = sqlite3.connect(tmp_path / "s" / DB_NAME, isolation_level=None)
    with pytest.raises(RuntimeError):
        store_schema.migrate(conn, (*store_schema.MIGRATIONS, broken))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0
    conn.close()


def test_two_connections_one_compare_and_swap_wins(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "s")
    first.add_job(NewJob("j", {}))
    rec = first.add_task("j", NewTask("t", {}))
    assert isinstance(rec, TaskRecord)
    stores = [first, SqliteStore(tmp_path / "s")]
    start = threading.Barrier(8)
    results: list[object] = []

    def race(i: int) -> None:
        start.wait()
        results.append(stores[i % 2].transition_task("j", "t", Expect(etag=rec.etag),
                                                     TaskChanges(state="running", required_slots=i + 1)))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, TaskRecord)]
    assert len(winners) == 1 and sum(isinstance(r, Conflict) for r in results) == 7
    assert stores[1].get_task("j", "t") == winners[0]
    for s in stores:
        s.close()


def test_a_lock_held_past_busy_timeout_is_a_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s", busy_timeout_ms=50)
    store.add_job(NewJob("j", {}))
    other = sqlite3.connect(tmp_path / "s" / DB_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="write failed: database is locked"):
        store.add_task("j", NewTask("t", {}))
    other.execute("ROLLBACK")
    other.close()
    assert isinstance(store.add_task("j", NewTask("t", {})), TaskRecord)
    store.close()


async def test_a_blocked_write_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """While another connection holds the write lock, our write waits on the store thread and the
    loop keeps serving (here: other coroutines, and reads queued behind are answered after)."""
    store = SqliteStore(tmp_path / "s")
    store.add_job(NewJob("j", {}))
    bridge = StoreThread(store)
    other = sqlite3.connect(tmp_path / "s" / DB_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    write = asyncio.create_task(bridge.run(lambda s: s.add_task("j", NewTask("t", {}))))
    ticks = 0
    while ticks < 100:                            # the loop runs many times while the write waits
        await asyncio.sleep(0)
        ticks += 1
    assert not write.done()
    other.execute("COMMIT")
    other.close()
    assert isinstance(await write, TaskRecord)
    assert (await bridge.run(lambda s: s.get_task("j", "t"))).id == "t"
    await bridge.aclose()


def test_nothing_is_logged_and_secrets_stay_in_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = SqliteStore(tmp_path / "s")
    store.add_job(NewJob("j", {"commonEnvironmentSettings": [{"name": "TOKEN", "value": SECRET}]}))
    store.add_task("j", NewTask("t", {"resourceFiles": [{"httpUrl": f"https://a.blob/c/f?{SECRET}"}]}))
    store.transition_task("j", "t", ANY, TaskChanges(state="running"))
    with pytest.raises(StoreUnsafe) as info:
        os.chmod(tmp_path / "s" / DB_NAME, 0o644)
        SqliteStore(tmp_path / "s")
    store.close()
    assert caplog.records == []
    assert SECRET not in str(info.value)


def test_a_deleted_task_leaves_no_secret_in_the_file_after_a_checkpoint(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    store.add_job(NewJob("j", {}))
    store.add_tasks("j", [NewTask(f"keep{i}", {"commandLine": "x" * 200}) for i in range(5)])
    store.add_task("j", NewTask("t", {"resourceFiles": [{"httpUrl": f"https://a.blob/c/f?{SECRET}"}]}))
    store.add_tasks("j", [NewTask(f"more{i}", {"commandLine": "y" * 200}) for i in range(5)])
    store.delete_task("j", "t", ANY)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = b"".join(p.read_bytes() for p in (tmp_path / "s").iterdir())
    assert b"PLANTEDSECRET" not in data
    assert b"keep4" in data                            # the file is readable and holds the rest
    store.close()


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o700)
    (state / DB_NAME).write_bytes(b"not sqlite at all " * 100)
    os.chmod(state / DB_NAME, 0o600)
    with pytest.raises(StoreError, match="open failed: file is not a database"):
        SqliteStore(state)


def test_a_damaged_database_is_named_at_open(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    store.add_job(NewJob("j", {}))
    store.add_tasks("j", [NewTask(f"t{i}", {"commandLine": "x" * 500}) for i in range(100)])
    store.close()                                        # the last close checkpoints the WAL into the file
    db = tmp_path / "s" / DB_NAME
    data = bytearray(db.read_bytes())
    page = 4096
    data[6 * page:7 * page] = b"\xa5" * page             # one b-tree page of the tasks table, overwritten
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"the state database is damaged"):
        SqliteStore(tmp_path / "s")
