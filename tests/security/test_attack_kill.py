"""Attack: a task gets another task killed by root through the kill sweep's marker.

The wall-clock sweep used to take every process whose environment held the task's
``AZ_BATCH_TASK_DIR``, a variable the task's own ``environmentSettings`` may set. An attacker
sets it to a victim task's directory and lets its own wall clock expire: root kills the victim.
Here both tasks run at once, each under its own ``python -m agent run`` on one node root, with
cgroups (root) and without (``tasks.use_cgroups = false``: the per-attempt token decides). The
attacker also guesses a value for the token variable, tries to read the victim's environment to
copy its token, and leaves a double-forked ``setsid`` escapee behind, which the sweep must still
kill. The victim must survive and end with its own exit code.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.process import TOKEN_VAR

REPO = Path(__file__).resolve().parents[2]

ATTACKER = """#!/bin/sh
# $1: announce FIFO, $2: the victim's pid
(setsid sh -c 'echo escapee $$ > "$1"; exec sleep 1000' sh "$1" &)
if cat "/proc/$2/environ" > /dev/null 2>&1; then echo environ readable > "$1"; else echo environ denied > "$1"; fi
echo attacker $$ > "$1"
exec sleep 1000
"""

VICTIM = """#!/bin/sh
# $1: announce FIFO, $2: the FIFO that lets it finish
echo victim $$ > "$1"
read line < "$2"
exit 7
"""


class Lines:
    """A FIFO task processes write lines to; read with a deadline (never blocks the test for ever)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        path.chmod(0o666)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)   # O_RDWR: no EOF between writers
        self.buffer = b""

    def next(self, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"nothing announced on {self.path} within {timeout} s"
            if select.select([self.fd], [], [], left)[0]:
                self.buffer += os.read(self.fd, 4096)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().split()

    def close(self) -> None:
        os.close(self.fd)



def start(root: Path, config: Path, workdir: Path, task: dict[str, Any]) -> subprocess.Popen[str]:
    path = workdir / f"{task['id']}.json"
    path.write_text(json.dumps(task))
    return subprocess.Popen([sys.executable, "-m", "agent", "run", str(path), "--output", "json",
                             "--root", str(root), "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return proc.returncode, json.loads(out)["task"]


def announced(pid: str) -> tuple[int, float | None]:
    """A process's (pid, creation time); None when it has already gone."""
    try:
        return int(pid), psutil.Process(int(pid)).create_time()
    except psutil.NoSuchProcess:
        return int(pid), None


def alive(pid: int, created: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def identity(scope: str) -> dict[str, Any]:
    return {"autoUser": {"scope": scope, "elevationLevel": "nonadmin"}}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim_scope", ["task", "pool"])
@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "token"])
def test_a_task_cannot_get_another_task_killed(node_root: Path, scratch: Path, tmp_path: Path,
                                               cgroups: bool, victim_scope: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"[tasks]\nkill_grace = 0.2\nuse_cgroups = {'true' if cgroups else 'false'}\n")
    config.chmod(0o600)
    for name, text in (("attacker.sh", ATTACKER), ("victim.sh", VICTIM)):
        (scratch / name).write_text(text)
        (scratch / name).chmod(0o755)
    announce = Lines(scratch / "announce")
    go = scratch / "go"
    os.mkfifo(go)
    go.chmod(0o666)
    victim_dir = node_root / "workitems" / "local" / "job-1" / "victim"
    guess = "0" * 32
    left: list[tuple[int, float | None]] = []
    victim_agent = start(node_root, config, tmp_path, {
        "id": "victim", "commandLine": f"{scratch / 'victim.sh'} {announce.path} {go}",
        "userIdentity": identity(victim_scope)})
    attacker_agent: subprocess.Popen[str] | None = None
    try:
        kind, pid = announce.next()
        assert kind == "victim"
        victim = announced(pid)
        left.append(victim)
        victim_token = psutil.Process(victim[0]).environ().get(TOKEN_VAR)

        attacker_agent = start(node_root, config, tmp_path, {
            "id": "attacker", "commandLine": f"{scratch / 'attacker.sh'} {announce.path} {victim[0]}",
            "userIdentity": identity("pool"),
            "environmentSettings": [{"name": "AZ_BATCH_TASK_DIR", "value": str(victim_dir)},
                                    {"name": TOKEN_VAR, "value": guess}],
            "constraints": {"maxWallClockTime": "PT1S"}})
        seen = dict(announce.next() for _ in range(3))      # escapee, environ, attacker
        escapee = announced(seen["escapee"])
        left.append(escapee)
        rc, attacker = finish(attacker_agent)
        assert rc != 0 and attacker["executionInfo"]["failureInfo"]["code"] == "TaskEnded", attacker
        if victim_scope == "task":      # another uid: the victim's token can't even be read
            assert seen["environ"] == "denied"

        assert not alive(*escapee), "the attacker's escaped descendant survived its wall clock"
        assert alive(*victim), "the attacker's wall clock killed the victim task"
        assert (victim_token is None) == cgroups        # the token only where no cgroup decides
        assert victim_token != guess
        with open(go, "w") as release:
            release.write("go\n")
        rc, result = finish(victim_agent)
        assert rc == 7, result
        assert result["executionInfo"]["exitCode"] == 7
        assert result["executionInfo"]["failureInfo"]["code"] == "FailureExitCode"
    finally:
        for agent in (victim_agent, attacker_agent):
            if agent is not None and agent.poll() is None:
                agent.kill()
                agent.communicate()
        for pid, created in left:
            if alive(pid, created):
                os.kill(pid, 9)
        announce.close()
