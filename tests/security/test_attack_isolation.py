"""Attacks: one task user reads or writes another's files (semantics doc §3.1, access rules).

Two task-scope tasks run as two different real accounts (``_azbatchtask_<n>``, both in the
group ``_azbatchgrp``). The second one's command tries to read and to write everything the first
one left: its logs, a file it wrote with its default umask, and a file with the resource files'
default mode (0770). Every try must fail with "Permission denied". Pool-scope tasks share one
account and keep sharing; the job preparation task's working dir stays readable, not writable.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

TASK_SCOPE = {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}}

# Runs as the prying task: one line per try, "ok" or the error; exit 0 either way.
PRY = r"""
for f in "$@"; do
  if out=$(cat "$f" 2>&1); then echo "read $f: ok"; else echo "read $f: $out"; fi
  if out=$( (echo pwned >> "$f") 2>&1); then echo "write $f: ok"; else echo "write $f: $out"; fi
done
"""


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def sh(script: str, *args: str) -> str:
    return " ".join(["/bin/sh", "-c", shlex.quote(script), "pry", *map(shlex.quote, args)])


def whoami(agent: Any, task_id: str, job: str = "local") -> str:
    return (agent.task_dir(task_id, job) / "stdout.txt").read_text().splitlines()[0]


def tries(agent: Any, task_id: str, job: str = "local") -> dict[str, str]:
    lines = (agent.task_dir(task_id, job) / "stdout.txt").read_text().splitlines()[1:]
    return dict(line.split(": ", 1) for line in lines)


LEAVE = ("id -un; echo first-log; echo first-err >&2; echo mine > mine.txt; "
         "echo resource > res.bin; chmod 0770 res.bin")


def test_task_scope_tasks_cannot_read_or_write_each_other(agent: Any) -> None:
    rc, _, out = agent.run({"id": "first", "commandLine": sh(LEAVE), "userIdentity": TASK_SCOPE})
    assert rc == 0, out
    first = agent.task_dir("first")
    targets = [first / "stdout.txt", first / "stderr.txt", first / "wd" / "mine.txt", first / "wd" / "res.bin"]
    new_file = first / "wd" / "planted.txt"
    rc, _, out = agent.run({"id": "second", "commandLine": sh("id -un; " + PRY, *map(str, [*targets, new_file])),
                            "userIdentity": TASK_SCOPE})
    assert rc == 0, out
    assert whoami(agent, "first") != whoami(agent, "second")      # two accounts, one group
    got = tries(agent, "second")
    for target in [*targets, new_file]:
        for op in ("read", "write"):
            assert "Permission denied" in got[f"{op} {target}"], got
    assert (first / "wd" / "mine.txt").read_text() == "mine\n"
    assert (first / "stdout.txt").read_text().endswith("first-log\n")
    assert not new_file.exists()


def test_pool_scope_tasks_share_one_account_and_its_files(agent: Any) -> None:
    rc, _, out = agent.run({"id": "p1", "commandLine": sh(LEAVE)})
    assert rc == 0, out
    mine = agent.task_dir("p1") / "wd" / "mine.txt"
    rc, _, out = agent.run({"id": "p2", "commandLine": sh("id -un; " + PRY, str(mine))})
    assert rc == 0, out
    assert tries(agent, "p2") == {f"read {mine}": "ok", f"write {mine}": "ok"}


def test_job_preparation_dir_is_readable_not_writable_by_another_account(agent: Any, tmp_path: Path) -> None:
    job = write(tmp_path / "job.json", {"id": "prepjob", "poolInfo": {"poolId": "p"},
                                         "jobPreparationTask": {"commandLine": sh("echo prepared > prep.txt")}})
    script = ('id -un; cat "$AZ_BATCH_JOB_PREP_WORKING_DIR/prep.txt"; ' + PRY)
    prep_wd = agent.task_dir("jobpreparation", "prepjob") / "wd"
    rc, _, out = agent.run({"id": "reader", "commandLine": sh(script, str(prep_wd / "prep.txt"),
                                                              str(prep_wd / "new.txt")),
                            "userIdentity": TASK_SCOPE}, "--job", str(job))
    assert rc == 0, out
    lines = (agent.task_dir("reader", "prepjob") / "stdout.txt").read_text().splitlines()
    assert lines[1] == "prepared"
    got = dict(line.split(": ", 1) for line in lines[2:])
    assert got[f"read {prep_wd / 'prep.txt'}"] == "ok"
    assert "Permission denied" in got[f"write {prep_wd / 'prep.txt'}"], got
    assert "Permission denied" in got[f"write {prep_wd / 'new.txt'}"], got
    assert (prep_wd / "prep.txt").read_text() == "prepared\n"
