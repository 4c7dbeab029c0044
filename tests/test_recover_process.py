"""Restart safety of native tasks: a new ProcessRunner re-attaches to a task an agent that was
SIGKILLed started through the supervisor, and gets its REAL exit status; what cannot be re-attached
(another boot, a dead supervisor) is reported lost with nothing of it left running.

Real processes throughout: the "agent" is a child Python process running ``ProcessRunner``; it is
SIGKILLed once it has printed the handle it persisted. Tasks block on a FIFO until the test
releases them; nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from agent.process import UNKNOWN_EXIT_CODE, ProcessRunner
from agent.runner import ExitResult, RunHandle, RunRequest, TaskUser, boot_id
from agent.supervisor.client import SupervisorClient

REPO = Path(__file__).resolve().parents[1]
PATH = "/usr/local/bin:/usr/bin:/bin"
IDLE = 3.0                      # the test supervisors go away soon after their last task

# The agent: start one task through the supervisor, print the handle (as the store would keep
# it), then hang until SIGKILLed.
AGENT = """
import asyncio, json, sys
from pathlib import Path
from agent.process import ProcessRunner
from agent.runner import RunRequest, TaskUser
from agent.supervisor.client import SupervisorClient

root, work = Path(sys.argv[1]), Path(sys.argv[2])
async def main():
    runner = ProcessRunner(supervisor=SupervisorClient(root, idle=float(sys.argv[3])))
    request = RunRequest(job_id="job", task_id="task", attempt=1, argv=tuple(sys.argv[4:]),
                         env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, cwd=work / "wd",
                         stdout=work / "stdout.txt", stderr=work / "stderr.txt",
                         user=TaskUser(name="agent", uid=None, gid=None))
    handle = await runner.start(request)
    print(json.dumps(handle.to_json()), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "wd").mkdir()
    (tmp_path / "root").mkdir()
    os.mkfifo(tmp_path / "go")
    return tmp_path


@pytest.fixture
async def runner(work: Path) -> AsyncIterator[ProcessRunner]:
    runner = ProcessRunner(supervisor=SupervisorClient(work / "root", idle=IDLE))
    yield runner
    assert runner.supervisor is not None
    runner.supervisor.close()


def start_in_a_killed_agent(work: Path, *argv: str) -> RunHandle:
    """Run AGENT, read the handle it printed, SIGKILL it; the JSON round trip is the store's."""
    with open(work / "agent.err", "w") as err, subprocess.Popen(
            [sys.executable, "-c", AGENT, str(work / "root"), str(work), str(IDLE), *argv],
            cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True) as agent:
        try:
            assert agent.stdout is not None
            line = agent.stdout.readline()
        finally:
            agent.kill()
    assert line, (work / "agent.err").read_text()
    return RunHandle.from_json(json.loads(line))


async def release(work: Path) -> None:
    await asyncio.to_thread((work / "go").write_text, "go\n")


def tree_alive(handle: RunHandle, pids: list[int]) -> list[int]:
    """The pids among ``pids`` (and the main process) that still run (zombies count as gone)."""
    alive = []
    for pid in {*pids, handle.pid}:
        try:
            if pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


async def test_a_new_runner_gets_the_real_exit_code_after_the_agent_was_killed(
        runner: ProcessRunner, work: Path) -> None:
    handle = start_in_a_killed_agent(work, "sh", "-c", 'read x < ../go; echo "out $x"; echo err >&2; exit 42')
    assert handle.attempt_id and handle.boot_id == boot_id()
    assert await runner.recover(handle) is True
    await release(work)
    assert await runner.wait(handle) == ExitResult(42)
    assert (work / "stdout.txt").read_text() == "out go\n"
    assert (work / "stderr.txt").read_text() == "err\n"
    await runner.cleanup(handle)
    assert runner.supervisor is not None and handle.attempt_id is not None
    _running, exited = await runner.supervisor.list()
    assert handle.attempt_id not in exited                  # forgotten once recorded


async def test_a_task_killed_by_a_signal_reads_minus_the_signal(runner: ProcessRunner, work: Path) -> None:
    handle = start_in_a_killed_agent(work, "sh", "-c", "read x < ../go; kill -KILL $$")
    assert await runner.recover(handle) is True
    await release(work)
    assert await runner.wait(handle) == ExitResult(-signal.SIGKILL)
    await runner.cleanup(handle)


