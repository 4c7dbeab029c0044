"""agent.layout: the node directory tree of §1 (pure: paths only, nothing created)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.layout import DEFAULT_ROOT, JOB_INSTANCE, NodeLayout, TaskDirs

BATCH = NodeLayout(Path("/mnt/batch/tasks"))


def test_default_root_is_the_tasks_form() -> None:
    assert Path("/mnt/batch/tasks") == DEFAULT_ROOT
    assert JOB_INSTANCE == "job-1"


@pytest.mark.parametrize(("attr", "path"), [
    ("root", "/mnt/batch/tasks"),
    ("shared", "/mnt/batch/tasks/shared"),
    ("startup", "/mnt/batch/tasks/startup"),
    ("startup_wd", "/mnt/batch/tasks/startup/wd"),
    ("applications", "/mnt/batch/tasks/applications"),
    ("fsmounts", "/mnt/batch/tasks/fsmounts"),
    ("volatile", "/mnt/batch/tasks/volatile"),
    ("workitems", "/mnt/batch/tasks/workitems"),
], ids=lambda v: v if "/" not in str(v) else "")
def test_node_paths(attr: str, path: str) -> None:
    assert getattr(BATCH, attr) == Path(path)


def test_node_dirs() -> None:
    assert set(BATCH.node_dirs()) == {Path(f"/mnt/batch/tasks/{d}") for d in
                                      ("shared", "startup", "applications", "fsmounts", "volatile",
                                       "workitems")}


TASKS: list[tuple[str, str, str, str]] = [
    # (id, job id, task id, task dir relative to the root)
    ("task", "myjob", "task1", "workitems/myjob/job-1/task1"),
    ("case-preserved", "MyJob", "Task_A-1", "workitems/MyJob/job-1/Task_A-1"),
    ("prep", "myjob", "jobpreparation", "workitems/myjob/job-1/jobpreparation"),
    ("release", "myjob", "jobrelease", "workitems/myjob/job-1/jobrelease"),
    ("custom-prep-id", "myjob", "myprep", "workitems/myjob/job-1/myprep"),
]


@pytest.mark.parametrize(("job_id", "task_id", "relative"), [t[1:] for t in TASKS], ids=[t[0] for t in TASKS])
def test_task_dirs(job_id: str, task_id: str, relative: str) -> None:
    dirs = BATCH.task(job_id, task_id)
    base = Path("/mnt/batch/tasks") / relative
    assert dirs.task_dir == base and dirs.relative == relative
    assert dirs.wd == base / "wd"
    assert dirs.stdout == base / "stdout.txt" and dirs.stderr == base / "stderr.txt"
    assert dirs.certs == base / "certs"
    assert dirs.upload_out == base / "fileuploadout.txt" and dirs.upload_err == base / "fileuploaderr.txt"
    assert BATCH.job_dir(job_id) == Path("/mnt/batch/tasks/workitems") / job_id / "job-1"
    assert dirs.task_dir.parent == BATCH.job_dir(job_id)


def test_startup_task_dirs() -> None:
    dirs = BATCH.startup_task()
    assert dirs == TaskDirs(Path("/mnt/batch/tasks/startup"), "startup")
    assert dirs.wd == BATCH.startup_wd
    assert dirs.stdout == Path("/mnt/batch/tasks/startup/stdout.txt")
    assert dirs.certs == Path("/mnt/batch/tasks/startup/certs")


@pytest.mark.parametrize("root", ["/tmp/node", "/srv/batch agent/root", "/"], ids=["tmp", "space", "slash"])
def test_relative_task_root_directory_is_root_independent(root: str) -> None:
    layout = NodeLayout(Path(root))
    dirs = layout.task("j", "t")
    assert dirs.relative == "workitems/j/job-1/t"  # nodeInfo.taskRootDirectory: never absolute
    assert not Path(dirs.relative).is_absolute()
    assert layout.root / dirs.relative == dirs.task_dir


def test_layout_creates_nothing(tmp_path: Path) -> None:
    layout = NodeLayout(tmp_path / "root")
    layout.task("j", "t")
    layout.startup_task()
    layout.node_dirs()
    assert list(tmp_path.iterdir()) == []
