"""The node and task directories (§1): created before anything else, owned by the task user.

Each attempt starts from a clean ``wd`` and fresh ``stdout.txt`` / ``stderr.txt`` (the semantics
doc recommends cleaning on retry; UNCONFIRMED in Batch). The node-wide ``shared`` dir is
writable by every task user (mode 1777, like /tmp: anyone may create, only owners delete).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agent.lifecycle import TaskContext
from agent.status import FailureInfo


def _chown(path: Path, uid: int | None, gid: int | None) -> None:
    if uid is not None and os.geteuid() == 0:
        os.chown(path, uid, gid if gid is not None else -1)


def prepare_node(ctx: TaskContext) -> None:
    layout = ctx.layout
    for path in layout.node_dirs():
        path.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.root, 0o755)
    os.chmod(layout.shared, 0o1777)
    for path in (layout.workitems, layout.workitems / ctx.job_id, layout.job_dir(ctx.job_id)):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o755)


def clean_dir(path: Path) -> None:
    """Empty ``path`` without following symlinks out of it."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


class TaskDirHook:
    name = "taskdir"
    handles: frozenset[str] = frozenset()

    async def prestart(self, ctx: TaskContext) -> FailureInfo | None:
        try:
            prepare_node(ctx)
            dirs = ctx.dirs
            dirs.task_dir.mkdir(parents=True, exist_ok=True)
            for stale in (dirs.upload_out, dirs.upload_err):
                stale.unlink(missing_ok=True)
            for path in (dirs.wd, dirs.certs):
                if path.is_symlink() or path.is_file():
                    path.unlink()
                path.mkdir(exist_ok=True)
            clean_dir(dirs.wd)
            for path in (dirs.task_dir, dirs.wd, dirs.certs):
                os.chmod(path, 0o750 if path != dirs.task_dir else 0o755)
                _chown(path, ctx.user.uid, ctx.user.gid)
        except OSError as exc:
            return FailureInfo.server("ResourceDirectoryCreateFailed",
                                      "The task directory could not be created on the node",
                                      Message=f"{exc.strerror or exc}: {exc.filename or ''}")
        return None
