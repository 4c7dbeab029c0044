"""Smaller leaks: names behind a root-only directory, found by an output ``filePattern``.

The agent (root) used to glob and ``stat`` a task's output patterns itself, then open each match
as the task user. A nonadmin task whose pattern reaches a root-only directory (``../../**/*``,
an absolute path, another task's directory) learned the names inside: they were written to its
``fileuploadout.txt`` (world-readable) and its ``failureInfo``. Here a real task-scope nonadmin
task runs through ``python -m agent run`` against Azurite, with a victim directory (mode 0700,
root's) planted beside it; its file is world-readable, so only the directory protects it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.azurite, pytest.mark.timeout(120)]

VICTIM = "victim-task-5b0e"
SECRET_NAME = "VICTIM-FILE-c41d7a.txt"


def _plant_victim(job_dir: Path, outside: Path) -> list[Path]:
    """Two root-only (0700) directories, each with a world-readable file whose name is the secret."""
    planted = []
    for top in (job_dir / VICTIM, outside):
        (top / "wd").mkdir(parents=True)
        os.chmod(top, 0o700)
        secret = top / "wd" / SECRET_NAME
        secret.write_text("victim data\n")
        os.chmod(secret, 0o644)
        planted.append(secret)
    return planted


@pytest.mark.parametrize("pattern", ["../../**/*", "../../" + VICTIM + "/wd/*", "{outside}/wd/*",
                                     "{outside}/wd/" + SECRET_NAME])
def test_output_pattern_does_not_list_or_upload_a_root_only_directory(agent: Any, azurite: Any,
                                                                       pattern: str) -> None:
    job_dir = agent.task_dir("probe").parent
    outside = agent.root.parent / f"{agent.root.name}-root-only"
    try:
        planted = _plant_victim(job_dir, outside)
        name, sas = azurite.container(permission="rwl")
        task = {"id": "probe", "commandLine": "true",
                "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}},
                "outputFiles": [{"filePattern": pattern.format(outside=outside),
                                 "destination": {"container": {"containerUrl": sas, "path": "got"}},
                                 "uploadOptions": {"uploadCondition": "taskcompletion"}}]}
        rc, data, output = agent.run(task)
        assert data is not None, output
        shown = json.dumps(data) + output
        upload_log = (agent.task_dir("probe") / "fileuploadout.txt").read_text()
        upload_err = (agent.task_dir("probe") / "fileuploaderr.txt").read_text()
        blobs = azurite.list(name)
        assert SECRET_NAME not in upload_log.replace(pattern.format(outside=outside), "")   # only as typed
        assert SECRET_NAME not in upload_err and SECRET_NAME not in shown.replace(
            json.dumps(pattern.format(outside=outside))[1:-1], "")
        assert not any(SECRET_NAME in b for b in blobs), blobs
        assert all(azurite.download(name, b) != b"victim data\n" for b in blobs)
        info = data["task"]["executionInfo"]
        assert rc == 0 and info["exitCode"] == 0 and "failureInfo" not in info, info   # no existence oracle
        assert all(p.read_text() == "victim data\n" for p in planted)
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_output_pattern_still_uploads_what_the_task_user_may_read(agent: Any, azurite: Any) -> None:
    """The same walk as the task user keeps its own files, symlinks among them."""
    name, sas = azurite.container(permission="rwl")
    task = {"id": "mine", "commandLine": "sh -c 'mkdir -p d/e && echo a > d/a.txt && echo b > d/e/b.txt "
                                         "&& ln -s a.txt d/l.txt'",
            "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}},
            "outputFiles": [{"filePattern": "d/**/*.txt", "destination": {"container": {"containerUrl": sas}},
                             "uploadOptions": {"uploadCondition": "tasksuccess"}}]}
    rc, data, output = agent.run(task)
    assert rc == 0 and data is not None and "failureInfo" not in data["task"]["executionInfo"], output
    assert sorted(azurite.list(name)) == ["a.txt", "e/b.txt", "l.txt"]
    assert azurite.download(name, "l.txt") == b"a\n"
