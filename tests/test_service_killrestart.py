"""A kill the agent started is finished by the next agent: terminate (and the wall clock) are
recorded in the attempt before the first signal, so an agent SIGKILLed mid-kill is followed by
one that ends the task as killed by the agent (TaskEnded, no retry), not as a plain failure of
the command's exit, and leaves nothing of it running."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from service_kit import job, service, sh, task, until, wait_file
from test_service_restart import open_dir

from agent.service.journal import KILL_KEY
from agent.store import SqliteStore

# The first agent: a long kill grace (120 s), so it is SIGKILLed while its kill waits on the
# task's ignored SIGTERM; it terminates the task when told on stdin.
CHILD = r'''
import asyncio, sys
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from service_kit import service
from agent.store import SqliteStore

async def main(root: Path, state: Path) -> None:
    svc = service(root, SqliteStore(state))
    cfg = svc.core.runner.config
    svc.core.runner.config = replace(cfg, tasks=replace(cfg.tasks, kill_grace=120.0))
    await svc.start()
    loop = asyncio.create_task(svc.serve())
    print("serving", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await svc.terminate_task("j", "t")
    await loop

asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def _killing(store: SqliteStore) -> bool:
    return any(a.handle.get(KILL_KEY) for a in store.open_attempts())


async def test_terminate_interrupted_by_a_sigkill_still_ends_the_task(node_root: Path, tmp_path: Path) -> None:
    lines = open_dir(node_root) / "pids"
    state = tmp_path / "state"
    svc = service(node_root, SqliteStore(state))
    await svc.add_job(job("j"))
    # SIGTERM ignored (inherited through exec): only the kill's SIGKILL ends it.
    await svc.add_task("j", task("t", sh(f'trap "" TERM; echo $$ >> {lines}; exec sleep 600'),
                                 constraints={"maxTaskRetryCount": 3}))
    await svc.aclose()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(node_root), str(state), str(Path(__file__).parent)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == b"serving"
        await asyncio.to_thread(wait_file, lines)
        pid = int(lines.read_text().split()[0])
        child.stdin.write(b"terminate\n")
        child.stdin.flush()
        store = SqliteStore(state)
        try:
            await until(lambda: _killing(store), "the kill to be recorded")
        finally:
            store.close()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdin.close()
        child.stdout.close()
    assert _alive(pid), "the first agent was killed mid-kill: its grace had not run out"

    svc = service(node_root, SqliteStore(state))
    try:
        assert await svc.start() == 0                       # re-attached, not requeued
        loop = asyncio.create_task(svc.serve())
        await until(lambda: _completed(svc), "the task to end")
        t = await svc.get_task("j", "t")
        info = t.execution_info
        assert info.failure_info is not None and info.failure_info.code == "TaskEnded", info
        assert info.retry_count == 0 and info.requeue_count == 0, info
        assert not _alive(pid)
        assert lines.read_text().split() == [str(pid)]      # never run again
        assert await svc.core.call(lambda s: s.open_attempts()) == []
        loop.cancel()
    finally:
        await svc.aclose()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


async def _completed(svc) -> bool:  # type: ignore[no-untyped-def]
    return (await svc.get_task("j", "t")).state == "completed"
