"""Attacks: make the root agent follow a link a task (or another local user) planted.

Each test runs ``python -m agent run`` as root; the hostile task runs as a real non-admin task
user (``_azbatch``). The victims are root-owned files and directories outside the node root;
afterwards they must be exactly as they were (owner, mode, contents).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

Agent = Any                     # tests/security/conftest.py's Agent (conftest modules are not imported)


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path

pytestmark = pytest.mark.timeout(120)


def snapshot(path: Path) -> tuple[int, int, int, dict[str, bytes]]:
    """Owner, group, mode and the files' contents of a victim (a file or a directory)."""
    st = path.lstat()
    files = {p.name: p.read_bytes() for p in path.iterdir()} if path.is_dir() else {"": path.read_bytes()}
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), files


@pytest.fixture
def victim_file(tmp_path: Path) -> Path:
    path = tmp_path / "root-only.txt"
    path.write_text("root's secret, not to be truncated\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def victim_dir(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.mkdir()
    (path / "keep.txt").write_text("must survive\n")
    path.chmod(0o755)
    return path


def sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


def test_task_cannot_redirect_its_own_logs_on_retry(agent: Agent, victim_file: Path) -> None:
    before = snapshot(victim_file)
    plant = (f'echo attempt; [ -e "$AZ_BATCH_TASK_DIR/planted" ] && exit 1; touch "$AZ_BATCH_TASK_DIR/planted"; '
             f'ln -sf {victim_file} "$AZ_BATCH_TASK_DIR/stdout.txt"; '
             f'ln -sf {victim_file} "$AZ_BATCH_TASK_DIR/stderr.txt"; exit 1')
    _, data, out = agent.run({"id": "logs", "commandLine": sh(plant),
                               "constraints": {"maxTaskRetryCount": 1}})
    assert data["task"]["executionInfo"]["retryCount"] == 1, out          # the retry opened the logs again
    assert snapshot(victim_file) == before
    stdout = agent.task_dir("logs") / "stdout.txt"
    assert not stdout.is_symlink() and stdout.read_text() == "attempt\n"
    assert stdout.stat().st_uid == pwd.getpwnam("_azbatch").pw_uid


def test_task_cannot_plant_links_for_the_job_release_task(agent: Agent, victim_file: Path,
                                                          tmp_path: Path) -> None:
    job = write(tmp_path / "job.json", {"id": "reljob", "poolInfo": {"poolId": "p"},
                                         "jobPreparationTask": {"commandLine": "/bin/true"},
                                         "jobReleaseTask": {"commandLine": sh("echo released; echo err >&2")}})
    rc, _, out = agent.run({"id": "first", "commandLine": "/bin/true"}, "--job", str(job))
    assert rc == 0, out
    release = agent.task_dir("jobrelease", "reljob")
    assert (release / "stdout.txt").read_text() == "released\n"
    before = snapshot(victim_file)
    plant = (f"ln -sf {victim_file} {release}/stdout.txt && ln -sf {victim_file} {release}/stderr.txt "
             f"&& test -L {release}/stdout.txt")
    rc, data, out = agent.run({"id": "planter", "commandLine": sh(plant)}, "--job", str(job))
    assert rc == 0, out                                            # the links were planted (same account)
    assert data["jobReleaseTaskExecutionInfo"]["exitCode"] == 0, out
    assert snapshot(victim_file) == before
    assert not (release / "stdout.txt").is_symlink()
    assert (release / "stdout.txt").read_text() == "released\n"


# The loop a left-behind process of an earlier attempt runs: it swaps the name ``wd`` between the
# real directory and a link to the victim with renameat2(RENAME_EXCHANGE), so at any instant
# ``wd`` is one or the other. It reports ready through a pipe and stops when the stop file appears.
SWAPPER = """
import ctypes, os, sys
task, victim, stop = os.environ["AZ_BATCH_TASK_DIR"], sys.argv[1], sys.argv[2]
pidfile = os.path.join(os.path.dirname(stop), "swapper.pid")
if os.path.exists(pidfile):
    sys.exit(1)
r, w = os.pipe()
if os.fork():
    os.close(w)
    os.read(r, 1)
    sys.exit(1)
os.setsid()
if os.fork():
    os._exit(0)
for fd in (0, 1, 2):
    os.dup2(os.open(os.devnull, os.O_RDWR), fd)
libc = ctypes.CDLL(None, use_errno=True)
d = os.open(task, os.O_RDONLY | os.O_DIRECTORY)
os.symlink(victim, "lnk", dir_fd=d)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pidfile + ".tmp", pidfile)
os.write(w, b"r")
spare = 0
for i in range(50_000_000):
    libc.renameat2(d, b"wd", d, b"lnk", 2)
    if i % 16 == 0:
        # The agent deleted the link (or the dir): put back a link under one of the names.
        names = {n: os.path.islink(os.path.join(task, n)) for n in ("wd", "lnk")}
        if not any(names.values()):
            spare += 1
            try:
                os.rename("lnk", f"old{spare}", src_dir_fd=d, dst_dir_fd=d)
            except OSError:
                pass
        for n in ("wd", "lnk"):
            try:
                os.symlink(victim, n, dir_fd=d)
            except OSError:
                pass
    if i % 4096 == 0 and os.path.exists(stop):
        break
"""


@pytest.fixture
def stopper(agent: Agent) -> Iterator[Path]:
    """The swapper's stop file (in ``shared/``); the swapper is stopped, and killed if need be."""
    stop = agent.root / "shared" / "stop-swapper"
    yield stop
    stop.parent.mkdir(parents=True, exist_ok=True)
    stop.touch()
    pidfile = stop.parent / "swapper.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_left_behind_process_cannot_swap_wd_for_a_link_during_prestart(
        agent: Agent, victim_dir: Path, stopper: Path) -> None:
    """The swapper keeps running across attempts and across runs of the same task; each run's
    attempts race it in prestart (the old code lost within a run or two: the victim was emptied,
    chowned to the task user and chmodded 0750)."""
    before = snapshot(victim_dir)
    script = agent.root.parent / f"{agent.root.name}-swapper.py"     # readable by the task user
    script.write_text(SWAPPER)
    script.chmod(0o644)
    task = {"id": "swap", "commandLine": f"/usr/bin/python3 {script} {victim_dir} {stopper}",
            "constraints": {"maxTaskRetryCount": 10}}
    prestarts = 0
    try:
        for _ in range(5):
            _, data, out = agent.run(task)
            assert (stopper.parent / "swapper.pid").exists(), out  # the loop runs during the retries
            prestarts += data["task"]["executionInfo"]["retryCount"] + 1
            if snapshot(victim_dir) != before:
                break
    finally:
        script.unlink()
    assert prestarts >= 5, out
    assert snapshot(victim_dir) == before


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory in /tmp pre-created by another local user (``nobody``), as an attacker would."""
    path = Path(tempfile.mkdtemp(prefix="batch-agent-hostile-", dir="/tmp"))
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_node_root_pre_created_by_another_user_is_refused(agent: Agent, nobody_dir: Path,
                                                         victim_dir: Path) -> None:
    before = snapshot(victim_dir)
    (nobody_dir / "shared").symlink_to(victim_dir)                 # what nobody would plant
    os.lchown(nobody_dir / "shared", pwd.getpwnam("nobody").pw_uid, -1)
    rc, _, out = agent("run", str(write(agent.workdir / "t.json", {"id": "t", "commandLine": "/bin/true"})),
                       root=nobody_dir)
    assert rc in (2, 125), out
    message = [line for line in out.splitlines() if line.startswith("batch-agent:")]
    assert len(message) == 1, out
    assert str(nobody_dir) in message[0] and "nobody" in message[0] and "chown root" in message[0], out
    assert snapshot(victim_dir) == before
    assert not (nobody_dir / "workitems").exists()


def test_node_root_below_a_directory_another_user_owns_is_refused(agent: Agent, nobody_dir: Path) -> None:
    root = nobody_dir / "root"
    rc, _, out = agent("run", str(write(agent.workdir / "t.json", {"id": "t", "commandLine": "/bin/true"})),
                       root=root)
    assert rc in (2, 125) and "chown root" in out and str(nobody_dir) in out, out
    assert not root.exists()


def test_world_writable_node_root_is_refused(agent: Agent, tmp_path: Path) -> None:
    agent.root.chmod(0o777)
    rc, _, out = agent("run", str(write(agent.workdir / "t.json", {"id": "t", "commandLine": "/bin/true"})))
    assert rc in (2, 125) and "chmod go-w" in out and str(agent.root) in out, out


def test_missing_node_root_is_created_for_the_agent(agent: Agent) -> None:
    root = agent.root / "new" / "node"
    rc, _, out = agent("run", str(write(agent.workdir / "t.json", {"id": "t", "commandLine": "/bin/true"})),
                       root=root)
    assert rc == 0, out
    for path in (root.parent, root):
        st = path.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o755)
    assert stat.S_IMODE((root / "shared").stat().st_mode) == 0o1777


def test_shared_as_a_link_inside_a_trusted_root_is_replaced(agent: Agent, victim_dir: Path) -> None:
    before = snapshot(victim_dir)
    (agent.root / "shared").symlink_to(victim_dir)
    rc, _, out = agent.run({"id": "t", "commandLine": "/bin/true"})
    assert rc == 0, out
    assert snapshot(victim_dir) == before
    assert not (agent.root / "shared").is_symlink()
