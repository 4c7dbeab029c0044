"""The task supervisor with real processes: exit codes kept across an agent's SIGKILL, lost
attempts when the supervisor itself dies, one supervisor per node root, peers of another uid
refused, idle exit, stdio by descriptor, sessions, user switch and cgroup join.

Nothing here sleeps to wait: tasks block on FIFOs the test releases, client processes print a
line per step, and a process's end is awaited through psutil / pidfd.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from agent.process import find_hierarchy
from agent.supervisor.client import (
    Exited,
    LaunchFailed,
    Lost,
    Running,
    Spawned,
    SpawnRequest,
    SupervisorClient,
    SupervisorError,
)
from agent.supervisor.protocol import SOCKET_NAME, private_dir, socket_path

REPO = Path(__file__).resolve().parents[1]
SH = "/bin/sh"
NOBODY = 65534
pytestmark = pytest.mark.timeout(60)

# A client in its own process (the agent, as far as the supervisor can tell). Commands, one per
# argument: spawn:ID:GATE (a task that exits 42 once a line comes through the FIFO GATE),
# wait:ID, ensure. Each step prints one line.
AGENT = """
import asyncio, os, sys
from pathlib import Path
from agent.supervisor.client import SpawnRequest, SupervisorClient

async def main(root, steps):
    client = SupervisorClient(Path(root), idle=30)
    for step in steps:
        op, *args = step.split(":")
        if op == "ensure":
            print("supervisor", await client.ensure(), flush=True)
        elif op == "spawn":
            out = os.open(Path(root) / (args[0] + ".out"), os.O_WRONLY | os.O_CREAT, 0o600)
            task = 'echo started; read line < "$1"; exit 42'
            spawned = await client.spawn(SpawnRequest(args[0], [\"sh\", \"-c\", task, \"sh\", args[1]],
                                                      \"/bin/sh\", Path(root), {}, out, out))
            os.close(out)
            print("spawned", spawned.pid, flush=True)
        elif op == "wait":
            print("result", await client.wait(args[0]), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


@pytest.fixture
def root(node_root: Path) -> Iterator[Path]:
    yield node_root
    # Never leave a supervisor (or a task of one) behind: they are ours, found by their dir.
    for proc in _supervisors(node_root):
        for child in proc.children(recursive=True):
            child.kill()
        proc.kill()


@pytest.fixture
def agents() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
async def client(root: Path) -> AsyncIterator[SupervisorClient]:
    client = SupervisorClient(root, idle=30)
    yield client
    client.close()


def _supervisors(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "--dir" in cmd and cmd[cmd.index("--dir") + 1] == str(private_dir(root)):
            found.append(proc)
    return found


def _out(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def _request(root: Path, attempt: str, argv: list[str], out: int, **kw: object) -> SpawnRequest:
    kw.setdefault("executable", shutil.which(argv[0]))
    return SpawnRequest(attempt=attempt, argv=argv, cwd=root, env={"PATH": "/usr/bin:/bin"},
                        stdout=out, stderr=out, **kw)  # type: ignore[arg-type]


def _agent(agents: list[subprocess.Popen[str]], root: Path, *steps: str) -> subprocess.Popen[str]:
    agents.append(subprocess.Popen([sys.executable, "-c", AGENT, str(root), *steps],
                                   stdout=subprocess.PIPE, text=True, cwd=REPO))
    return agents[-1]


async def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return (await asyncio.to_thread(proc.stdout.readline)).strip()


async def _gone(pid: int) -> None:
    """Return once ``pid`` (not necessarily our child) has exited: a readable pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_exit_code_and_output_by_descriptor(root: Path, client: SupervisorClient) -> None:
    out, err = _out(root / "stdout.txt"), _out(root / "stderr.txt")
    try:
        request = SpawnRequest("job_task_1_ab", ["sh", "-c", "echo ready; echo oops >&2; exit 7"], SH,
                               root, {}, out, err)
        spawned = await client.spawn(request)
    finally:
        os.close(out)
        os.close(err)
    assert isinstance(spawned, Spawned)
    assert await client.wait("job_task_1_ab") == Exited(7)
    assert (root / "stdout.txt").read_text() == "ready\n"
    assert (root / "stderr.txt").read_text() == "oops\n"
    assert await client.status("job_task_1_ab") == Exited(7)
    assert await client.list() == ({}, {"job_task_1_ab": 7})
    await client.forget("job_task_1_ab")
    assert await client.status("job_task_1_ab") == Lost()


async def test_killed_by_a_signal_reads_minus_the_signal(root: Path, client: SupervisorClient) -> None:
    out = _out(root / "out")
    spawned = await client.spawn(_request(root, "a-kill", ["sleep", "1000"], out))
    os.close(out)
    assert isinstance(spawned, Spawned)
    assert await client.status("a-kill") == Running(spawned.pid)
    os.kill(spawned.pid, signal.SIGKILL)
    assert await client.wait("a-kill") == Exited(-9)


async def test_launch_failure_is_a_value(root: Path, client: SupervisorClient) -> None:
    out = _out(root / "out")
    try:
        missing = await client.spawn(_request(root, "a1", ["nope"], out, executable=None))
        bad_cwd = await client.spawn(SpawnRequest("a2", ["true"], "/bin/true", root / "absent", {}, out, out))
    finally:
        os.close(out)
    assert isinstance(missing, LaunchFailed) and missing.errno == 2
    assert isinstance(bad_cwd, LaunchFailed) and bad_cwd.filename == str(root / "absent")
    assert await client.status("a1") == Lost()          # nothing was started, nothing recorded


async def test_agent_killed_then_reattached_keeps_the_real_exit_code(
        root: Path, agents: list[subprocess.Popen[str]]) -> None:
    gate = root / "gate"
    os.mkfifo(gate)
    first = _agent(agents, root, "spawn:job_task_1_x:" + str(gate), "wait:job_task_1_x")
    pid = int((await _line(first)).split()[1])
    first.kill()                                         # the agent dies mid-wait
    first.wait()
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    second = _agent(agents, root, "wait:job_task_1_x")          # a new agent re-attaches by attempt id
    with open(gate, "w") as fifo:                        # the task holds the read end: no blocking
        fifo.write("go\n")
    assert await _line(second) == "result Exited(code=42)"
    assert second.wait() == 0
    assert (root / "job_task_1_x.out").read_text() == "started\n"


async def test_supervisor_killed_reports_lost_never_success(root: Path, client: SupervisorClient) -> None:
    out = _out(root / "out")
    spawned = await client.spawn(_request(root, "a-lost", ["sleep", "1000"], out))
    os.close(out)
    assert isinstance(spawned, Spawned)
    old = await client.ensure()
    waiting = asyncio.create_task(client.wait("a-lost"))
    os.kill(old, signal.SIGKILL)
    try:
        assert await waiting == Lost()
        assert await client.ensure() != old              # a new supervisor answers
        assert await client.status("a-lost") == Lost()
    finally:
        os.kill(spawned.pid, signal.SIGKILL)             # the orphan: the integrator sweeps it by cgroup


async def test_exit_records_outlive_the_supervisor(root: Path, client: SupervisorClient) -> None:
    out = _out(root / "out")
    await client.spawn(_request(root, "a-rec", ["sh", "-c", "exit 3"], out))
    os.close(out)
    assert await client.wait("a-rec") == Exited(3)
    old = await client.ensure()
    os.kill(old, signal.SIGKILL)
    await _gone(old)
    assert await client.status("a-rec") == Exited(3)
    with pytest.raises(SupervisorError, match="exists"):
        out = _out(root / "out")
        try:
            await client.spawn(_request(root, "a-rec", ["true"], out))
        finally:
            os.close(out)


async def test_racing_clients_start_exactly_one_supervisor(
        root: Path, agents: list[subprocess.Popen[str]]) -> None:
    for _ in range(4):
        _agent(agents, root, "ensure")
    pids = {await _line(agent) for agent in agents}
    for agent in agents:
        assert agent.wait() == 0
    assert len(pids) == 1
    assert [p.pid for p in _supervisors(root)] == [int(pids.pop().split()[1])]


@pytest.mark.root
async def test_peer_of_another_uid_is_refused(root: Path, client: SupervisorClient) -> None:
    await client.ensure()
    sock = private_dir(root) / SOCKET_NAME
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\n"
             "except PermissionError:\n    print('denied'); raise SystemExit\n"
             "print('greeting' if s.recv(100) else 'closed')\n")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "/usr/bin/python3", "-I", "-S", "-c", probe]
    # The directory (0700) and the socket (0600) keep it out...
    assert subprocess.run([*as_nobody, str(sock)], capture_output=True, text=True).stdout == "denied\n"
    # ...and were they wrong (a hard link in the open, mode 0666), the peer check still is.
    exposed = root / "exposed"
    exposed.mkdir(mode=0o755)
    os.link(sock, exposed / "sock")
    os.chmod(exposed / "sock", 0o666)
    assert subprocess.run([*as_nobody, str(exposed / "sock")], capture_output=True, text=True).stdout == "closed\n"
    assert '"event": "peer refused"' in (private_dir(root) / "supervisor.log").read_text()
    assert '"uid": 65534' in (private_dir(root) / "supervisor.log").read_text()


async def test_supervisor_exits_when_idle(root: Path) -> None:
    client = SupervisorClient(root, idle=0.2)
    try:
        out = _out(root / "out")
        await client.spawn(_request(root, "a-idle", ["sh", "-c", "exit 0"], out))
        os.close(out)
        pid = await client.ensure()
        assert await client.wait("a-idle") == Exited(0)
        await _gone(pid)
        assert not _supervisors(root)
        assert not (private_dir(root) / SOCKET_NAME).exists()
        assert await client.status("a-idle") == Exited(0)  # a new one reads the record
    finally:
        client.close()


@pytest.mark.parametrize("how", ["request", "sigterm"])
async def test_shutdown_waits_for_running_children(root: Path, client: SupervisorClient, how: str) -> None:
    gate = root / "gate"
    os.mkfifo(gate)
    out = _out(root / "out")
    try:
        await client.spawn(_request(root, "a-drain", ["sh", "-c", 'read l < "$0"', str(gate)], out))
        pid = await client.ensure()
        if how == "request":
            await client.shutdown()
        else:
            os.kill(pid, signal.SIGTERM)
        with pytest.raises(SupervisorError, match="draining"):       # stopping never kills work...
            await client.spawn(_request(root, "a-late", ["true"], out))
    finally:
        os.close(out)
    assert psutil.Process(pid).is_running()
    waiting = asyncio.create_task(client.wait("a-drain"))
    with open(gate, "w") as fifo:                       # the task holds the read end: no blocking
        fifo.write("go\n")
    assert await waiting == Exited(0)                   # ...and the status is still collected
    await _gone(pid)


@pytest.mark.root
async def test_task_runs_in_its_own_session_as_its_user(root: Path, client: SupervisorClient) -> None:
    out = _out(root / "out")
    os.fchown(out, NOBODY, NOBODY)
    spawned = await client.spawn(_request(root, "a-user", ["sleep", "1000"], out, uid=NOBODY, gid=NOBODY,
                                          groups=[]))
    os.close(out)
    assert isinstance(spawned, Spawned)
    try:
        status = Path(f"/proc/{spawned.pid}/status").read_text()
        assert f"Uid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}" in status
        assert f"Gid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}" in status
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert groups.split(":", 1)[1].split() == []
        assert os.getsid(spawned.pid) == spawned.pid
        umask = os.umask(0)
        os.umask(umask)
        assert f"Umask:\t{umask:04o}\n" in status                     # the agent's, not the supervisor's
        assert os.readlink(f"/proc/{spawned.pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{spawned.pid}/fd/1") == str(root / "out")     # by descriptor
        # Nothing leaked. `sleep` opens and closes locale files as it starts, so a leak is an fd that
        # stays: wait (on the fact, with a deadline) for the listing to settle at 0, 1, 2.
        deadline = time.monotonic() + 10
        while (fds := sorted(os.listdir(f"/proc/{spawned.pid}/fd"))) != ["0", "1", "2"] \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert fds == ["0", "1", "2"]
    finally:
        os.kill(spawned.pid, signal.SIGKILL)
    assert await client.wait("a-user") == Exited(-9)


@pytest.mark.root
async def test_task_joins_its_cgroup_before_exec(root: Path, client: SupervisorClient) -> None:
    hierarchy = find_hierarchy(Path("/sys/fs/cgroup"))
    if hierarchy is None:
        pytest.skip("no cgroup hierarchy to join")
    cgroup = hierarchy / f"batch-agent-test-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    try:
        procs = os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        out = _out(root / "out")
        try:
            spawned = await client.spawn(_request(root, "a-cg", ["sh", "-c", "cat /proc/self/cgroup"], out,
                                                  cgroup_procs=procs))
        finally:
            os.close(procs)
            os.close(out)
        assert isinstance(spawned, Spawned)
        assert await client.wait("a-cg") == Exited(0)
        assert f":/{cgroup.name}\n" in (root / "out").read_text()
    finally:
        cgroup.rmdir()


async def test_bad_inputs_are_refused(root: Path, client: SupervisorClient) -> None:
    out = _out(root / "out")
    try:
        with pytest.raises(ValueError, match="attempt id"):
            await client.spawn(_request(root, "../escape", ["true"], out))
        spawned = await client.spawn(_request(root, "a-run", ["sleep", "1000"], out))
    finally:
        os.close(out)
    assert isinstance(spawned, Spawned)
    with pytest.raises(SupervisorError, match="running"):
        await client.forget("a-run")
    os.kill(spawned.pid, signal.SIGKILL)
    assert await client.wait("a-run") == Exited(-9)


def test_bad_requests_do_not_end_the_supervisor(root: Path) -> None:
    client = SupervisorClient(root, idle=30)
    try:
        pid = asyncio.run(client.ensure())
        dir_fd = os.open(private_dir(root), os.O_RDONLY | os.O_DIRECTORY)
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(20)
            raw.connect(socket_path(dir_fd))                         # sun_path is 108 bytes at most
            os.close(dir_fd)
            replies = raw.makefile("rb")
            assert json.loads(replies.readline())["pid"] == pid
            for bad in (b"garbage", b"[1]", b'{"op":"spawn","id":"x","argv":["true"],"env":[],"cwd":"/"}',
                        b'{"op":"status","id":".hidden"}', b'{"op":"nope","id":"x"}'):
                raw.sendall(bad + b"\n")
                reply = json.loads(replies.readline())
                assert reply["ok"] is False and reply["error"] == "protocol", (bad, reply)
            replies.close()
        assert asyncio.run(client.ensure()) == pid                   # the same supervisor answers
    finally:
        client.close()


def test_private_dir_of_another_owner_is_refused(root: Path) -> None:
    private = private_dir(root)
    private.mkdir(parents=True, mode=0o755)
    client = SupervisorClient(root)
    with pytest.raises(SupervisorError, match="mode 0700"):
        asyncio.run(client.ensure())
