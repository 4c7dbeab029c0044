"""A read-only cgroup filesystem (a container's default /sys/fs/cgroup) is no cgroup: the runner
falls back to the token sweep, says so once, and native tasks still run and are still swept.

Each case runs in a private mount namespace (``unshare -m``): a tmpfs laid out as a cgroup v2
root, and as a v1 root with ``freezer``, remounted read-only; the same tmpfs read-write is the
control (found). Needs root (CI runs as root) and util-linux's ``unshare``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CHILD = r'''
import asyncio, os, sys
from pathlib import Path
from agent.cgroups import find_hierarchy
from agent.logs import configure
from agent.process import ProcessRunner
from agent.runner import RunHandle, RunRequest, TaskUser
AGENT_USER = TaskUser(name="agent", uid=None, gid=None)

v2, v1, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
configure(level="info")
print("rw", find_hierarchy(v2) == v2, find_hierarchy(v1) == v1 / "freezer", flush=True)
os.system(f"mount -o remount,ro {v2} && mount -o remount,ro {v1}")
print("ro", find_hierarchy(v2), find_hierarchy(v1), flush=True)
runner = ProcessRunner(cgroup_root=v2)
again = ProcessRunner(cgroup_root=v2)          # the warning is said once per cgroup root
print("hierarchy", runner.hierarchy, again.hierarchy, flush=True)

async def main() -> None:
    (work / "wd").mkdir()
    req = RunRequest(job_id="job", task_id="task", attempt=1, argv=("sh", "-c", "echo $BATCH_AGENT_ATTEMPT_TOKEN"),
                     env={"PATH": "/usr/bin:/bin"}, cwd=work / "wd", stdout=work / "stdout.txt",
                     stderr=work / "stderr.txt", user=AGENT_USER)
    handle = await runner.start(req)
    assert isinstance(handle, RunHandle), handle
    result = await runner.wait(handle)
    await runner.cleanup(handle)
    print("run", result.exit_code, handle.cgroup, bool(handle.marker), flush=True)

asyncio.run(main())
'''


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_read_only_cgroup_fs_falls_back_to_the_token(tmp_path: Path) -> None:
    v2, v1, work = tmp_path / "v2", tmp_path / "v1", tmp_path / "work"
    for d in (v2, v1, work):
        d.mkdir()
    setup = (f"mount -t tmpfs tmpfs {v2} && mount -t tmpfs tmpfs {v1} && touch {v2}/cgroup.controllers && "
             f"mkdir {v1}/freezer && touch {v1}/freezer/cgroup.procs && exec \"$0\" \"$@\"")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", setup, sys.executable, "-c",
                           CHILD, str(v2), str(v1), str(work)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["rw True True", "ro None None", "hierarchy None None"], done.stdout
    assert lines[3].startswith("run 0 None True"), done.stdout
    assert (work / "stdout.txt").read_text().strip(), "the token was given to the task"
    assert done.stderr.count("no writable cgroup hierarchy") == 1, done.stderr
