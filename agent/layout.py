"""The Batch node directory layout (§1 of the semantics doc). Pure: computes paths only.

    <root>/                                 AZ_BATCH_NODE_ROOT_DIR  (Batch: /mnt/batch/tasks)
      applications/ fsmounts/ shared/ volatile/
      startup/{stdout.txt,stderr.txt,wd/}
      workitems/<jobId>/job-1/<taskId>/{stdout.txt,stderr.txt,certs/,wd/,fileupload*.txt}
      workitems/<jobId>/job-1/jobpreparation/ ... jobrelease/ ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/mnt/batch/tasks")
JOB_INSTANCE = "job-1"


@dataclass(frozen=True, slots=True)
class TaskDirs:
    task_dir: Path          # AZ_BATCH_TASK_DIR ("task root directory")
    relative: str           # the task dir relative to the node root (nodeInfo.taskRootDirectory)

    @property
    def wd(self) -> Path:   # AZ_BATCH_TASK_WORKING_DIR
        return self.task_dir / "wd"

    @property
    def stdout(self) -> Path:
        return self.task_dir / "stdout.txt"

    @property
    def stderr(self) -> Path:
        return self.task_dir / "stderr.txt"

    @property
    def certs(self) -> Path:
        return self.task_dir / "certs"

    @property
    def upload_out(self) -> Path:
        return self.task_dir / "fileuploadout.txt"

    @property
    def upload_err(self) -> Path:
        return self.task_dir / "fileuploaderr.txt"


@dataclass(frozen=True, slots=True)
class NodeLayout:
    root: Path

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def startup(self) -> Path:
        return self.root / "startup"

    @property
    def startup_wd(self) -> Path:
        return self.startup / "wd"

    @property
    def applications(self) -> Path:
        return self.root / "applications"

    @property
    def fsmounts(self) -> Path:
        return self.root / "fsmounts"

    @property
    def volatile(self) -> Path:
        return self.root / "volatile"

    @property
    def workitems(self) -> Path:
        return self.root / "workitems"

    def node_dirs(self) -> tuple[Path, ...]:
        """The node-wide directories, created once per node."""
        return (self.shared, self.startup, self.applications, self.fsmounts, self.volatile,
                self.workitems)

    def job_dir(self, job_id: str) -> Path:
        return self.workitems / job_id / JOB_INSTANCE

    def task(self, job_id: str, task_id: str) -> TaskDirs:
        """Dirs of a task (regular, job manager, job prep or release: they differ only by id)."""
        path = self.job_dir(job_id) / task_id
        return TaskDirs(path, path.relative_to(self.root).as_posix())

    def startup_task(self) -> TaskDirs:
        return TaskDirs(self.startup, "startup")
