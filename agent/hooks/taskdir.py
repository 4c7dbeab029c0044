"""The node and task directories (§1): created before anything else, owned by the task user.

Each attempt starts from a clean ``wd`` and fresh ``stdout.txt`` / ``stderr.txt`` (the semantics
doc recommends cleaning on retry; UNCONFIRMED in Batch). Must not: reach anything by a path
under a directory a task can write. The task owns its task dir and can swap any name in it for
a link at any moment (a process left behind by an earlier attempt keeps running), so every step
here works on directory fds through ``agent.nodefs``: the node root is opened after its trust
check (an untrusted root is the agent's configuration problem, a ``ConfigError``), each
directory below is opened ``O_NOFOLLOW`` relative to its parent, and modes and owners are set
on those fds.

Modes (Batch's access rules, semantics doc §3.1: a task user has r/w on its own task dir and
``shared/``, read on ``startup/`` and the job preparation dir, nothing else):
- node root and the dirs above a task dir: 0755, owned by the agent;
- ``shared``: 1777, like /tmp (anyone may create, only owners delete);
- the task dir, ``wd`` and ``certs`` of a start or job preparation task: 0755, so every task
  user can read them and only their own account writes them;
- those of every other task: 0700. Auto-users share the group ``_azbatchgrp``, so a group bit
  would hand one task-scope account's files to every other; the owner bits alone keep a task's
  files (its logs, its resource files, what it writes) to its own account. Pool-scope tasks run
  as the same account and still share.
"""

from __future__ import annotations

import os

from agent.lifecycle import JOB_PREPARATION, TaskContext
from agent.nodefs import empty_dir, ensure_dir, open_trusted, remove_entry
from agent.status import FailureInfo
from agent.users import SHARED_DIR_MODE

NODE_DIR_MODE = 0o755
READABLE_TASK_DIR_MODE = 0o755      # start task, job preparation task: read by every task user
PRIVATE_TASK_DIR_MODE = 0o700
READABLE_KINDS = frozenset({JOB_PREPARATION, "start"})
UPLOAD_LOGS = ("fileuploadout.txt", "fileuploaderr.txt")


def task_dir_mode(kind: str) -> int:
    return READABLE_TASK_DIR_MODE if kind in READABLE_KINDS else PRIVATE_TASK_DIR_MODE


# Node roots already prepared by this process, by (path, device, inode) of the root. The node
# dirs are the agent's (0755, or 1777 for shared/), not writable by a task, so once created and
# checked they stay as they are: later attempts skip re-creating them (17 syscalls a task). The
# root itself is opened and trust-checked every time, and a task dir below is still walked
# through fds every attempt (its last step is the task's and may have been swapped).
_prepared: set[tuple[str, int, int]] = set()


def prepare_node(ctx: TaskContext) -> int:
    """Check the node root, create the node dirs; an fd of the root (the caller closes it)."""
    root = open_trusted(ctx.layout.root, "node root")
    try:
        st = os.fstat(root)
        seen = (str(ctx.layout.root), st.st_dev, st.st_ino)
        if seen in _prepared:
            return root
        os.fchmod(root, NODE_DIR_MODE)
        for path in ctx.layout.node_dirs():
            mode = SHARED_DIR_MODE if path == ctx.layout.shared else NODE_DIR_MODE
            os.close(ensure_dir(root, path.name, mode))
        _prepared.add(seen)
    except BaseException:
        os.close(root)
        raise
    return root


def _open_task_dir(root: int, ctx: TaskContext, mode: int, owner: tuple[int, int] | None) -> int:
    """Walk (and create) the task dir's path below the root; only its last step is the task's."""
    parts = ctx.dirs.relative.split("/")
    fd = root
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            child = ensure_dir(fd, part, mode if last else NODE_DIR_MODE, owner if last else None)
            if fd != root:
                os.close(fd)
            fd = child
    except BaseException:
        if fd != root:
            os.close(fd)
        raise
    return fd


def _owner(ctx: TaskContext) -> tuple[int, int] | None:
    user = ctx.user
    if user.uid is None or os.geteuid() != 0:
        return None
    return user.uid, user.gid if user.gid is not None else -1


class TaskDirHook:
    name = "taskdir"
    handles: frozenset[str] = frozenset()

    async def prestart(self, ctx: TaskContext) -> FailureInfo | None:
        mode, owner = task_dir_mode(ctx.kind), _owner(ctx)
        try:
            root = prepare_node(ctx)
            try:
                task = _open_task_dir(root, ctx, mode, owner)
            finally:
                os.close(root)
            try:
                for name in UPLOAD_LOGS:
                    remove_entry(task, name)
                for name in ("wd", "certs"):
                    sub = ensure_dir(task, name, mode, owner)
                    try:
                        if name == "wd":
                            empty_dir(sub)
                    finally:
                        os.close(sub)
            finally:
                os.close(task)
        except OSError as exc:
            return FailureInfo.server("ResourceDirectoryCreateFailed",
                                      "The task directory could not be created on the node",
                                      Message=f"{exc.strerror or exc}: {exc.filename or ''}")
        return None
