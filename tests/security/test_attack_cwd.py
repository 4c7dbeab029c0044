"""Attack: a process left behind by an earlier attempt swaps the task's ``wd`` for a link between
prestart and exec, so that the command starts in a directory of the attacker's choosing.

The old runner let ``subprocess`` chdir into ``cwd`` as root, before the switch to the task user:
root followed the link into a directory the task user may not even enter (here a root-only 0700
vault), and the command ran there. Now the agent opens ``wd`` without following links and the
child ``fchdir``s to it as the task user, in both spawn paths (direct ``Popen`` and the supervisor).

The swapper runs as the task user (``nobody``) with the task dir it owns, exchanging ``wd`` and a
link to the vault with ``renameat2(RENAME_EXCHANGE)`` in a tight loop, so at any instant ``wd`` is
one or the other. Each start either runs in the real ``wd`` or fails to launch (a link in its
path); it never runs in the vault. On the old code about half the starts ran in the vault.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.process import ProcessRunner
from agent.runner import RunHandle, RunRequest, TaskUser
from agent.status import FailureInfo
from agent.supervisor.client import SupervisorClient

pytestmark = pytest.mark.timeout(120)

STARTS = 60

SWAPPER = """
import ctypes, os, sys
d, victim = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
os.symlink(victim, "lnk", dir_fd=d)
os.write(1, b"r")
while True:
    libc.renameat2(d, b"wd", d, b"lnk", 2)
"""


@pytest.fixture
def nobody() -> TaskUser:
    entry = pwd.getpwnam("nobody")
    return TaskUser(name="nobody", uid=entry.pw_uid, gid=entry.pw_gid)


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    path = tmp_path / "vault"
    path.mkdir(mode=0o700)
    (path / "secret.txt").write_text("root only\n")
    return path


@pytest.fixture
def task_dir(tmp_path: Path, nobody: TaskUser) -> Path:
    """A task dir and its ``wd`` owned by the task user, as the agent's prestart leaves them."""
    task = tmp_path / "task"
    (task / "wd").mkdir(parents=True)
    for path in (task, task / "wd"):
        os.chown(path, nobody.uid or 0, nobody.gid or 0)
        path.chmod(0o755)
    return task


@pytest.fixture
def swapper(task_dir: Path, vault: Path, nobody: TaskUser) -> Iterator[None]:
    fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = subprocess.Popen(["/usr/bin/python3", "-I", "-S", "-c", SWAPPER, str(fd), str(vault)],
                                pass_fds=(fd,), user=nobody.uid, group=nobody.gid, extra_groups=[],
                                stdout=subprocess.PIPE, cwd="/")
    finally:
        os.close(fd)
    try:
        assert proc.stdout is not None and proc.stdout.read(1) == b"r"   # the loop is running
        yield
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture(params=["direct", "supervised"])
def runner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessRunner]:
    if request.param == "direct":
        yield ProcessRunner()
        return
    client = SupervisorClient(tmp_path / "node", idle=2.0)
    yield ProcessRunner(supervisor=client)
    client.close()


async def test_a_swapped_wd_never_lets_the_command_start_in_another_directory(
        runner: ProcessRunner, task_dir: Path, vault: Path, nobody: TaskUser, swapper: None) -> None:
    assert os.geteuid() == 0, "the attack needs root and a real task user"
    request = RunRequest(job_id="job", task_id="cwd", attempt=1, argv=("/bin/readlink", "/proc/self/cwd"),
                         env={"PATH": "/usr/bin:/bin"}, cwd=task_dir / "wd", stdout=task_dir / "stdout.txt",
                         stderr=task_dir / "stderr.txt", user=nobody)
    places: dict[str, int] = {}
    for _ in range(STARTS):
        handle = await runner.start(request)
        if isinstance(handle, FailureInfo):          # wd was the link when the agent opened it
            places["refused"] = places.get("refused", 0) + 1
            continue
        assert isinstance(handle, RunHandle)
        result = await runner.wait(handle)
        await runner.cleanup(handle)
        assert result.exit_code == 0, (task_dir / "stderr.txt").read_text()
        where = (task_dir / "stdout.txt").read_text().strip()
        places[where] = places.get(where, 0) + 1
    assert str(vault) not in places, places
    ran = {p for p in places if p != "refused"}
    assert ran and ran <= {str(task_dir / "wd"), str(task_dir / "lnk")}, places   # the real wd, whatever its name