async def test_a_task_that_ended_while_no_agent_ran_is_recovered_with_its_code(
        runner: ProcessRunner, work: Path) -> None:
    handle = start_in_a_killed_agent(work, "sh", "-c", "read x < ../go; exit 7")
    await release(work)
    assert runner.supervisor is not None and handle.attempt_id is not None
    assert await runner.supervisor.wait(handle.attempt_id) is not None      # it has ended
    assert await runner.recover(handle) is True
    assert await runner.wait(handle) == ExitResult(7)
    await runner.cleanup(handle)


async def test_a_handle_from_another_boot_is_lost_and_nothing_of_it_runs(runner: ProcessRunner,
                                                                         work: Path) -> None:
    handle = start_in_a_killed_agent(work, "sh", "-c", 'sleep 1000 & echo $! > ../child; wait')
    child = int(await asyncio.to_thread(_read_when_complete, work / "child"))
    other = replace(handle, boot_id="00000000-0000-0000-0000-000000000000")
    assert await runner.recover(RunHandle.from_json(other.to_json())) is False
    assert tree_alive(handle, [child]) == []


async def test_an_old_handle_without_boot_or_attempt_id_is_lost_and_killed(runner: ProcessRunner,
                                                                           work: Path) -> None:
    handle = start_in_a_killed_agent(work, "sh", "-c", "exec sleep 1000")
    old = {k: v for k, v in handle.to_json().items() if k not in ("attempt_id", "boot_id")}
    assert await runner.recover(RunHandle.from_json(old)) is False
    assert tree_alive(handle, []) == []


async def test_a_killed_supervisor_loses_the_attempt_and_its_tree_is_killed(runner: ProcessRunner,
                                                                             work: Path) -> None:
    handle = start_in_a_killed_agent(work, "sh", "-c", 'setsid sleep 1000 & echo $! > ../child; wait')
    child = int(await asyncio.to_thread(_read_when_complete, work / "child"))
    assert runner.supervisor is not None
    os.kill(await runner.supervisor.ensure(), signal.SIGKILL)
    assert await runner.recover(handle) is False           # a new supervisor knows nothing of it
    assert tree_alive(handle, [child]) == []                # its cgroup took the setsid'd child too


async def test_a_supervisor_killed_during_wait_reports_lost_and_kills_the_tree(
        runner: ProcessRunner, work: Path) -> None:
    request = RunRequest(job_id="job", task_id="task", attempt=1, argv=("sleep", "1000"),
                         env={"PATH": PATH}, cwd=work / "wd", stdout=work / "stdout.txt",
                         stderr=work / "stderr.txt", user=TaskUser(name="agent", uid=None, gid=None))
    handle = await runner.start(request)
    assert isinstance(handle, RunHandle)
    waiting = asyncio.create_task(runner.wait(handle))
    assert runner.supervisor is not None
    os.kill(await runner.supervisor.ensure(), signal.SIGKILL)
    result = await waiting
    assert (result.lost, result.exit_code) == (True, UNKNOWN_EXIT_CODE)
    assert tree_alive(handle, []) == []


async def test_cancelling_wait_kills_nothing(runner: ProcessRunner, work: Path) -> None:
    """Stopping the agent cancels its waits: the task must run on and keep its real code."""
    request = RunRequest(job_id="job", task_id="task", attempt=1, argv=("sh", "-c", "read x < ../go; exit 3"),
                         env={"PATH": PATH}, cwd=work / "wd", stdout=work / "stdout.txt",
                         stderr=work / "stderr.txt", user=TaskUser(name="agent", uid=None, gid=None))
    handle = await runner.start(request)
    assert isinstance(handle, RunHandle)
    waiting = asyncio.create_task(runner.wait(handle))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert tree_alive(handle, []) == [handle.pid]
    restarted = ProcessRunner(supervisor=SupervisorClient(work / "root", idle=IDLE))
    assert await restarted.recover(handle) is True
    await release(work)
    assert await restarted.wait(handle) == ExitResult(3)
    await restarted.cleanup(handle)


async def test_destroy_kills_and_forgets(runner: ProcessRunner, work: Path) -> None:
    handle = start_in_a_killed_agent(work, "sh", "-c", "exec sleep 1000")
    assert await runner.recover(handle) is True
    await runner.destroy(handle)
    assert tree_alive(handle, []) == []
    assert runner.supervisor is not None and handle.attempt_id is not None
    running, exited = await runner.supervisor.list()
    assert handle.attempt_id not in running and handle.attempt_id not in exited


def _read_when_complete(path: Path) -> str:
    """The pid a task wrote: wait on the fact (the file complete, one line), not on a clock."""
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()).endswith("\n"):
            return text
        time.sleep(0.005)
    raise AssertionError(f"{path} never appeared")
