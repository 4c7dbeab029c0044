"""ProcessRunner against real child processes: exec, stdio, exit codes, launch failures, kill.

Nothing here sleeps to wait. A test that needs a running tree has its processes announce
their pids on a FIFO and waits for those lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from agent.cgroups import find_hierarchy, remove_empty_cgroups
from agent.errors import RunnerError
from agent.process import TOKEN_VAR, UNKNOWN_EXIT_CODE, ProcessRunner
from agent.runner import ExitResult, RunHandle, RunRequest, TaskUser
from agent.status import ErrorCategory, FailureInfo
from agent.supervisor.client import SupervisorClient

AGENT_USER = TaskUser(name="agent", uid=None, gid=None)
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
CGROUP_ROOT = Path("/sys/fs/cgroup")


class Fifo:
    """A named pipe the children write "<name> <pid>" lines to; read without blocking the loop."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.reader = asyncio.StreamReader()
        self.transport: asyncio.ReadTransport | None = None

    async def open(self) -> None:
        # O_RDWR: writers never block on open, and the reader never sees EOF between writers.
        pipe = open(os.open(self.path, os.O_RDWR | os.O_NONBLOCK), "rb", buffering=0)  # noqa: SIM115
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self.reader), pipe)

    async def lines(self, count: int) -> list[str]:
        async with asyncio.timeout(20):
            return [(await self.reader.readline()).decode().strip() for _ in range(count)]

    async def pids(self, count: int) -> dict[str, tuple[int, float]]:
        """name -> (pid, create_time) for ``count`` announcements."""
        found = {}
        for line in await self.lines(count):
            name, pid = line.split()
            found[name] = (int(pid), psutil.Process(int(pid)).create_time())
        return found

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A task dir with a working dir ``wd`` inside."""
    (tmp_path / "wd").mkdir()
    return tmp_path


@pytest.fixture
async def fifo(work: Path) -> AsyncIterator[Fifo]:
    pipe = Fifo(work / "announce")
    await pipe.open()
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def supervisor_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One node root (so one supervisor) for every supervised test of the session."""
    return tmp_path_factory.mktemp("supervised-node")


@pytest.fixture(params=["direct", "supervised"])
def runner(request: pytest.FixtureRequest, supervisor_root: Path) -> ProcessRunner:
    """Each test runs both ways: Popen in the agent, and through the node's supervisor."""
    if request.param == "direct":
        return ProcessRunner()
    return ProcessRunner(supervisor=SupervisorClient(supervisor_root, idle=5.0))


@pytest.fixture
def root_agent() -> None:
    assert os.geteuid() == 0, "cgroup tests need root: run the suite as root (it does in CI)"


def request(work: Path, *argv: str, env: dict[str, str] | None = None, job_id: str = "job") -> RunRequest:
    return RunRequest(job_id=job_id, task_id="task", attempt=1, argv=argv,
                      env={"PATH": SYSTEM_PATH, "AZ_BATCH_TASK_DIR": str(work)} if env is None else env,
                      cwd=work / "wd", stdout=work / "stdout.txt", stderr=work / "stderr.txt",
                      user=AGENT_USER)


async def run(runner: ProcessRunner, req: RunRequest) -> tuple[ExitResult, bytes, bytes]:
    handle = await runner.start(req)
    assert isinstance(handle, RunHandle), handle
    result = await runner.wait(handle)
    await runner.cleanup(handle)
    return result, req.stdout.read_bytes(), req.stderr.read_bytes()


def alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == create_time and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def executable(path: Path, text: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# -- exec -------------------------------------------------------------------------------------

async def test_no_shell_expansion(runner: ProcessRunner, work: Path) -> None:
    result, out, _ = await run(runner, request(work, "echo", "$HOME", "*", "~", "a;b", "|"))
    assert result == ExitResult(0)
    assert out == b"$HOME * ~ a;b |\n"


async def test_argv_reaches_the_program_verbatim(runner: ProcessRunner, work: Path) -> None:
    args = ("a b", "'single'", '"double"', "", "back\\slash", "new\nline", "ünï")
    _, out, _ = await run(runner, request(work, "printf", "[%s]", *args))
    assert out == "".join(f"[{a}]" for a in args).encode()


async def test_program_is_looked_up_in_the_task_path(runner: ProcessRunner, work: Path) -> None:
    tools = work / "tools"
    executable(tools / "batest-tool", "#!/bin/sh\necho found \"$0\"\n")
    assert shutil.which("batest-tool") is None, "the agent's own PATH must not have the tool"
    env = {"PATH": f"{SYSTEM_PATH}:{tools}"}
    result, out, _ = await run(runner, request(work, "batest-tool", env=env))
    assert result.exit_code == 0
    assert out == f"found {tools / 'batest-tool'}\n".encode()


async def test_relative_path_entries_resolve_against_the_working_dir(runner: ProcessRunner,
                                                                     work: Path) -> None:
    executable(work / "wd" / "bin" / "rel-tool", "#!/bin/sh\necho rel\n")
    _, out, _ = await run(runner, request(work, "rel-tool", env={"PATH": f"bin:{SYSTEM_PATH}"}))
    assert out == b"rel\n"


@pytest.mark.parametrize("argv0", ["./sub/tool.sh", "sub/tool.sh"])
async def test_relative_program_path_resolves_against_the_working_dir(
        runner: ProcessRunner, work: Path, argv0: str) -> None:
    executable(work / "wd" / "sub" / "tool.sh", "#!/bin/sh\necho \"$0\" \"$PWD\"\n")
    result, out, _ = await run(runner, request(work, argv0))
    assert result.exit_code == 0
    assert out == f"{argv0} {work / 'wd'}\n".encode()


async def test_environment_is_exactly_the_request_env(runner: ProcessRunner, work: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATEST_AGENT_ONLY", "must-not-leak")
    env = {"PATH": SYSTEM_PATH, "SPACED": "a b  c", "EMPTY": "", "EQUALS": "x=y"}
    _, out, _ = await run(runner, request(work, "/usr/bin/env", env=env))
    assert sorted(out.decode().splitlines()) == sorted(f"{k}={v}" for k, v in env.items())


async def test_stdin_is_dev_null(runner: ProcessRunner, work: Path) -> None:
    result, out, _ = await run(runner, request(work, "sh", "-c", "cat; echo eof"))
    assert (result.exit_code, out) == (0, b"eof\n")


async def test_runs_in_a_new_session(runner: ProcessRunner, work: Path) -> None:
    handle = await runner.start(request(
        work, sys.executable, "-c", "import os; print(os.getsid(0), os.getpgid(0), os.getpid())"))
    assert isinstance(handle, RunHandle)
    await runner.wait(handle)
    await runner.cleanup(handle)
    sid, pgid, pid = map(int, (work / "stdout.txt").read_text().split())
    assert sid == pgid == pid == handle.pid == handle.pgid
    assert sid != os.getsid(0)


async def test_stdout_and_stderr_go_to_files(runner: ProcessRunner, work: Path) -> None:
    (work / "stdout.txt").write_text("old content of a previous attempt " * 1000)
    code = ("import sys; sys.stdout.write('o' * 5_000_000); sys.stdout.flush(); "
            "sys.stderr.write('no newline at the end')")
    result, out, err = await run(runner, request(work, sys.executable, "-c", code))
    assert result.exit_code == 0
    assert out == b"o" * 5_000_000
    assert err == b"no newline at the end"
    assert (work / "stderr.txt").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(("script", "code"), [
    ("exit 0", 0), ("exit 3", 3), ("exit 255", 255),
    ("kill -TERM $$", -signal.SIGTERM), ("kill -KILL $$", -signal.SIGKILL),
])
async def test_exit_codes(runner: ProcessRunner, work: Path, script: str, code: int) -> None:
    result, _, _ = await run(runner, request(work, "sh", "-c", script))
    assert result == ExitResult(code)


# -- launch failures are values -------------------------------------------------------------

@pytest.mark.parametrize("argv0", ["batest-no-such-program", "./missing", "/nonexistent/program"])
async def test_program_not_found(runner: ProcessRunner, work: Path, argv0: str) -> None:
    failure = await runner.start(request(work, argv0, "arg"))
    assert isinstance(failure, FailureInfo)
    assert (failure.category, failure.code) == (ErrorCategory.USER, "CommandProgramNotFound")
    assert argv0 in failure.details[0].value


async def test_missing_interpreter_is_program_not_found(runner: ProcessRunner, work: Path) -> None:
    executable(work / "wd" / "script", "#!/nonexistent/interpreter\n")
    failure = await runner.start(request(work, "./script"))
    assert isinstance(failure, FailureInfo)
    assert failure.code == "CommandProgramNotFound"


@pytest.mark.parametrize(("name", "text", "mode", "why"), [
    ("data.txt", "not a program\n", 0o644, "Permission denied"),
    ("garbage", "\x7fELF-but-not-really", 0o755, "Exec format error"),
])
async def test_launch_failed(runner: ProcessRunner, work: Path, name: str, text: str, mode: int,
                             why: str) -> None:
    executable(work / "wd" / name, text, mode)
    failure = await runner.start(request(work, f"./{name}"))
    assert isinstance(failure, FailureInfo)
    assert (failure.category, failure.code) == (ErrorCategory.USER, "CommandLaunchFailed")
    assert why in failure.details[0].value


async def test_launch_failure_leaves_no_cgroup(root_agent: None, runner: ProcessRunner,
                                               work: Path) -> None:
    assert runner.hierarchy is not None
    job_id = f"nolaunch{os.getpid()}"
    executable(work / "wd" / "data.txt", "x", 0o644)
    assert isinstance(await runner.start(request(work, "./data.txt", job_id=job_id)), FailureInfo)
    assert list((runner.hierarchy / "batch-agent").glob(f"{job_id}_*")) == []


async def test_unwritable_log_is_the_agents_fault(root_agent: None, runner: ProcessRunner,
                                                  work: Path) -> None:
    job_id = f"nolog{os.getpid()}"
    req = replace(request(work, "true", job_id=job_id), stdout=work / "missing-dir" / "stdout.txt")
    with pytest.raises(RunnerError, match="missing-dir"):
        await runner.start(req)
    assert runner.hierarchy is not None
    assert list((runner.hierarchy / "batch-agent").glob(f"{job_id}_*")) == []


# -- re-attach ------------------------------------------------------------------------------

async def test_wait_on_a_process_of_another_agent_instance(runner: ProcessRunner, work: Path,
                                                           fifo: Fifo) -> None:
    go = work / "go"
    os.mkfifo(go)
    handle = await runner.start(request(
        work, "sh", "-c", 'echo main $$ > "$1"; read line < "$2"; exit 5', "sh", str(fifo.path), str(go)))
    assert isinstance(handle, RunHandle)
    await fifo.lines(1)
    restarted = ProcessRunner()
    waiter = asyncio.create_task(restarted.wait(RunHandle.from_json(handle.to_json())))
    await asyncio.to_thread(go.write_text, "go\n")
    assert await waiter == ExitResult(UNKNOWN_EXIT_CODE)
    assert await runner.wait(handle) == ExitResult(5)
    await runner.cleanup(handle)


async def test_wait_on_a_recycled_pid_returns_at_once(runner: ProcessRunner) -> None:
    stale = RunHandle(kind="process", pid=os.getpid(), pgid=None, create_time=1.0)
    assert await runner.wait(stale) == ExitResult(UNKNOWN_EXIT_CODE)


# -- kill -----------------------------------------------------------------------------------

# The main process ignores SIGTERM and has a setsid'd child (another session, still its
# child) and a double-forked, setsid'd daemon (reparented, another session).
TREE = """
trap '' TERM
setsid sh -c 'echo grandchild $$ > "$1"; exec sleep 1000' sh "$1" &
(setsid sh -c 'echo daemon $$ > "$1"; exec sleep 1000' sh "$1" &)
echo main $$ > "$1"
wait
"""


def tracking_modes() -> list[str]:
    return ["cgroup-v1-freezer", "cgroup-v1-pids", "cgroup-v2", "marker-only"]


@pytest.fixture
def tracked_runner(request: pytest.FixtureRequest, tmp_path: Path) -> ProcessRunner:
    mode: str = request.param
    if mode == "marker-only":
        return ProcessRunner(use_cgroups=False)
    assert os.geteuid() == 0, "cgroup tests need root: run the suite as root (it does in CI)"
    if mode == "cgroup-v1-pids":
        root = tmp_path / "cgroup-root"          # a root with the pids controller only
        root.mkdir()
        (root / "pids").symlink_to(CGROUP_ROOT / "pids")
    elif mode == "cgroup-v2":
        root = CGROUP_ROOT / "unified"           # the hybrid layout's v2 hierarchy
    else:
        root = CGROUP_ROOT
    found = find_hierarchy(root)
    assert found is not None and found.name in {"freezer", "pids", "unified"}, \
        f"{mode}: no cgroup hierarchy under {root} (this machine and CI mount cgroup v1 + unified)"
    return ProcessRunner(cgroup_root=root, sweep_by_marker=False)   # the cgroup alone must do it


@pytest.mark.parametrize("tracked_runner", tracking_modes(), indirect=True)
async def test_kill_takes_down_the_whole_tree(tracked_runner: ProcessRunner, work: Path,
                                              fifo: Fifo) -> None:
    handle = await tracked_runner.start(request(work, "sh", "-c", TREE, "sh", str(fifo.path)))
    assert isinstance(handle, RunHandle)
    assert (handle.cgroup is None) == (tracked_runner.hierarchy is None)
    procs = await fifo.pids(3)
    assert set(procs) == {"main", "grandchild", "daemon"}
    assert procs["main"][0] == handle.pid
    assert psutil.Process(procs["daemon"][0]).ppid() != handle.pid

    await tracked_runner.kill(handle, grace=0.05)
    assert await tracked_runner.wait(handle) == ExitResult(-signal.SIGKILL, killed_by_agent=True)
    assert [name for name, (pid, created) in procs.items() if alive(pid, created)] == []

    await tracked_runner.cleanup(handle)
    if handle.cgroup:
        assert not Path(handle.cgroup).exists()


async def test_without_cgroup_or_marker_escapees_survive(work: Path, fifo: Fifo) -> None:
    """The control for the test above: the sweep is what catches the escaped processes."""
    bare = ProcessRunner(use_cgroups=False, sweep_by_marker=False)
    handle = await bare.start(request(work, "sh", "-c", TREE, "sh", str(fifo.path)))
    assert isinstance(handle, RunHandle)
    procs = await fifo.pids(3)
    try:
        await bare.kill(handle, grace=0.05)
        assert await bare.wait(handle) == ExitResult(-signal.SIGKILL, killed_by_agent=True)
        assert {name for name, (pid, created) in procs.items() if alive(pid, created)} == \
            {"grandchild", "daemon"}
    finally:
        for pid, _ in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await bare.cleanup(handle)


async def test_kill_waits_for_a_graceful_exit(runner: ProcessRunner, work: Path, fifo: Fifo) -> None:
    script = ('trap "echo bye; exit 0" TERM; sh -c \'echo sleeper $$ > "$1"; exec sleep 1000\' sh "$1" & '
              'echo main $$ > "$1"; wait')
    handle = await runner.start(request(work, "sh", "-c", script, "sh", str(fifo.path)))
    assert isinstance(handle, RunHandle)
    procs = await fifo.pids(2)
    async with asyncio.timeout(10):             # far below the grace: kill returns on the fact
        await runner.kill(handle, grace=300)
    assert await runner.wait(handle) == ExitResult(0, killed_by_agent=True)
    await runner.cleanup(handle)
    assert (work / "stdout.txt").read_text() == "bye\n"
    assert not alive(*procs["sleeper"])


async def test_kill_of_a_plain_process_is_sigterm(runner: ProcessRunner, work: Path,
                                                  fifo: Fifo) -> None:
    handle = await runner.start(request(work, "sh", "-c", 'echo main $$ > "$1"; exec sleep 1000',
                                        "sh", str(fifo.path)))
    assert isinstance(handle, RunHandle)
    await fifo.lines(1)
    await runner.kill(handle, grace=300)
    assert await runner.wait(handle) == ExitResult(-signal.SIGTERM, killed_by_agent=True)
    await runner.cleanup(handle)


async def test_child_is_in_its_cgroup_from_the_start(root_agent: None, runner: ProcessRunner,
                                                     work: Path) -> None:
    result, out, _ = await run(runner, request(work, "cat", "/proc/self/cgroup"))
    assert result.exit_code == 0
    assert runner.hierarchy is not None
    controller = runner.hierarchy.name
    line = next(x for x in out.decode().splitlines() if controller in x.split(":")[1].split(","))
    assert line.split(":")[2].startswith("/batch-agent/job_task_1_")


async def test_cleanup_keeps_a_busy_cgroup_and_never_kills(root_agent: None, runner: ProcessRunner,
                                                           work: Path, fifo: Fifo) -> None:
    """A finished task's background process (a start task's daemon) outlives the task."""
    script = '(setsid sh -c \'echo daemon $$ > "$1"; exec sleep 1000\' sh "$1" &); exit 0'
    handle = await runner.start(request(work, "sh", "-c", script, "sh", str(fifo.path)))
    assert isinstance(handle, RunHandle) and handle.cgroup
    procs = await fifo.pids(1)
    assert await runner.wait(handle) == ExitResult(0)
    await runner.cleanup(handle)
    assert alive(*procs["daemon"])
    assert Path(handle.cgroup).is_dir()

    await runner.kill(handle, grace=0.05)
    assert not alive(*procs["daemon"])
    await runner.cleanup(handle)
    assert not Path(handle.cgroup).exists()


async def test_a_cgroup_left_by_a_daemon_goes_once_the_daemon_exits(root_agent: None, runner: ProcessRunner,
                                                                     work: Path, fifo: Fifo) -> None:
    """The leak: a task's daemon outlives it, its cgroup is kept, and nothing removed it later."""
    script = '(setsid sh -c \'echo daemon $$ > "$1"; exec sleep 1000\' sh "$1" &); exit 0'
    handle = await runner.start(request(work, "sh", "-c", script, "sh", str(fifo.path), job_id="leftover"))
    assert isinstance(handle, RunHandle) and handle.cgroup
    procs = await fifo.pids(1)
    await runner.wait(handle)
    await runner.cleanup(handle)
    assert Path(handle.cgroup).is_dir()                      # the daemon still runs in it
    ProcessRunner()
    assert Path(handle.cgroup).is_dir()                      # never removed while it has a process

    os.kill(procs["daemon"][0], signal.SIGKILL)
    while alive(*procs["daemon"]):
        await asyncio.sleep(0.01)
    ProcessRunner()                                          # the next agent's start-up
    assert not Path(handle.cgroup).exists()


async def test_the_cleanup_of_a_later_task_removes_empty_leftovers(root_agent: None, runner: ProcessRunner,
                                                                  work: Path) -> None:
    assert runner.hierarchy is not None
    leftover = runner.hierarchy / "batch-agent" / f"old_task_0_{os.getpid():08x}"
    leftover.mkdir(parents=True)
    result, _, _ = await run(runner, request(work, "true"))
    assert result.exit_code == 0
    assert not leftover.exists()


async def test_a_cgroup_being_created_is_never_swept(root_agent: None, runner: ProcessRunner) -> None:
    """Between its creation and its first process a cgroup is empty; its runner holds a lock."""
    assert runner.hierarchy is not None
    creating = runner.hierarchy / "batch-agent" / f"new_task_0_{os.getpid():08x}"
    creating.mkdir(parents=True)
    lock = os.open(creating, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_empty_cgroups(runner.hierarchy)
        assert creating.is_dir()
    finally:
        os.close(lock)
    remove_empty_cgroups(runner.hierarchy)
    assert not creating.exists()


async def test_without_cgroup_the_marker_is_a_token_the_task_cannot_choose(work: Path, fifo: Fifo) -> None:
    tokenised = ProcessRunner(use_cgroups=False)
    env = {"PATH": SYSTEM_PATH, TOKEN_VAR: "chosen-by-the-task"}
    handle = await tokenised.start(request(
        work, "sh", "-c", 'echo main $$ > "$1"; exec sleep 1000', "sh", str(fifo.path), env=env))
    assert isinstance(handle, RunHandle) and handle.cgroup is None
    pid, _ = (await fifo.pids(1))["main"]
    token = psutil.Process(pid).environ()[TOKEN_VAR]
    assert token != "chosen-by-the-task" and len(token) == 32
    assert handle.marker == f"{os.getuid()}:{hashlib.sha256(token.encode()).hexdigest()}"
    assert token not in str(handle.to_json())                # handles are persisted: no secret in them

    # Outside the task: a process with the task's old marker variable, and one of another user
    # that holds the real token. Neither is the task's: the sweep leaves both alone.
    decoys = [subprocess.Popen(["sleep", "1000"], env={"AZ_BATCH_TASK_DIR": str(work)}, start_new_session=True)]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody").pw_uid
        decoys.append(subprocess.Popen(["sleep", "1000"], env={TOKEN_VAR: token}, start_new_session=True,
                                       user=nobody))
    try:
        await tokenised.kill(handle, grace=0.05)
        assert await tokenised.wait(handle) == ExitResult(-signal.SIGTERM, killed_by_agent=True)
        assert [d.poll() for d in decoys] == [None] * len(decoys)
    finally:
        for decoy in decoys:
            decoy.kill()
            decoy.wait()
        await tokenised.cleanup(handle)


async def test_the_working_dir_is_entered_as_the_task_user(root_agent: None, runner: ProcessRunner,
                                                           work: Path) -> None:
    """A directory the task user may not enter is refused to it, even though root could enter it."""
    nobody = pwd.getpwnam("nobody")
    user = TaskUser(name="nobody", uid=nobody.pw_uid, gid=nobody.pw_gid)
    (work / "wd").chmod(0o700)                                  # root's, not the task user's
    work.chmod(0o755)
    failure = await runner.start(replace(request(work, "/bin/true"), user=user))
    assert isinstance(failure, FailureInfo), failure
    assert failure.code == "CommandLaunchFailed"
    assert "the task user cannot enter it" in failure.details[0].value


async def test_a_link_as_working_dir_is_refused(runner: ProcessRunner, work: Path) -> None:
    (work / "wd").rmdir()
    (work / "wd").symlink_to("/")
    failure = await runner.start(request(work, "/bin/true"))
    assert isinstance(failure, FailureInfo) and failure.code == "CommandLaunchFailed"
    assert "symbolic link" in failure.details[0].value
